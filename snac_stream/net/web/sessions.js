// The page's two WebSocket sessions with the server (docs/browser.md):
//   ListenSession  /browser/listen/ROOM: JSON events (text) and PCM (binary: u64 position,
//                  f64 server time, int16 samples), pings for the round-trip time;
//   TalkSession    /browser/talk/ROOM: int16 PCM out, JSON events back; an empty message ends.

import { nowMs } from "./audio.js";

export function socketUrl(path, query) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const q = new URLSearchParams(Object.entries(query).filter(([, v]) => v !== null && v !== undefined && v !== ""));
  const qs = q.toString();
  return `${scheme}//${location.host}${path}${qs ? "?" + qs : ""}`;
}

class Session {
  /** handlers: onEvent(event), onClose(code, reason) */
  constructor(url, handlers) {
    this.handlers = handlers;
    this.closed = false;
    this.ws = new WebSocket(url);
    this.ws.binaryType = "arraybuffer";
    this.ws.onmessage = (e) => {
      if (typeof e.data === "string") this.handlers.onEvent(JSON.parse(e.data));
      else this.onBinary(e.data);
    };
    this.ws.onclose = (e) => {
      this.closed = true;
      this.stopped();
      this.handlers.onClose(e.code, e.reason);
    };
  }

  onBinary() {}

  stopped() {}

  close() {
    if (!this.closed) this.ws.close(1000, "");
  }
}

export class ListenSession extends Session {
  /** extra handler: onPcm(position, Int16Array, serverTimeMs, arrivalMs); `rttMs`, `clockOffsetMs` */
  constructor(url, handlers) {
    super(url, handlers);
    this.rttMs = null;
    this.clockOffsetMs = 0; // server clock - page clock
    this.ws.onopen = () => this.ping();
    this.timer = setInterval(() => this.ping(), 2000);
    const onEvent = handlers.onEvent;
    this.handlers = {
      ...handlers,
      onEvent: (ev) => {
        if (ev.type === "pong") this.pong(ev);
        else onEvent(ev);
      },
    };
  }

  ping() {
    if (this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify({ type: "ping", t: nowMs() }));
  }

  pong(ev) {
    const now = nowMs();
    const rtt = now - ev.t;
    if (this.rttMs === null || rtt < 2 * this.rttMs) {
      this.clockOffsetMs = 1000 * ev.server_time - (ev.t + now) / 2;
    }
    this.rttMs = rtt;
  }

  onBinary(buffer) {
    const view = new DataView(buffer);
    const position = Number(view.getBigUint64(0, true));
    const serverTime = 1000 * view.getFloat64(8, true);
    this.handlers.onPcm(position, new Int16Array(buffer, 16), serverTime, nowMs());
  }

  stopped() {
    clearInterval(this.timer);
  }
}

export class TalkSession extends Session {
  send(pcm) {
    if (this.ws.readyState === WebSocket.OPEN) this.ws.send(pcm);
  }

  /** End the stream: the server flushes the encoder, publishes END, then closes (1000). */
  end() {
    this.send(new ArrayBuffer(0));
  }
}

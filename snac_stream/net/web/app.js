// The snac-stream page: listen to a room (the server decodes it) or talk into it (the server
// encodes the microphone). URL: ?room=NAME&listen=1 | &talk=1 [&token=T] [&wait=1]
// [&prebuffer=MS] [&maxbuffer=MS] [&chunk=MS] [&record=S].
//
// For tests and monitoring: window.snacStats (counters, kept current), window.snacPcm
// (.received() / .sent(): base64 of the int16 LE PCM received / sent, the first `record`
// seconds), window.snacTimeline (arrival and play times, for latency), window.snacApp
// (.listen(), .talk(), .stop()).

import { Capture, Player, nowMs } from "./audio.js";
import { CodesView } from "./codes-view.js";
import { ListenSession, TalkSession, socketUrl } from "./sessions.js";
import { keep, logPush, median, rate, recent, record, stats, timeline } from "./state.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const number = (name, fallback) => {
  const v = Number(params.get(name));
  return params.has(name) && Number.isFinite(v) && v >= 0 ? v : fallback;
};
const opts = {
  room: params.get("room") || "",
  token: params.get("token") || "",
  wait: params.get("wait") === "1",
  prebufferMs: number("prebuffer", 100),
  maxBufferMs: number("maxbuffer", 500),
  chunkMs: number("chunk", 20),
  recordS: number("record", 120),
};
Object.assign(stats, { prebuffer_ms: opts.prebufferMs, maxbuffer_ms: opts.maxBufferMs });
const ROOM = /^[A-Za-z0-9_.-]{1,64}$/;
const SEND_BUFFER_LIMIT = 1 << 18; // bytes the browser may hold unsent before talk drops audio

const CLOSE_HELP = {
  1001: "the server is shutting down",
  1006: "the connection failed or was lost (is the server running, and is this its address?)",
  1009: "a message was too big for the server",
  4002: "a message was too big for the server",
  4008: "the page sent something the server did not expect",
  4011: "wrong or missing token: open the link with &token=… (the server's --token)",
  4012: "someone is already talking in this room",
  4013: "the room is full (too many listeners)",
  4014: "the server is full (too many connections); try again later",
  4015: "the server has too many rooms",
  4016: "this page fell behind and was dropped",
  4017: "nothing was sent for too long",
  4018: "bad request (check the room name)",
  4019: "internal server error",
  4021: "the microphone audio has the wrong sample rate",
  4022: "bad microphone audio",
  4023: "rate limited: more audio than the server allows per second",
  4024: "the server is busy: all model sessions are in use; try again later",
  4025: "unknown room: nobody publishes or listens there (check the name, or add &wait=1 to wait)",
};

// ---------------------------------------------------------------- UI helpers
let model = null;
let view = null;
let listening = null; // {session, player, ...}
let talking = null; // {session, capture, ...}
const codeBytes = []; // [ms, bytes] of the last seconds' CODES packets
const pcmBytes = [];

function setStatus(text, kind = "") {
  $("status").textContent = text;
  $("status").className = kind;
  stats.state = text;
}

function showError(code, reason, message) {
  const help = message || CLOSE_HELP[code] || "the connection was closed";
  const text = `${code ? `Error ${code}: ` : "Error: "}${help}${reason && !message ? ` — server: “${reason}”` : ""}`;
  stats.error = { code: code || null, reason: reason || "", message: text };
  const box = $("error");
  box.textContent = text;
  box.hidden = false;
  setStatus("error", "error");
}

function clearError() {
  stats.error = null;
  $("error").hidden = true;
}

function roomName() {
  const room = $("room").value.trim();
  if (!ROOM.test(room)) {
    showError(null, "", "enter a room name: 1-64 letters, digits, '_', '.' or '-'");
    return null;
  }
  stats.room = room;
  return room;
}

function buttons() {
  const busy = listening !== null || talking !== null;
  $("listen").disabled = listening !== null || !model;
  $("talk").disabled = talking !== null || !model;
  $("stop").disabled = !busy;
}

function ensureView() {
  if (!view) view = new CodesView($("codes"), model);
}

// ---------------------------------------------------------------- listen
async function listen() {
  if (listening || !model) return;
  const room = roomName();
  if (!room) return;
  clearError();
  const L = { gpos: 0, expected: null, gapSamples: 0, lostDone: 0, lostStream: 0, lastCodesServer: null };
  listening = L;
  L.player = new Player(model.sample_rate, opts, (s) => playerStats(L, s), () => (stats.drained = true));
  Object.assign(stats, { listening: true, connected: false, end_reason: null, drained: false });
  ensureView();
  buttons();
  setStatus(`connecting to room ${room}…`);
  const url = socketUrl(`/browser/listen/${encodeURIComponent(room)}`, {
    token: opts.token,
    wait: opts.wait ? 1 : null,
  });
  L.session = new ListenSession(url, {
    onEvent: (ev) => listenEvent(L, ev),
    onPcm: (pos, pcm, serverMs, arrivalMs) => listenPcm(L, pos, pcm, serverMs, arrivalMs),
    onClose: (code, reason) => listenClosed(L, code, reason),
  });
  try {
    await L.player.start();
  } catch (e) {
    showError(null, "", `cannot start audio playback: ${e.message}`);
  }
  if (L.player.suspended) $("notice").hidden = false;
}

function lostFrames(L) {
  return L.lostDone + L.lostStream + Math.ceil(L.gapSamples / model.frame_size);
}

function listenEvent(L, ev) {
  if (listening !== L) return;
  if (ev.type === "info") {
    stats.connected = true;
    if (ev.stream.open) {
      stats.stream_id = ev.stream.stream_id;
      setStatus(`listening to room ${ev.room} (joined mid-stream)`);
    } else {
      setStatus(`listening to room ${ev.room}: waiting for a publisher…`);
    }
  } else if (ev.type === "hello") {
    L.lostDone += L.lostStream;
    L.lostStream = 0;
    L.expected = null;
    Object.assign(stats, { stream_id: ev.stream_id, streams: stats.streams + 1, end_reason: null, drained: false });
    setStatus(`listening to room ${stats.room}: stream ${ev.stream_id}`);
  } else if (ev.type === "codes") {
    view.add(ev.levels, nowMs());
    stats.frames_received += ev.n_frames;
    L.lostStream = ev.frames_lost;
    L.lastCodesServer = 1000 * ev.server_time;
    codeBytes.push([nowMs(), ev.bytes]);
  } else if (ev.type === "end") {
    L.lostStream = ev.frames_lost;
    stats.end_reason = ev.reason;
    stats.frames_lost = lostFrames(L);
    L.player.end();
    const what = `${ev.total_frames} frames, ${stats.frames_lost} lost`;
    if (ev.reason === "complete") setStatus(`stream ended (END received): ${what}`, "ended");
    else if (ev.reason === "publisher_lost") setStatus(`publisher lost: the stream was cut off (${what})`, "warn");
    else setStatus(`the server shut the stream down (${what})`, "warn");
  } else if (ev.type === "error") {
    showError(ev.code, "", `the room's stream: ${ev.message}`);
    if (ev.ended) L.player.end();
  }
}

function listenPcm(L, pos, pcm, serverMs, arrivalMs) {
  if (listening !== L) return;
  if (L.expected !== null && pos > L.expected) L.gapSamples += pos - L.expected;
  L.expected = pos + pcm.length;
  stats.samples_received += pcm.length;
  stats.frames_lost = lostFrames(L);
  record("received", pcm, model.sample_rate, opts.recordS);
  logPush(timeline.arrivals, [L.gpos, pcm.length, pos, arrivalMs, serverMs]);
  pcmBytes.push([arrivalMs, 2 * pcm.length]);
  keep("network", arrivalMs - (serverMs - L.session.clockOffsetMs));
  if (L.lastCodesServer !== null) keep("decode", serverMs - L.lastCodesServer);
  L.lastCodesServer = null;
  const n = pcm.length;
  L.player.push(pcm, L.gpos); // transfers pcm's buffer
  L.gpos += n;
}

function arrivalOf(gpos) {
  const a = timeline.arrivals;
  let lo = 0;
  let hi = a.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    if (a[mid][0] + a[mid][1] <= gpos) lo = mid + 1;
    else if (a[mid][0] > gpos) hi = mid - 1;
    else return a[mid][3];
  }
  return null;
}

function playerStats(L, s) {
  Object.assign(stats, {
    samples_played: s.played,
    samples_skipped: s.skipped,
    samples_buffered: s.buffered,
    underruns: s.underruns,
    buffer_ms: (1000 * s.buffered) / model.sample_rate,
    output_peak: s.peak,
  });
  if (s.gpos >= 0) {
    const heard = L.player.heardAt(s.frame);
    logPush(timeline.plays, [s.gpos, heard]);
    const arrived = arrivalOf(s.gpos);
    if (arrived !== null) keep("bufferToEar", heard - arrived);
  }
}

function listenClosed(L, code, reason) {
  if (listening !== L) return;
  listening = null;
  Object.assign(stats, { connected: talking !== null && stats.connected, listening: false });
  if (code === 1000) setStatus("closed");
  else if (code === 1001 && stats.end_reason) setStatus(`the server shut down (${stats.end_reason})`, "warn");
  else showError(code, reason);
  buttons();
}

// ---------------------------------------------------------------- talk
async function talk() {
  if (talking || !model) return;
  const room = roomName();
  if (!room) return;
  clearError();
  const T = { sentLog: [], stopping: false };
  talking = T;
  T.capture = new Capture(model.sample_rate, opts.chunkMs, (pcm) => talkPcm(T, pcm), (p) => (stats.input_peak = p));
  Object.assign(stats, { talking: true, samples_sent: 0, frames_sent: 0 });
  ensureView();
  buttons();
  setStatus(`connecting to room ${room}…`);
  const url = socketUrl(`/browser/talk/${encodeURIComponent(room)}`, {
    token: opts.token,
    format: "s16le",
    rate: model.sample_rate,
  });
  T.session = new TalkSession(url, {
    onEvent: (ev) => talkEvent(T, ev),
    onClose: (code, reason) => talkClosed(T, code, reason),
  });
}

async function talkEvent(T, ev) {
  if (ev.type === "info") {
    stats.connected = true;
    try {
      await T.capture.start();
      if (T.capture.suspended) $("notice").hidden = false;
      setStatus(`talking into room ${ev.room} (microphone at ${T.capture.deviceRate} Hz -> ${model.sample_rate} Hz)`);
    } catch (e) {
      showError(null, "", `cannot use the microphone: ${e.message}`);
      T.session.close();
    }
  } else if (ev.type === "hello") {
    stats.stream_id = ev.stream_id;
  } else if (ev.type === "codes") {
    view.add(ev.levels, nowMs());
    stats.frames_sent += ev.n_frames;
    codeBytes.push([nowMs(), ev.bytes]);
    const last = (ev.first_frame + ev.n_frames) * model.frame_size; // samples the codes cover
    const sent = T.sentLog.find(([end]) => end >= last);
    if (sent) keep("codeDelay", nowMs() - sent[1]);
    while (T.sentLog.length && T.sentLog[0][0] < last) T.sentLog.shift();
  } else if (ev.type === "end") {
    setStatus(`sent ${ev.total_frames} frames (${(ev.total_samples / model.sample_rate).toFixed(2)} s) to room ${stats.room}`);
  }
}

function talkPcm(T, pcm) {
  if (talking !== T || T.session.closed) return;
  if (T.session.ws.bufferedAmount > SEND_BUFFER_LIMIT) {
    stats.samples_send_dropped += pcm.length; // the network cannot keep up: live audio drops
    return;
  }
  record("sent", pcm, model.sample_rate, opts.recordS);
  T.session.send(pcm);
  stats.samples_sent += pcm.length;
  T.sentLog.push([stats.samples_sent, nowMs()]);
}

async function stopTalk() {
  const T = talking;
  if (!T || T.stopping) return;
  T.stopping = true;
  await T.capture.stop(); // delivers the last samples first
  if (!T.session.closed) T.session.end();
}

function talkClosed(T, code, reason) {
  if (talking !== T) return;
  talking = null;
  if (!T.stopping) T.capture.stop();
  Object.assign(stats, { talking: false, connected: listening !== null && stats.connected });
  if (code !== 1000) showError(code, reason);
  buttons();
}

// ---------------------------------------------------------------- page
async function stop() {
  const L = listening;
  if (L) {
    L.session.close();
    L.player.close();
  }
  await stopTalk();
}

function refresh() {
  const m = model;
  const fmt = (n) => n.toLocaleString("en-US");
  $("s-connected").textContent = stats.connected ? "yes" : "no";
  $("s-received").textContent = fmt(stats.samples_received);
  $("s-played").textContent = fmt(stats.samples_played);
  $("s-sent").textContent = `${fmt(stats.samples_sent)} samples, ${fmt(stats.frames_sent)} frames`;
  $("s-frames-lost").textContent = fmt(stats.frames_lost);
  $("s-underruns").textContent = fmt(stats.underruns);
  $("s-skipped").textContent = fmt(stats.samples_skipped);
  $("s-buffer").textContent = `${stats.buffer_ms.toFixed(0)} ms (pre-buffer ${opts.prebufferMs} ms, max ${opts.maxBufferMs} ms)`;
  stats.codes_bps = rate(codeBytes);
  stats.pcm_bps = rate(pcmBytes);
  if (m) {
    $("s-bitrate").textContent =
      `codes ${(stats.codes_bps / 1000).toFixed(2)} kbit/s in packets (nominal ${(m.bitrate_bps / 1000).toFixed(2)}), ` +
      `PCM to this page ${(stats.pcm_bps / 1000).toFixed(0)} kbit/s`;
  }
  const L = listening;
  const lat = {
    rtt_ms: L ? L.session.rttMs : null,
    server_decode_ms: median(recent.decode),
    server_to_page_ms: median(recent.network),
    buffer_to_ear_ms: median(recent.bufferToEar),
    output_ms: L ? L.player.outputLatencyMs : null,
    code_delay_ms: median(recent.codeDelay),
    decoder_lookahead_ms: m ? m.decoder_latency_ms : null,
    encoder_lookahead_ms: m ? m.encoder_latency_ms : null,
  };
  stats.latency = lat;
  const ms = (v) => (v === null || v === undefined ? "–" : `${v.toFixed(0)} ms`);
  const parts = [];
  if (lat.buffer_to_ear_ms !== null) {
    parts.push(
      `codes at server → heard ${ms((lat.server_decode_ms || 0) + (lat.server_to_page_ms || 0) + lat.buffer_to_ear_ms)}` +
        ` = decode ${ms(lat.server_decode_ms)} + network ${ms(lat.server_to_page_ms)} + buffer & output ${ms(lat.buffer_to_ear_ms)}`,
    );
  }
  if (lat.rtt_ms !== null) parts.push(`round trip ${ms(lat.rtt_ms)}`);
  if (lat.code_delay_ms !== null) parts.push(`microphone → codes back ${ms(lat.code_delay_ms)}`);
  if (m) parts.push(`algorithmic: encoder ${ms(m.encoder_latency_ms)}, decoder ${ms(m.decoder_latency_ms)}`);
  $("s-latency").textContent = parts.join(" · ");
  const db = (p) => (p > 0 ? `${(20 * Math.log10(p)).toFixed(0)} dBFS` : "–");
  $("input-level").value = stats.input_peak;
  $("input-db").textContent = db(stats.input_peak);
  $("output-level").value = stats.output_peak;
  $("output-db").textContent = db(stats.output_peak);
  $("buffer-level").value = Math.min(1, stats.buffer_ms / opts.maxBufferMs);
  $("buffer-ms").textContent = `${stats.buffer_ms.toFixed(0)} ms`;
}

function frame() {
  if (view) view.render(nowMs());
  requestAnimationFrame(frame);
}

async function init() {
  $("room").value = opts.room;
  $("listen").onclick = () => listen();
  $("talk").onclick = () => talk();
  $("stop").onclick = () => stop();
  $("resume").onclick = async () => {
    if (listening) await listening.player.resume();
    if (talking) await talking.capture.resume();
    $("notice").hidden = true;
  };
  window.snacApp = { listen, talk, stop, stopTalk };
  setInterval(refresh, 200);
  requestAnimationFrame(frame);
  let info;
  try {
    const r = await fetch(`/browser/info${opts.token ? `?token=${encodeURIComponent(opts.token)}` : ""}`);
    info = await r.json();
  } catch (e) {
    showError(null, "", `cannot reach the server: ${e.message}`);
    return;
  }
  model = info.model;
  const rooms = info.rooms ? Object.keys(info.rooms) : [];
  $("rooms").replaceChildren(...rooms.map((name) => Object.assign(document.createElement("option"), { value: name })));
  if (!model) {
    showError(null, "", "this server runs no model: start it with snac-stream serve --model MODEL to listen or talk here");
    buttons();
    return;
  }
  $("model-line").textContent =
    `model: ${model.sample_rate} Hz, ${model.vq_strides.length} levels at ` +
    `${model.frame_rates_hz.map((r) => r.toFixed(1)).join(" / ")} Hz, ${(model.bitrate_bps / 1000).toFixed(2)} kbit/s`;
  buttons();
  setStatus("ready");
  if (info.token_required && !info.authorized) showError(4011, "");
  if (params.get("listen") === "1") listen();
  if (params.get("talk") === "1") talk();
}

window.addEventListener("error", (e) => showError(null, "", `page error: ${e.message}`));
window.addEventListener("unhandledrejection", (e) => showError(null, "", `page error: ${e.reason}`));
init();

// Main-thread side of the audio: Player (jitter-buffered playback at the model's rate) and
// Capture (microphone -> int16 at the model's rate), each an AudioContext plus a worklet.

/** Wall-clock time in ms (Unix epoch, sub-ms resolution), comparable with the server's. */
export function nowMs() {
  return performance.timeOrigin + performance.now();
}

export class Player {
  /** onStats(stats): the worklet's counters, about 20 times a second; onDrained(): "end" played out. */
  constructor(sampleRate, { prebufferMs = 100, maxBufferMs = 500 } = {}, onStats = () => {}, onDrained = () => {}) {
    this.sampleRate = sampleRate;
    this.options = { prebufferMs, maxBufferMs };
    this.onStats = onStats;
    this.onDrained = onDrained;
    // Created in the user's click where there is one (an AudioContext may only start after a gesture).
    this.ctx = new AudioContext({ sampleRate, latencyHint: "interactive" });
    this.node = null;
    this.pending = [];
  }

  async start() {
    await this.ctx.audioWorklet.addModule("/web/player-worklet.js");
    this.node = new AudioWorkletNode(this.ctx, "snac-player", {
      numberOfInputs: 0,
      outputChannelCount: [1],
      processorOptions: this.options,
    });
    this.node.port.onmessage = (e) => {
      if (e.data.type === "stats") this.onStats(e.data);
      else if (e.data.type === "drained") this.onDrained();
    };
    this.node.connect(this.ctx.destination);
    for (const msg of this.pending) this.node.port.postMessage(msg, msg.pcm ? [msg.pcm.buffer] : []);
    this.pending = [];
    if (this.ctx.state !== "running") this.ctx.resume().catch(() => {});
  }

  get suspended() {
    return this.ctx.state !== "running";
  }

  resume() {
    return this.ctx.resume();
  }

  post(msg) {
    if (this.node) this.node.port.postMessage(msg, msg.pcm ? [msg.pcm.buffer] : []);
    else this.pending.push(msg);
  }

  /** Queue int16 samples (the array is transferred); gpos: their index among all received. */
  push(pcm, gpos) {
    this.post({ type: "pcm", pcm, gpos });
  }

  /** The stream ended: play out what is buffered. */
  end() {
    this.post({ type: "end" });
  }

  /** When the sample rendered at context frame `frame` is heard (epoch ms), output latency included. */
  heardAt(frame) {
    const ts = this.ctx.getOutputTimestamp();
    if (!ts || !ts.performanceTime) return nowMs() + 1000 * (this.ctx.outputLatency || this.ctx.baseLatency || 0);
    return performance.timeOrigin + ts.performanceTime + 1000 * (frame / this.sampleRate - ts.contextTime);
  }

  get outputLatencyMs() {
    return 1000 * ((this.ctx.outputLatency || 0) + (this.ctx.baseLatency || 0));
  }

  close() {
    this.ctx.close().catch(() => {});
  }
}

export class Capture {
  /** onPcm(Int16Array) at `targetRate`, every `chunkMs`; onLevel(peak). */
  constructor(targetRate, chunkMs, onPcm, onLevel = () => {}) {
    this.targetRate = targetRate;
    this.chunkMs = chunkMs;
    this.onPcm = onPcm;
    this.onLevel = onLevel;
    // the device's rate; created in the user's click where there is one (see Player)
    this.ctx = new AudioContext({ latencyHint: "interactive" });
    this.stream = null;
    this.node = null;
    this.stopped = null;
  }

  async start() {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      throw new Error("this page has no microphone access (it needs https:// or http://localhost)");
    }
    this.stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
    });
    await this.ctx.audioWorklet.addModule("/web/capture-worklet.js");
    const source = this.ctx.createMediaStreamSource(this.stream);
    this.node = new AudioWorkletNode(this.ctx, "snac-capture", {
      processorOptions: { targetRate: this.targetRate, chunkMs: this.chunkMs },
    });
    this.stopped = new Promise((resolve) => {
      this.node.port.onmessage = (e) => {
        const m = e.data;
        if (m.type === "pcm") this.onPcm(m.pcm);
        else if (m.type === "level") this.onLevel(m.peak);
        else if (m.type === "stopped") resolve();
      };
    });
    source.connect(this.node);
    if (this.ctx.state !== "running") this.ctx.resume().catch(() => {}); // may wait for a click
  }

  get suspended() {
    return this.ctx.state !== "running";
  }

  resume() {
    return this.ctx.resume();
  }

  get deviceRate() {
    return this.ctx.sampleRate;
  }

  /** Stop: the last samples (resampler tail) are delivered before this resolves. */
  async stop() {
    if (this.node) {
      this.node.port.postMessage("stop");
      await Promise.race([this.stopped, new Promise((r) => setTimeout(r, 1000))]);
    }
    if (this.stream) for (const track of this.stream.getTracks()) track.stop();
    this.ctx.close().catch(() => {});
  }
}

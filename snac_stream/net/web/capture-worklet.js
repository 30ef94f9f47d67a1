// AudioWorklet processor "snac-capture": microphone -> mono -> the model's rate -> int16 chunks.
//
// processorOptions: {targetRate, chunkMs}. Posts {type: "pcm", pcm: Int16Array} every
// chunkMs of audio at targetRate, {type: "level", peak} about 20 times a second, and after
// "stop" the resampler's tail and the last partial chunk, then {type: "stopped"}.

import { Resampler, toInt16 } from "./resampler.js";

class SnacCapture extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const o = options.processorOptions || {};
    this.resampler = new Resampler(sampleRate, o.targetRate);
    this.chunk = Math.max(1, Math.round((o.targetRate * (o.chunkMs ?? 20)) / 1000));
    this.buf = new Float32Array(this.chunk);
    this.fill = 0;
    this.peak = 0;
    this.lastLevel = -1;
    this.running = true;
    this.port.onmessage = (e) => {
      if (e.data === "stop" && this.running) {
        this.running = false;
        this.emit(this.resampler.flush());
        if (this.fill) this.post(this.buf.subarray(0, this.fill));
        this.port.postMessage({ type: "stopped" });
      }
    };
  }

  post(samples) {
    const pcm = toInt16(samples);
    this.port.postMessage({ type: "pcm", pcm }, [pcm.buffer]);
  }

  emit(y) {
    let i = 0;
    while (i < y.length) {
      const k = Math.min(this.chunk - this.fill, y.length - i);
      this.buf.set(y.subarray(i, i + k), this.fill);
      this.fill += k;
      i += k;
      if (this.fill === this.chunk) {
        this.post(this.buf);
        this.fill = 0;
      }
    }
  }

  process(inputs) {
    if (!this.running) return false;
    const input = inputs[0];
    if (!input || input.length === 0) return true;
    const n = input[0].length;
    const mono = new Float32Array(n);
    for (const ch of input) for (let i = 0; i < n; i++) mono[i] += ch[i] / input.length;
    for (let i = 0; i < n; i++) this.peak = Math.max(this.peak, Math.abs(mono[i]));
    this.emit(this.resampler.process(mono));
    if (currentTime - this.lastLevel >= 0.05) {
      this.lastLevel = currentTime;
      this.port.postMessage({ type: "level", peak: this.peak });
      this.peak = 0;
    }
    return true;
  }
}

registerProcessor("snac-capture", SnacCapture);

// Streaming band-limited resampler (Hann-windowed sinc, table lookup), mono float32.
//
// Output sample m is the input signal evaluated at t = m * inRate / outRate (in input
// samples; samples before the first are zeros), low-passed at rolloff * min(inRate, outRate) / 2.
// It needs halfWidth / cutoff input samples of lookahead; flush() pads the end with zeros
// and stops at ceil(samplesIn * outRate / inRate) outputs, as an offline resampler would.

export class Resampler {
  constructor(inRate, outRate, { halfWidth = 16, rolloff = 0.945, phases = 256 } = {}) {
    this.inRate = inRate;
    this.outRate = outRate;
    this.identity = inRate === outRate;
    this.step = inRate / outRate; // input samples per output sample
    const cutoff = Math.min(1, outRate / inRate) * rolloff; // of the input Nyquist
    this.width = halfWidth / cutoff; // kernel half-width in input samples
    this.phases = phases;
    const n = Math.ceil(this.width * phases);
    this.offset = n;
    this.table = new Float64Array(2 * n + 2);
    for (let j = -n; j <= n + 1; j++) {
      const t = j / phases;
      const x = cutoff * t;
      const sinc = x === 0 ? 1 : Math.sin(Math.PI * x) / (Math.PI * x);
      const w = Math.abs(t) >= this.width ? 0 : Math.cos((Math.PI * t) / (2 * this.width)) ** 2;
      this.table[j + n] = cutoff * sinc * w;
    }
    this.hist = new Float32Array(4096); // input samples [base, base + len)
    this.base = 0;
    this.len = 0;
    this.m = 0; // next output index
    this.samplesIn = 0;
    this.limit = Infinity; // outputs allowed (set by flush)
  }

  kernel(t) {
    const u = t * this.phases + this.offset;
    const i = Math.floor(u);
    const f = u - i;
    return this.table[i] + f * (this.table[i + 1] - this.table[i]);
  }

  append(x) {
    if (this.len + x.length > this.hist.length) {
      const grown = new Float32Array(Math.max(2 * this.hist.length, this.len + x.length));
      grown.set(this.hist.subarray(0, this.len));
      this.hist = grown;
    }
    this.hist.set(x, this.len);
    this.len += x.length;
  }

  /** Resample the next chunk of input; returns the output samples that became final. */
  process(x) {
    this.samplesIn += x.length;
    if (this.identity) return Float32Array.from(x);
    this.append(x);
    const end = this.base + this.len; // first input index not available
    const room = Math.max(0, Math.ceil((end - this.width) / this.step) - this.m + 2);
    const out = new Float32Array(Math.min(room, this.limit - this.m));
    let k = 0;
    while (k < out.length) {
      const t = this.m * this.step;
      const hi = Math.floor(t + this.width);
      if (hi >= end) break;
      const lo = Math.max(0, Math.ceil(t - this.width));
      let acc = 0;
      for (let i = lo; i <= hi; i++) acc += this.hist[i - this.base] * this.kernel(t - i);
      out[k++] = acc;
      this.m++;
    }
    // forget input no later output can reach
    const keep = Math.max(0, Math.ceil(this.m * this.step - this.width)) - this.base;
    if (keep > 0) {
      this.hist.copyWithin(0, keep, this.len);
      this.len -= keep;
      this.base += keep;
    }
    return out.subarray(0, k);
  }

  /** The end of the input: the remaining outputs (zeros after the last input sample). */
  flush() {
    if (this.identity) return new Float32Array(0);
    const total = this.samplesIn;
    this.limit = Math.ceil((total * this.outRate) / this.inRate);
    const parts = [];
    let n = 0;
    const pad = new Float32Array(Math.ceil(this.width) + 2);
    while (this.m < this.limit) {
      const y = this.process(pad);
      parts.push(y);
      n += y.length;
    }
    this.samplesIn = total;
    const out = new Float32Array(n);
    let k = 0;
    for (const y of parts) {
      out.set(y, k);
      k += y.length;
    }
    return out;
  }
}

/** float32 in [-1, 1) -> int16 (x 32768, rounded, clipped), as the server's s16le reads it. */
export function toInt16(x, out = new Int16Array(x.length)) {
  for (let i = 0; i < x.length; i++) {
    const v = Math.round(Math.max(-1, Math.min(32767 / 32768, x[i])) * 32768);
    out[i] = v;
  }
  return out;
}

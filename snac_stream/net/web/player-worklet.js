// AudioWorklet processor "snac-player": plays int16 PCM through a jitter buffer.
//
// The context runs at the model's rate, so samples are played as they came.
// - starts (and restarts after an underrun) once `prebufferMs` of audio is buffered;
// - an underrun (the buffer runs dry while playing) fades the last samples out, counts it,
//   and waits for the pre-buffer again; playback resumes with a fade-in;
// - more than `maxBufferMs` buffered (far behind): the oldest audio is dropped down to the
//   pre-buffer, with a short crossfade, and counted (`skipped`); a surplus that a burst left
//   (the buffer stayed above pre-buffer + slack for CATCHUP_S) is dropped the same way, so the
//   latency returns to the pre-buffer;
// - "end" plays out what is left, even below the pre-buffer, then reports "drained".
// Every sample received is played or skipped: played + skipped + buffered == received.
// Messages in: {type: "pcm", pcm: Int16Array, gpos}, {type: "end"}. Out: {type: "stats", ...}.

const FADE_MS = 4;
const CATCHUP_S = 1; // how long the buffer must stay above pre-buffer + slack before catching up
const STATS_EVERY_S = 0.05;

class SnacPlayer extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const o = options.processorOptions || {};
    this.prebuffer = Math.max(1, Math.round((sampleRate * (o.prebufferMs ?? 100)) / 1000));
    const maxBuffer = Math.round((sampleRate * (o.maxBufferMs ?? 500)) / 1000);
    this.maxBuffer = Math.max(2 * this.prebuffer, maxBuffer);
    this.fade = Math.max(1, Math.round((sampleRate * FADE_MS) / 1000));
    this.cap = this.maxBuffer + sampleRate; // beyond maxBuffer the next block drops anyway
    this.ring = new Float32Array(this.cap);
    this.read = 0;
    this.size = 0;
    this.segments = []; // [gpos, n] of the buffered samples, oldest first
    this.playing = false;
    this.ending = false;
    this.fadeIn = 0; // samples of fade-in done (this.fade: none pending)
    this.slack = Math.max(2 * this.fade, Math.round(this.prebuffer / 2)); // tolerated above the pre-buffer
    this.window = 0; // samples played since the last catch-up check
    this.lowWater = Infinity; // the least buffered in that time
    this.received = 0;
    this.played = 0;
    this.skipped = 0;
    this.underruns = 0;
    this.peak = 0;
    this.lastStats = -1;
    this.port.onmessage = (e) => this.onMessage(e.data);
  }

  onMessage(msg) {
    if (msg.type === "pcm") {
      const pcm = msg.pcm;
      const over = this.size + pcm.length - this.cap;
      if (over > 0) this.drop(over);
      let w = (this.read + this.size) % this.cap;
      for (let i = 0; i < pcm.length; i++) {
        this.ring[w] = pcm[i] / 32768;
        w = w + 1 === this.cap ? 0 : w + 1;
      }
      this.size += pcm.length;
      this.received += pcm.length;
      this.segments.push([msg.gpos, pcm.length]);
      this.ending = false;
    } else if (msg.type === "end") {
      this.ending = true;
    }
  }

  consume(n) {
    this.read = (this.read + n) % this.cap;
    this.size -= n;
    while (n > 0 && this.segments.length) {
      const seg = this.segments[0];
      const k = Math.min(n, seg[1]);
      seg[0] += k;
      seg[1] -= k;
      n -= k;
      if (seg[1] === 0) this.segments.shift();
    }
  }

  drop(n) {
    this.consume(n);
    this.skipped += n;
  }

  /** Drop `drop` samples, crossfading from the oldest into what follows them; samples written. */
  skip(ch, n, drop) {
    const cross = Math.min(this.fade, n, this.size - drop);
    for (let i = 0; i < cross; i++) {
      const w = (i + 1) / (cross + 1);
      ch[i] = this.at(i) * (1 - w) + this.at(drop + i) * w;
    }
    this.drop(drop);
    this.consume(cross);
    this.played += cross;
    return cross;
  }

  at(k) {
    return this.ring[(this.read + k) % this.cap];
  }

  process(inputs, outputs) {
    const out = outputs[0];
    const ch = out[0];
    const n = ch.length;
    let k = 0;
    let gpos = -1; // the first sample this block plays from the buffer, and its frame
    let frame = currentFrame;
    if (this.ending && !this.playing && this.size === 0) {
      this.ending = false;
      this.port.postMessage({ type: "drained" });
    }
    if (!this.playing && (this.size >= this.prebuffer || (this.ending && this.size > 0))) {
      this.playing = true;
      this.fadeIn = 0;
      this.window = 0;
      this.lowWater = Infinity;
    }
    if (this.playing) {
      this.lowWater = Math.min(this.lowWater, this.size);
      this.window += n;
      if (this.size > this.maxBuffer) {
        k = this.skip(ch, n, this.size - this.prebuffer); // far behind
      } else if (this.window >= sampleRate * CATCHUP_S) {
        // the buffer never went below lowWater for a while: that much more than the
        // pre-buffer is latency a burst left behind, not protection against jitter
        if (this.lowWater > this.prebuffer + this.slack) k = this.skip(ch, n, this.lowWater - this.prebuffer);
        this.window = 0;
        this.lowWater = Infinity;
      }
    }
    if (this.playing) {
      const take = Math.min(n - k, this.size);
      if (take > 0) {
        gpos = this.segments[0][0];
        frame = currentFrame + k;
      }
      for (let i = 0; i < take; i++) ch[k + i] = this.at(i);
      if (this.fadeIn < this.fade) {
        for (let i = k; i < k + take && this.fadeIn < this.fade; i++) ch[i] *= ++this.fadeIn / this.fade;
      }
      this.consume(take);
      this.played += take;
      k += take;
      if (k < n) {
        // ran dry: fade out what this block has, then silence
        const f = Math.min(k, this.fade);
        for (let i = 0; i < f; i++) ch[k - f + i] *= 1 - (i + 1) / f;
        this.playing = false;
        if (this.ending) {
          this.ending = false;
          this.port.postMessage({ type: "drained" });
        } else {
          this.underruns++;
        }
      }
    }
    ch.fill(0, k);
    let peak = 0;
    for (let i = 0; i < n; i++) peak = Math.max(peak, Math.abs(ch[i]));
    this.peak = Math.max(peak, this.peak);
    for (let c = 1; c < out.length; c++) out[c].set(ch);
    if (currentTime - this.lastStats >= STATS_EVERY_S) {
      this.lastStats = currentTime;
      this.port.postMessage({
        type: "stats",
        received: this.received,
        played: this.played,
        skipped: this.skipped,
        underruns: this.underruns,
        buffered: this.size,
        playing: this.playing,
        peak: this.peak,
        gpos,
        frame,
      });
      this.peak = 0;
    }
    return true;
  }
}

registerProcessor("snac-player", SnacPlayer);

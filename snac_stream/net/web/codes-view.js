// Live view of the multi-scale codes, as `snac-stream mic` shows them: one row per level,
// a time-aligned grid (a level-i code spans stride_i finest ticks), each code appearing at
// its own tick (the codes of a coarse frame arrive together and are revealed tick by tick
// over the frame's duration, so level i updates at its own rate).

const TICKS = 24; // finest ticks shown

export class CodesView {
  constructor(container, model) {
    this.container = container;
    container.replaceChildren();
    const finest = Math.min(...model.vq_strides);
    this.spans = model.vq_strides.map((s) => s / finest);
    this.perLevel = model.codes_per_level;
    this.ticksPerFrame = model.vq_strides[0] / finest;
    this.tickMs = (1000 * model.frame_size) / model.sample_rate / this.ticksPerFrame;
    this.codebook = model.codebook_size;
    this.digits = Math.max(1, Math.ceil(Math.log2(model.codebook_size) / 4));
    this.pending = []; // [revealAt, level, code], in order
    this.rows = this.spans.map((span, i) => {
      const row = document.createElement("div");
      row.className = "level";
      const label = document.createElement("span");
      label.className = "label";
      label.textContent = `level ${i} · ${model.frame_rates_hz[i].toFixed(1)} Hz`;
      const cells = document.createElement("span");
      cells.className = "cells";
      row.append(label, cells);
      container.append(row);
      return { cells, span, max: Math.max(1, Math.floor(TICKS / span)) };
    });
  }

  /** The codes of `levels` (per level, frame-major within the packet) arrived at `atMs`. */
  add(levels, atMs) {
    const frames = levels[0].length / this.perLevel[0];
    const last = this.pending.length ? this.pending[this.pending.length - 1][0] : -Infinity;
    let start = Math.max(atMs, last);
    if (start - atMs > 1000) start = atMs; // far behind (a burst): show at once
    for (let f = 0; f < frames; f++) {
      for (let tick = 0; tick < this.ticksPerFrame; tick++) {
        levels.forEach((codes, i) => {
          if (tick % this.spans[i] === 0) {
            const j = f * this.perLevel[i] + tick / this.spans[i];
            this.pending.push([start + (f * this.ticksPerFrame + tick) * this.tickMs, i, codes[j]]);
          }
        });
      }
    }
  }

  /** Reveal the codes that are due (call from requestAnimationFrame). */
  render(nowMs) {
    let k = 0;
    while (k < this.pending.length && this.pending[k][0] <= nowMs) {
      const [, level, code] = this.pending[k++];
      const row = this.rows[level];
      const cell = document.createElement("span");
      cell.className = "code";
      cell.style.width = `${row.span * 2.4}em`;
      cell.style.background = `hsl(${Math.round((360 * code) / this.codebook)}, 55%, 32%)`;
      cell.textContent = code.toString(16).padStart(this.digits, "0");
      row.cells.append(cell);
      while (row.cells.childElementCount > row.max) row.cells.firstElementChild.remove();
    }
    if (k) this.pending.splice(0, k);
  }
}

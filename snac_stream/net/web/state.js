// What the page exposes for tests and monitoring (window.snacStats, window.snacPcm,
// window.snacTimeline) and the running figures it shows.

import { nowMs } from "./audio.js";

const LOG_LIMIT = 20000;

export const stats = {
  connected: false,
  listening: false,
  talking: false,
  room: null,
  state: "loading",
  error: null,
  stream_id: null,
  streams: 0,
  end_reason: null,
  drained: false,
  samples_received: 0,
  samples_played: 0,
  samples_skipped: 0,
  samples_buffered: 0,
  frames_received: 0,
  frames_lost: 0,
  underruns: 0,
  samples_sent: 0,
  samples_send_dropped: 0,
  frames_sent: 0,
  buffer_ms: 0,
  prebuffer_ms: null,
  maxbuffer_ms: null,
  codes_bps: 0,
  pcm_bps: 0,
  input_peak: 0,
  output_peak: 0,
  latency: {},
};
window.snacStats = stats;

const recorded = { received: [], sent: [], receivedN: 0, sentN: 0 };
/** Keep a copy of `pcm` (int16) for window.snacPcm, the first `recordS` seconds of each kind. */
export function record(kind, pcm, rate, recordS) {
  if (recorded[kind + "N"] + pcm.length > recordS * rate) return;
  recorded[kind].push(pcm.slice());
  recorded[kind + "N"] += pcm.length;
}
function base64(chunks) {
  const n = chunks.reduce((a, c) => a + c.length, 0);
  const all = new Int16Array(n);
  let k = 0;
  for (const c of chunks) {
    all.set(c, k);
    k += c.length;
  }
  const bytes = new Uint8Array(all.buffer);
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  return btoa(s);
}
window.snacPcm = { received: () => base64(recorded.received), sent: () => base64(recorded.sent) };
export const timeline = { arrivals: [], plays: [] }; // [gpos, n, position, arrival ms, server ms], [gpos, heard ms]
window.snacTimeline = timeline;
export const logPush = (list, item) => {
  list.push(item);
  if (list.length > LOG_LIMIT) list.splice(0, list.length - LOG_LIMIT);
};

/** bit/s of the [ms, bytes] entries of the last `windowMs` (older ones are forgotten). */
export function rate(log, windowMs = 2000) {
  const now = nowMs();
  while (log.length && log[0][0] < now - windowMs) log.shift();
  return (8 * log.reduce((a, x) => a + x[1], 0)) / (windowMs / 1000);
}

export const median = (xs) => {
  if (!xs.length) return null;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
};
export const recent = { bufferToEar: [], network: [], decode: [], codeDelay: [] };
export const keep = (name, v) => {
  recent[name].push(v);
  if (recent[name].length > 50) recent[name].shift();
};

"""How a decoder conceals lost coarse frames (the network receiver, the Orpheus drop-in's lenient mode).

A stream with a gap is decoded as separate segments::

    frames 0..a-1 ──► decode, flush (exact: the offline decode of those frames) ─┐
    frames a..b-1 lost ──► silence, (b - a) * frame_samples samples              ├─► one timeline
    frames b..    ──► a fresh decoder (reset: noise positions restart) ──────────┘

so sample ``t`` of the output stays at offset ``t`` whatever was lost.
"""

from __future__ import annotations

import numpy as np


def conceal_gap(tail: np.ndarray, n_frames: int, frame_samples: int) -> np.ndarray:
    """``tail`` (what the decoder's flush released for the segment before the gap, 1-D) followed
    by silence for ``n_frames`` lost coarse frames of ``frame_samples`` samples each; same dtype.
    The caller resets the decoder before the frames after the gap."""
    if n_frames < 0 or frame_samples < 1:
        raise ValueError(f"need n_frames >= 0 and frame_samples >= 1, got {n_frames}, {frame_samples}")
    tail = np.asarray(tail).reshape(-1)
    return np.concatenate((tail, np.zeros(n_frames * frame_samples, dtype=tail.dtype)))


__all__ = ["conceal_gap"]

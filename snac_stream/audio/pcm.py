"""PCM sample formats: float audio in [-1, 1] <-> 16-bit integer bytes."""

from __future__ import annotations

import numpy as np

S16_SCALE = 32768.0  #: int16 = float * 32768 (and back: / 32768)


def to_s16le(audio: np.ndarray) -> bytes:
    """Float samples -> int16 little-endian bytes: ``round(clip(x, -1, 32767/32768) * 32768)``,
    rounding half to even (``np.round``); integer input is only cast."""
    a = np.asarray(audio).reshape(-1)
    if a.dtype.kind in "iu":
        return a.astype("<i2").tobytes()
    return np.round(np.clip(a, -1.0, (S16_SCALE - 1) / S16_SCALE) * S16_SCALE).astype("<i2").tobytes()


__all__ = ["S16_SCALE", "to_s16le"]

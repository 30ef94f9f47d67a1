"""LocalMHA as a stream operator: a window is attended once all its frames have arrived.

Windows are non-overlapping and aligned to the start of the stream, so output frame j
waits for frame ``(j // W + 1) * W - 1``: up to ``W - 1`` frames of lookahead. ``flush``
attends a final partial window within itself, as the offline layer does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from snac_model.attention import LocalMHA

from .streaming import StreamOp, cat_time, compact, empty


@dataclass
class WindowState:
    buffer: torch.Tensor  # [B, C, n < W]: frames of the current, incomplete window


class LocalAttention(StreamOp):
    def __init__(self, module: LocalMHA):
        self.module = module
        self.window = module.window_size
        self.out_channels = module.norm.normalized_shape[0]

    def init_state(self, batch, device, dtype):
        return WindowState(torch.zeros(batch, self.out_channels, 0, device=device, dtype=dtype))

    def step(self, state: WindowState, x: torch.Tensor) -> torch.Tensor:
        buf = cat_time(state.buffer, x)
        full = buf.shape[-1] // self.window * self.window
        state.buffer = compact(buf[..., full:])
        if full == 0:
            return empty(x, self.out_channels)
        return self.module.windows(buf[..., :full], self.window)

    def flush(self, state: WindowState, like: torch.Tensor) -> torch.Tensor:
        buf = state.buffer
        state.buffer = buf[..., :0]
        if buf.shape[-1] == 0:
            return empty(like, self.out_channels)
        return self.module.windows(buf, buf.shape[-1])

    def need(self, j: np.ndarray) -> np.ndarray:
        return (np.asarray(j) // self.window + 1) * self.window

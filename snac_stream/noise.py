"""The decoder's NoiseBlock as a stream operator: noise keyed by absolute sample position."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from snac_model.noise import NoiseSource

from .streaming import StreamOp, empty


@dataclass
class NoiseState:
    source: NoiseSource | None  # None: fresh torch.randn like the reference (not reproducible)
    position: int = 0  # absolute index of the next output sample of this layer


class Noise(StreamOp):
    """``x + noise[t] * conv1x1(x)[t]``; pointwise in time, so no delay."""

    def __init__(self, weight: torch.Tensor, index: int):
        self.weight = weight
        self.index = index
        self.out_channels = weight.shape[0]

    def init_state(self, batch, device, dtype):  # the decoder installs the seeded source
        return NoiseState(None)

    def step(self, state: NoiseState, x: torch.Tensor) -> torch.Tensor:
        B, _, T = x.shape
        if T == 0:
            return empty(x, self.out_channels)
        if state.source is None:
            n = torch.randn((B, 1, T), device=x.device, dtype=x.dtype)
        else:
            n = state.source.draw(self.index, state.position, T, dtype=x.dtype, device=x.device)
        state.position += T
        return x + n * F.conv1d(x, self.weight)

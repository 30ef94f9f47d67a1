"""Reproducible decoder noise, keyed by seed, NoiseBlock index and absolute sample position.

The reference draws ``torch.randn`` on every call, so no two decodes agree. Here noise for
sample ``t`` of NoiseBlock ``k`` depends only on ``(seed, k, t)``: it is generated in blocks
of ``NOISE_BLOCK`` samples, each from its own generator seeded by a hash of
``(seed, k, t // NOISE_BLOCK)``. Any chunking of a stream, and any batch composition,
therefore sees the same values. Values are drawn in float64 on the CPU and cast.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch

NOISE_BLOCK = 4096
_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def block_seed(seed: int, layer: int, block: int) -> int:
    """64-bit generator seed for one noise block."""
    return _splitmix64(_splitmix64(_splitmix64(seed & _MASK64) ^ layer) ^ block)


def noise_block(seed: int, layer: int, block: int) -> torch.Tensor:
    """Standard normal float64 values for samples ``[block*NOISE_BLOCK, (block+1)*NOISE_BLOCK)``."""
    gen = torch.Generator().manual_seed(block_seed(seed, layer, block))
    return torch.randn(NOISE_BLOCK, generator=gen, dtype=torch.float64)


class NoiseSource:
    """Seeded positional noise for a batch: one seed per batch item.

    ``draw(layer, start, length)`` returns ``[B, 1, length]`` for positions
    ``start .. start+length-1``. The most recent block per (item, layer) is cached, so a
    stream that advances a few samples at a time regenerates nothing.
    """

    def __init__(self, seeds: int | Sequence[int], batch_size: int | None = None):
        if isinstance(seeds, numbers.Integral):
            seeds = [seeds] * (batch_size or 1)
        self.seeds = [int(s) for s in seeds]
        if batch_size is not None and len(self.seeds) != batch_size:
            raise ValueError(
                f"got {len(self.seeds)} noise seeds for a batch of {batch_size}; give one per item"
            )
        self._cache: dict[tuple[int, int], tuple[int, torch.Tensor]] = {}

    def _block(self, seed: int, layer: int, block: int) -> torch.Tensor:
        hit = self._cache.get((seed, layer))
        if hit is not None and hit[0] == block:
            return hit[1]
        values = noise_block(seed, layer, block)
        self._cache[(seed, layer)] = (block, values)
        return values

    def draw(
        self, layer: int, start: int, length: int, dtype: torch.dtype, device: torch.device | str = "cpu"
    ) -> torch.Tensor:
        rows = []
        for seed in self.seeds:
            first, last = start // NOISE_BLOCK, (start + length - 1) // NOISE_BLOCK
            if length <= 0:
                rows.append(torch.zeros(0, dtype=torch.float64))
                continue
            blocks = [self._block(seed, layer, b) for b in range(first, last + 1)]
            values = blocks[0] if len(blocks) == 1 else torch.cat(blocks)
            offset = start - first * NOISE_BLOCK
            rows.append(values[offset : offset + length])
        return torch.stack(rows).unsqueeze(1).to(device=device, dtype=dtype)

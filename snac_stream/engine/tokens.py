"""The scheduler's token order: per-level tensors <-> one tick-ordered stream <-> LM ids.

On tick t (one latent frame), level i has a new token iff ``t % stride_i == 0``. Listing
the new tokens tick by tick, coarse level first, gives for the 24 kHz model (strides 4,2,1)
per coarse frame j::

    tick  4j      4j+1     4j+2     4j+3
          c0[j]
          c1[2j]           c1[2j+1]
          c2[4j]  c2[4j+1] c2[4j+2] c2[4j+3]
    flat: c0[j] c1[2j] c2[4j] c2[4j+1] c1[2j+1] c2[4j+2] c2[4j+3]

which is the order Orpheus TTS emits. LM vocabularies put position k of a coarse frame at
``offset + k * codebook_size + code`` (Orpheus: offset 128266 for the 24 kHz model).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

ORPHEUS_AUDIO_OFFSET = 128266


def frame_levels(strides: Sequence[int]) -> list[int]:
    """Level of each position in one coarse frame of the flat stream (24 kHz: 0,1,2,2,1,2,2)."""
    return [i for t in range(strides[0]) for i, s in enumerate(strides) if t % s == 0]


def tokens_in_ticks(strides: Sequence[int], t0: int, t1: int) -> int:
    """Number of flat tokens arriving with ticks ``t0 .. t1-1``."""
    return sum(-(-t1 // s) - -(-t0 // s) for s in strides)


def codes_to_tokens(
    codes: Sequence[torch.Tensor], strides: Sequence[int], start_tick: int = 0
) -> torch.Tensor:
    """Per-level codes ``[B, k_i]`` for whole ticks from ``start_tick`` -> flat ``[B, N]``."""
    from snac_model.validation import ticks_covered

    lengths = [c.shape[-1] for c in codes]
    t1 = ticks_covered(lengths, strides, start_tick)
    if t1 is None:
        raise ValueError(f"code lengths {lengths} do not form whole ticks for strides {list(strides)}")
    columns = []
    next_index = [0] * len(strides)
    for t in range(start_tick, t1):
        for i, s in enumerate(strides):
            if t % s == 0:
                columns.append(codes[i][:, next_index[i]])
                next_index[i] += 1
    if not columns:
        return torch.zeros(codes[0].shape[0], 0, dtype=torch.long, device=codes[0].device)
    return torch.stack(columns, dim=1)


def tokens_to_codes(
    tokens: torch.Tensor, strides: Sequence[int], start_tick: int = 0
) -> tuple[list[torch.Tensor], int, int]:
    """Flat ``[B, N]`` tokens from ``start_tick`` -> (per-level codes of the whole ticks, ticks
    covered, tokens used). Tokens of an incomplete last tick are not used."""
    if tokens.ndim != 2:
        raise ValueError(f"tokens must have shape [batch, n], got {tuple(tokens.shape)}")
    per_level: list[list[int]] = [[] for _ in strides]
    used, t, n = 0, start_tick, tokens.shape[1]
    while True:
        levels = [i for i, s in enumerate(strides) if t % s == 0]
        if used + len(levels) > n:
            break
        for k, i in enumerate(levels):
            per_level[i].append(used + k)
        used += len(levels)
        t += 1
    codes = [tokens[:, idx] for idx in per_level]
    return codes, t - start_tick, used


def to_lm_ids(
    tokens: torch.Tensor,
    strides: Sequence[int],
    codebook_size: int,
    offset: int = ORPHEUS_AUDIO_OFFSET,
    start: int = 0,
) -> torch.Tensor:
    """Flat codes -> LM vocabulary ids ``offset + (position in coarse frame) * codebook_size + code``.
    ``start`` is the flat index of ``tokens[:, 0]`` (its position within a frame matters)."""
    per_frame = len(frame_levels(strides))
    pos = (torch.arange(tokens.shape[-1], device=tokens.device) + start) % per_frame
    return tokens + offset + pos * codebook_size


def from_lm_ids(
    ids: torch.Tensor,
    strides: Sequence[int],
    codebook_size: int,
    offset: int = ORPHEUS_AUDIO_OFFSET,
    start: int = 0,
) -> torch.Tensor:
    """LM vocabulary ids -> flat codes; an id outside its position's range is an error."""
    per_frame = len(frame_levels(strides))
    pos = (torch.arange(ids.shape[-1], device=ids.device) + start) % per_frame
    codes = ids - offset - pos * codebook_size
    bad = (codes < 0) | (codes >= codebook_size)
    if bool(bad.any()):
        first = bad.reshape(-1, bad.shape[-1]).nonzero()[0]
        b, k = int(first[0]), int(first[1])
        lo = offset + int(pos[k]) * codebook_size
        raise ValueError(
            f"LM id {int(ids.reshape(-1, ids.shape[-1])[b, k])} at flat position {k + start} is not "
            f"an audio token of frame position {int(pos[k])} (expected {lo} .. {lo + codebook_size - 1})"
        )
    return codes

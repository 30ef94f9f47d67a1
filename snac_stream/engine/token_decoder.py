"""Decode a tick-ordered token stream as it is produced (e.g. by a language model).

Tokens wait in a small buffer (:class:`TokenTicks`) until the next *hop* is complete: by
default one coarse frame (``hop_ticks = vq_strides[0]``, 4 ticks = 7 tokens at 24 kHz), so
pushing one token at a time costs about what pushing a frame at a time does (one decoder
step per frame, not per tick). ``hop_ticks=1`` steps on every tick. Steps always end on a
multiple of ``hop_ticks`` (counted from tick 0), so streams pushing at the same granularity
stay in phase and batch (:mod:`snac_stream.engine.multistream`). Audio for tick t is released
by the first step at or after the tick where t's lookahead is complete: at 24 kHz the first
audio comes after 18 tokens with ``hop_ticks=1`` and after 21 (three frames) by default.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from snac_model import SNAC

from .decoder import StreamingDecoder
from .tokens import ORPHEUS_AUDIO_OFFSET, from_lm_ids, tokens_in_ticks, tokens_to_codes


def check_hop_ticks(hop_ticks: int | None, strides: Sequence[int]) -> int:
    """``hop_ticks`` (None: one coarse frame, ``strides[0]`` ticks) as a checked int >= 1."""
    if hop_ticks is None:
        return int(strides[0])
    if isinstance(hop_ticks, bool) or not isinstance(hop_ticks, int) or hop_ticks < 1:
        raise ValueError(f"hop_ticks must be an int >= 1 (ticks per decoder step), got {hop_ticks!r}")
    return hop_ticks


class TokenTicks:
    """Tokens in, per-level codes of the ticks due for a decoder step out (no model runs here).

    ``push(tokens [B, n] | list[int])`` checks the tokens (codes in ``[0, codebook_size)``, or
    LM ids when ``lm_offset`` is set) and returns ``(codes, ticks)``: the codes ``[B, k_i]`` of
    the whole ticks up to the last multiple of ``hop_ticks`` reached, and how many ticks that
    is (0: nothing to decode yet, empty codes). ``drain()`` returns every whole tick left, at
    the end of a stream. A push that raises changes nothing.
    """

    def __init__(
        self, model: SNAC, batch_size: int = 1, lm_offset: int | None = None, hop_ticks: int | None = None
    ):
        self.strides = list(model.vq_strides)
        self.codebook_size = int(model.codebook_size)
        self.batch_size = batch_size
        self.lm_offset = lm_offset
        self.hop_ticks = check_hop_ticks(hop_ticks, self.strides)
        self._none = [torch.zeros(batch_size, 0, dtype=torch.long) for _ in self.strides]  # no ticks
        self.reset()

    def reset(self) -> None:
        self._chunks: list[torch.Tensor] = []  # codes not yet released, in order
        self._held = 0  # their count
        self.tokens_in = 0  #: tokens pushed since the start
        self.ticks = 0  #: ticks released since the start

    @property
    def pending(self) -> torch.Tensor:
        """Codes received but not yet released ``[B, n]``."""
        if len(self._chunks) != 1:
            self._chunks = [
                torch.cat([torch.zeros(self.batch_size, 0, dtype=torch.long), *self._chunks], dim=1)
            ]
        return self._chunks[0]

    def check(self, tokens: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """``tokens`` as codes ``[B, n]`` (long, CPU); raises on a bad shape, type or value."""
        if not isinstance(tokens, torch.Tensor):
            tokens = torch.tensor([list(tokens)], dtype=torch.long)
        if tokens.ndim == 1:
            tokens = tokens.unsqueeze(0)
        if tokens.dtype == torch.bool or tokens.is_floating_point() or tokens.is_complex():
            raise TypeError(f"tokens must be integers, got {tokens.dtype}")
        if tokens.ndim != 2 or tokens.shape[0] != self.batch_size:
            raise ValueError(
                f"tokens must have shape [batch_size={self.batch_size}, n], got {tuple(tokens.shape)}"
            )
        tokens = tokens.to("cpu", torch.long)
        if self.lm_offset is not None:
            return from_lm_ids(tokens, self.strides, self.codebook_size, self.lm_offset, start=self.tokens_in)
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.codebook_size):
            bad = int(tokens.min()) if int(tokens.min()) < 0 else int(tokens.max())
            raise ValueError(f"token {bad} is outside [0, {self.codebook_size}) (codebook_size)")
        return tokens

    def push(self, tokens: torch.Tensor | Sequence[int]) -> tuple[list[torch.Tensor], int]:
        codes = self.check(tokens)
        if codes.shape[1]:
            self._chunks.append(codes)
            self._held += codes.shape[1]
            self.tokens_in += codes.shape[1]
        whole = self._whole_ticks()
        return self._release((self.ticks + whole) // self.hop_ticks * self.hop_ticks - self.ticks)

    def drain(self) -> tuple[list[torch.Tensor], int]:
        """End of stream: the codes of every whole tick left; an incomplete last tick raises."""
        whole = self._whole_ticks()
        left = self._held - tokens_in_ticks(self.strides, self.ticks, self.ticks + whole)
        if left:
            raise ValueError(
                f"stream ended inside a tick: {left} token(s) of tick {self.ticks + whole} are missing "
                "their other levels"
            )
        return self._release(whole)

    def _whole_ticks(self) -> int:
        """Whole ticks among the held tokens (they start at tick ``self.ticks``)."""
        t0 = t = self.ticks
        while tokens_in_ticks(self.strides, t0, t + 1) <= self._held:
            t += 1
        return t - t0

    def _release(self, n_ticks: int) -> tuple[list[torch.Tensor], int]:
        if n_ticks <= 0:
            return self._none, 0
        used = tokens_in_ticks(self.strides, self.ticks, self.ticks + n_ticks)
        pending = self.pending
        codes, _, _ = tokens_to_codes(pending[:, :used], self.strides, self.ticks)
        self._chunks = [pending[:, used:]]
        self._held -= used
        self.ticks += n_ticks
        return codes, n_ticks


class TokenDecoder:
    """``push(tokens [B, n] | list[int])`` -> newly final audio ``[B, 1, m]``; ``flush()`` -> the tail.

    With ``lm_offset`` set, tokens are LM vocabulary ids (``offset + position * codebook_size
    + code``, Orpheus: :data:`~snac_stream.engine.tokens.ORPHEUS_AUDIO_OFFSET`). ``hop_ticks``
    (keyword-only): ticks per decoder step, default one coarse frame (see the module doc);
    1 steps on every tick. Everything pushed plus the flush equals ``model.decode(codes, seed)``.
    """

    def __init__(
        self,
        model: SNAC,
        batch_size: int = 1,
        seed: int | Sequence[int] | None = None,
        lm_offset: int | None = None,
        *,
        hop_ticks: int | None = None,
    ):
        self.gate = TokenTicks(model, batch_size, lm_offset, hop_ticks)
        self.decoder = StreamingDecoder(model, batch_size, seed)
        self.model = model
        self.lm_offset = lm_offset
        self.hop_ticks = self.gate.hop_ticks
        self.reset()

    def reset(self) -> None:
        self.decoder.reset()
        self.gate.reset()

    @property
    def pending(self) -> torch.Tensor:
        """Tokens received but not yet decoded ``[B, n]`` (codes)."""
        return self.gate.pending

    @property
    def tokens_in(self) -> int:
        return self.gate.tokens_in

    def push(self, tokens: torch.Tensor | Sequence[int]) -> torch.Tensor:
        self.decoder._check_open()
        codes, ticks = self.gate.push(tokens)
        if ticks == 0:
            return self.decoder._like()
        return self.decoder.push(codes)

    def flush(self) -> torch.Tensor:
        """End of stream; tokens of an incomplete last tick are an error (they cannot be decoded)."""
        self.decoder._check_open()
        codes, ticks = self.gate.drain()
        head = self.decoder.push(codes) if ticks else self.decoder._like()
        return torch.cat((head, self.decoder.flush()), dim=-1)


__all__ = ["TokenDecoder", "TokenTicks", "ORPHEUS_AUDIO_OFFSET", "check_hop_ticks"]

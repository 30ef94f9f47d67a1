"""Decode a tick-ordered token stream as it is produced (e.g. by a language model).

Audio for tick t is released as soon as tick t's tokens and the decoder's lookahead have
arrived; tokens of an incomplete tick wait in a small buffer (fewer than ``n_codebooks``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from snac_model import SNAC

from .decoder import StreamingDecoder
from .tokens import ORPHEUS_AUDIO_OFFSET, from_lm_ids, tokens_to_codes


class TokenDecoder:
    """``push(tokens [B, n] | list[int])`` -> newly final audio ``[B, 1, m]``.

    With ``lm_offset`` set, tokens are LM vocabulary ids (``offset + position * codebook_size
    + code``, Orpheus: :data:`~snac_stream.engine.tokens.ORPHEUS_AUDIO_OFFSET`)."""

    def __init__(
        self,
        model: SNAC,
        batch_size: int = 1,
        seed: int | Sequence[int] | None = None,
        lm_offset: int | None = None,
    ):
        self.decoder = StreamingDecoder(model, batch_size, seed)
        self.model = model
        self.lm_offset = lm_offset
        self.reset()

    def reset(self) -> None:
        self.decoder.reset()
        self.pending = torch.zeros(self.decoder.batch_size, 0, dtype=torch.long)
        self.tokens_in = 0

    def push(self, tokens: torch.Tensor | Sequence[int]) -> torch.Tensor:
        if not isinstance(tokens, torch.Tensor):
            tokens = torch.tensor([list(tokens)], dtype=torch.long)
        if tokens.ndim == 1:
            tokens = tokens.unsqueeze(0)
        if tokens.dtype == torch.bool or tokens.is_floating_point():
            raise TypeError(f"tokens must be integers, got {tokens.dtype}")
        if tokens.ndim != 2 or tokens.shape[0] != self.decoder.batch_size:
            raise ValueError(
                f"tokens must have shape [batch_size={self.decoder.batch_size}, n], got {tuple(tokens.shape)}"
            )
        tokens = tokens.to("cpu", torch.long)
        if self.lm_offset is not None:
            tokens = from_lm_ids(
                tokens, self.model.vq_strides, self.model.codebook_size, self.lm_offset, start=self.tokens_in
            )
        elif tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.model.codebook_size):
            bad = int(tokens.min()) if int(tokens.min()) < 0 else int(tokens.max())
            raise ValueError(f"token {bad} is outside [0, {self.model.codebook_size}) (codebook_size)")
        pending = torch.cat((self.pending, tokens), dim=1)
        codes, _, used = tokens_to_codes(pending, self.model.vq_strides, self.decoder.ticks)
        audio = self.decoder.push(codes)  # validates ranges; state unchanged if it raises
        self.pending = pending[:, used:]
        self.tokens_in += tokens.shape[1]
        return audio

    def flush(self) -> torch.Tensor:
        """End of stream; tokens of an incomplete last tick are an error (they cannot be decoded)."""
        if self.pending.shape[1]:
            raise ValueError(
                f"stream ended inside a tick: {self.pending.shape[1]} token(s) of tick {self.decoder.ticks} "
                "are missing their other levels"
            )
        return self.decoder.flush()


__all__ = ["TokenDecoder", "ORPHEUS_AUDIO_OFFSET"]

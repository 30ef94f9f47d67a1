"""StreamingEncoder: audio in, chunk by chunk; codes of whole coarse blocks out.

Each input sample passes each layer once. The concatenation of everything ``push``
returns plus ``flush`` equals ``model.encode(audio)`` for any chunking: ``flush`` adds the
same final zero padding that offline ``encode`` adds (to a multiple of ``pad_multiple``),
then walks the layers in order, each padding its own input.
"""

from __future__ import annotations

import math

import torch

from snac_model import SNAC
from snac_model.validation import check_audio

from .build import build_stream
from .kernels import intra_op_threads
from .quantizer import BlockQuantizer
from .streaming import cat_time


class StreamFinished(RuntimeError):
    """``push``/``flush`` after ``flush``: call ``reset()`` to start a new stream."""


def _join_codes(a: list[torch.Tensor], b: list[torch.Tensor]) -> list[torch.Tensor]:
    return [torch.cat((x, y), dim=-1) if y.shape[-1] else x for x, y in zip(a, b, strict=True)]


class StreamingEncoder:
    """``push(audio [B, 1, n])`` -> newly final codes per level ``[B, k_i]`` (``k_0`` coarse
    frames, ``k_i = k_0 * stride_0 / stride_i``).

    Performance options (keyword-only): ``fast`` (default) runs the time-major fast path of
    :func:`~snac_stream.build.build_fast` (same codes; ``fast=False``: the reference
    operators); ``threads`` intra-op threads while a push runs (default 1, restored after;
    ``None`` leaves torch's setting); opt-in ``compile=True`` (``torch.compile``'d Snake and
    depthwise kernels, compiled on first use) and ``gemm_dtype=torch.bfloat16`` (bf16
    GEMMs: faster, NOT exact, codes may differ).
    """

    def __init__(
        self,
        model: SNAC,
        batch_size: int = 1,
        *,
        fast: bool = True,
        compile: bool = False,
        gemm_dtype: torch.dtype | None = None,
        threads: int | None = 1,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.batch_size = batch_size
        self.threads = threads
        self.layers = build_stream(model.encoder, fast=fast, compile=compile, gemm_dtype=gemm_dtype)
        self.quantizer = BlockQuantizer(model.quantizer)
        self.reset()

    def reset(self) -> None:
        """Start a new stream (state back to the offline left padding)."""
        dev, dt, b = self.model.device, self.model.dtype, self.batch_size
        self.state = self.layers.init_state(b, dev, dt)
        self.block_state = self.quantizer.init_state(b, dev, dt)
        self.samples_in = 0
        self.finished = False

    def _check_open(self) -> None:
        if self.finished:
            raise StreamFinished("this stream was flushed; call reset() to start a new one")

    @torch.inference_mode()
    def push(self, audio: torch.Tensor) -> list[torch.Tensor]:
        self._check_open()
        audio = check_audio(audio, self.model, self.batch_size)
        self.samples_in += audio.shape[-1]
        with intra_op_threads(self.threads):
            return self.quantizer.step(self.block_state, self.layers.step(self.state, audio))

    @torch.inference_mode()
    def flush(self) -> list[torch.Tensor]:
        """End of stream: pad as offline ``encode`` does and return the remaining codes."""
        self._check_open()
        self.finished = True
        m = self.model
        if self.samples_in == 0:  # offline encode of nothing is nothing (no padding frame)
            return [torch.zeros(self.batch_size, 0, dtype=torch.long, device=m.device) for _ in m.vq_strides]
        pad = math.ceil(self.samples_in / m.pad_multiple) * m.pad_multiple - self.samples_in
        like = torch.zeros(self.batch_size, 1, 0, device=m.device, dtype=m.dtype)
        with intra_op_threads(self.threads):
            z = self.layers.step(self.state, like.new_zeros(self.batch_size, 1, pad))
            z = cat_time(z, self.layers.flush(self.state, like))
            codes = self.quantizer.step(self.block_state, z)
        if self.block_state.buffer.shape[-1]:
            raise AssertionError("encoder flush left a partial coarse block")
        return codes

    @property
    def latency_samples(self) -> int:
        """Worst case, over the frame phase, of how many samples must arrive after a sample
        before the codes covering it are emitted (see :mod:`snac_stream.latency`)."""
        from .latency import encoder_latency

        return encoder_latency(self).samples

    def encode(self, chunks) -> list[torch.Tensor]:
        """Convenience: push every chunk of an iterable, flush, and join the codes."""
        codes = [
            torch.zeros(self.batch_size, 0, dtype=torch.long, device=self.model.device)
        ] * self.model.n_codebooks
        for chunk in chunks:
            codes = _join_codes(codes, self.push(chunk))
        return _join_codes(codes, self.flush())

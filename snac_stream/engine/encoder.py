"""StreamingEncoder: audio in, chunk by chunk; codes of whole coarse blocks out.

Each input sample passes each layer once. The concatenation of everything ``push``
returns plus ``flush`` equals ``model.encode(audio)`` for any chunking: ``flush`` adds the
same final zero padding that offline ``encode`` adds (to a multiple of ``pad_multiple``),
then walks the layers in order, each padding its own input.
"""

from __future__ import annotations

import math
import warnings

import torch

from snac_model import SNAC
from snac_model.validation import check_audio
from snac_stream import kernels as kernel_sets
from snac_stream.ops import BlockQuantizer, StreamOp, build

from .latency import encoder_latency


class StreamFinished(RuntimeError):
    """``push``/``flush`` after ``flush``: call ``reset()`` to start a new stream."""


def _join_codes(a: list[torch.Tensor], b: list[torch.Tensor]) -> list[torch.Tensor]:
    return [torch.cat((x, y), dim=-1) if y.shape[-1] else x for x, y in zip(a, b, strict=True)]


def check_threads(threads: int | None) -> None:
    """``threads=`` of the engines is no longer applied per push (a process-wide setting changed
    from several threads at once is a race): set it once with :func:`snac_stream.runtime.configure`."""
    if threads is not None:
        warnings.warn(
            "threads= is ignored: engines no longer change torch's thread count per push; "
            "call snac_stream.runtime.configure(threads=N) once when the application starts",
            DeprecationWarning,
            stacklevel=3,
        )


def stream_layers(
    model: SNAC, part: str, kernels: str | None, gemm_dtype: torch.dtype | None
) -> tuple[StreamOp, kernel_sets.GenericKernels]:
    """The operator chain of ``model.encoder`` / ``model.decoder`` and the kernel set it runs."""
    chosen = kernel_sets.select(model.device, kernels)
    return build(getattr(model, part), chosen, gemm_dtype), chosen


class StreamingEncoder:
    """``push(audio [B, 1, n])`` -> newly final codes per level ``[B, k_i]`` (``k_0`` coarse
    frames, ``k_i = k_0 * stride_0 / stride_i``).

    Options (keyword-only): ``kernels`` (``"auto"``, ``"native"``, ``"generic"``; default
    ``$SNAC_STREAM_KERNELS`` or auto, see :mod:`snac_stream.kernels`); opt-in
    ``gemm_dtype=torch.bfloat16`` (bf16 GEMMs: faster where the CPU has bf16, NOT exact, codes
    may differ). ``threads`` is deprecated (see :func:`check_threads`).
    """

    part = "encoder"

    def __init__(
        self,
        model: SNAC,
        batch_size: int = 1,
        *,
        kernels: str | None = None,
        gemm_dtype: torch.dtype | None = None,
        threads: int | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        check_threads(threads)
        self.model = model
        self.batch_size = batch_size
        self.layers, self.kernels = stream_layers(model, "encoder", kernels, gemm_dtype)
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
        return self.quantizer.step(self.block_state, self.layers.step(self.state, audio))

    @torch.inference_mode()
    def flush(self) -> list[torch.Tensor]:
        """End of stream: pad as offline ``encode`` does and return the remaining codes."""
        self._check_open()
        self.finished = True
        return flush_encoder(
            self.model,
            self.layers,
            self.quantizer,
            self.state,
            self.block_state,
            self.samples_in,
            self.batch_size,
        )

    @property
    def latency_samples(self) -> int:
        """Worst case, over the frame phase, of how many samples must arrive after a sample
        before the codes covering it are emitted (see :mod:`snac_stream.engine.latency`)."""
        return encoder_latency(self).samples

    def encode(self, chunks) -> list[torch.Tensor]:
        """Convenience: push every chunk of an iterable, flush, and join the codes."""
        codes = [
            torch.zeros(self.batch_size, 0, dtype=torch.long, device=self.model.device)
        ] * self.model.n_codebooks
        for chunk in chunks:
            codes = _join_codes(codes, self.push(chunk))
        return _join_codes(codes, self.flush())


def flush_encoder(
    model: SNAC, layers: StreamOp, quantizer: BlockQuantizer, state, block_state, samples_in: int, batch: int
) -> list[torch.Tensor]:
    """The end of an encoder stream (``batch`` items) that has taken ``samples_in`` samples: the
    final padding of offline ``encode``, then each layer's own right padding; the remaining codes."""
    if samples_in == 0:  # offline encode of nothing is nothing (no padding frame)
        return [torch.zeros(batch, 0, dtype=torch.long, device=model.device) for _ in model.vq_strides]
    pad = math.ceil(samples_in / model.pad_multiple) * model.pad_multiple - samples_in
    like = torch.zeros(batch, 1, 0, device=model.device, dtype=model.dtype)
    z = layers.step(state, like.new_zeros(batch, 1, pad))
    z = torch.cat((z, layers.flush(state, like)), dim=-1)
    codes = quantizer.step(block_state, z)
    if block_state.buffer.shape[-1]:
        raise AssertionError("encoder flush left a partial coarse block")
    return codes

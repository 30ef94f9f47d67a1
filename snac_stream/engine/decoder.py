"""StreamingDecoder: codes in, tick by tick; audio out as soon as it is final.

A token arrives with the first tick it covers: pushing ticks ``t0 .. t1-1`` carries, for
level i (stride s_i), tokens ``ceil(t0/s_i) .. ceil(t1/s_i)-1``. Whole coarse frames are
the special case where t0 and t1 are multiples of s_0. The concatenation of everything
``push`` returns plus ``flush`` equals ``model.decode(codes, seed=seed)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from snac_model import SNAC, NoiseSource
from snac_model.validation import check_codes
from snac_stream.ops import TickEmbedder, install_noise

from .encoder import StreamFinished, check_threads, stream_layers
from .latency import decoder_latency


class StreamingDecoder:
    """``push(codes)`` -> newly final samples ``[B, 1, m]``; ``flush()`` -> the held-back tail.

    ``seed`` (an int, or one per batch item) keys the decoder noise by absolute sample
    position, so the result equals ``model.decode(codes, seed=seed)`` whatever the chunking;
    ``None`` draws fresh noise like the reference.

    Options (keyword-only), as for :class:`~snac_stream.StreamingEncoder`: ``kernels``, opt-in
    ``gemm_dtype=torch.bfloat16`` (not exact: audio deviates slightly); ``threads`` is deprecated.
    """

    part = "decoder"

    def __init__(
        self,
        model: SNAC,
        batch_size: int = 1,
        seed: int | Sequence[int] | None = None,
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
        self.seed = seed
        if seed is not None:
            NoiseSource(seed, batch_size)  # validates the seed count now, not at first push
        self.layers, self.kernels = stream_layers(model, "decoder", kernels, gemm_dtype)
        self.embedder = TickEmbedder(model.quantizer)
        self.reset()

    def reset(self) -> None:
        """Start a new stream at tick 0 (noise positions restart too)."""
        m = self.model
        self.state = self.layers.init_state(self.batch_size, m.device, m.dtype)
        source = None if self.seed is None else NoiseSource(self.seed, self.batch_size)
        install_noise(self.layers, self.state, source)
        self.tick_state = self.embedder.init_state()
        self.samples_out = 0
        self.finished = False

    @property
    def ticks(self) -> int:
        """Ticks (latent frames) received so far."""
        return self.tick_state.tick

    def _like(self) -> torch.Tensor:
        return torch.zeros(self.batch_size, 1, 0, device=self.model.device, dtype=self.model.dtype)

    def _check_open(self) -> None:
        if self.finished:
            raise StreamFinished("this stream was flushed; call reset() to start a new one")

    @torch.inference_mode()
    def push(self, codes: Sequence[torch.Tensor]) -> torch.Tensor:
        self._check_open()
        codes, t1 = check_codes(codes, self.model, self.batch_size, start_tick=self.ticks)
        if t1 == self.ticks:
            return self._like()
        z_q = self.embedder.step(self.tick_state, codes, t1)
        audio = self.layers.step(self.state, z_q)
        self.samples_out += audio.shape[-1]
        return audio

    @torch.inference_mode()
    def flush(self) -> torch.Tensor:
        self._check_open()
        self.finished = True
        audio = self.layers.flush(self.state, self._like())
        self.samples_out += audio.shape[-1]
        return audio

    @property
    def latency_samples(self) -> int:
        """Worst case, over the frame phase, of how many samples of codes must arrive after
        an output sample's own time before it is released (see :mod:`snac_stream.engine.latency`)."""
        return decoder_latency(self).samples

    def decode(self, chunks) -> torch.Tensor:
        """Convenience: push every chunk of codes, flush, and join the audio."""
        parts = [self.push(c) for c in chunks] + [self.flush()]
        return torch.cat(parts, dim=-1)

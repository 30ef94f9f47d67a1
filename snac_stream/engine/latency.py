"""Algorithmic latency: computed from the layers, and measured by perturbation probes.

Definitions (all in samples at the model's sample rate; "worst case over frame phase"):

- Encoder: for input sample n, how many more samples must arrive after it before the codes
  of the coarse block covering n are emitted; the maximum over n. It includes waiting for
  the rest of the coarse block (up to ``frame_size - 1``) plus the network's lookahead.
- Decoder: for output sample n, ``hop * tau(n) - (n + 1)``, where ``tau(n)`` is how many
  ticks must have arrived before n is released: how far past a sample's own time its
  codes must reach. The maximum over n.
- End to end (encoder then decoder, codes sent as soon as they exist): for sample n, how
  many input samples must arrive after it before the decoder releases it.

The analytic values compose each stream operator's ``need`` in steady state; the probes
perturb the offline model's input after position P and find the first output that changes.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass

import numpy as np
import torch

from snac_model import SNAC
from snac_stream.kernels import GenericKernels
from snac_stream.ops import StreamOp, build


@dataclass(frozen=True)
class Latency:
    samples: int
    sample_rate: int

    @property
    def ms(self) -> float:
        return 1000.0 * self.samples / self.sample_rate


def _period_blocks(model: SNAC) -> int:
    """Coarse blocks after which the encoder's alignment pattern repeats."""
    return math.lcm(model.vq_strides[0], model.attn_window_size or 1) // model.vq_strides[0]


def _steady_blocks(model: SNAC) -> np.ndarray:
    period = _period_blocks(model)
    start = 64 * period  # far from the start: no left-padding effects
    return np.arange(start, start + 4 * period)


@functools.lru_cache(maxsize=32)
def _geometry(config: str) -> dict[str, StreamOp]:
    """Operator chains of a configuration built on the meta device: geometry only (``need``), no
    weights in memory."""
    with torch.device("meta"):
        twin = SNAC(**json.loads(config))
    kernels = GenericKernels("geometry only")
    return {"encoder": build(twin.encoder, kernels), "decoder": build(twin.decoder, kernels)}


class _Needs:
    """``need`` functions of a model's encoder and decoder: the chains of the engine given in
    ``layers`` (``{"encoder": chain}``), the rest from the configuration's geometry."""

    def __init__(self, model: SNAC, layers: dict[str, StreamOp] | None = None):
        chains = dict(layers or {})
        if len(chains) < 2:
            chains = {**_geometry(json.dumps(model.config, sort_keys=True)), **chains}
        self.encoder, self.decoder = chains["encoder"], chains["decoder"]
        self.block = model.vq_strides[0]

    @classmethod
    def of(cls, obj) -> _Needs:
        """For a model, or an engine (its ``part`` and ``layers``)."""
        if isinstance(obj, SNAC):
            return cls(obj)
        return cls(obj.model, {obj.part: obj.layers})

    def encoder_samples(self, blocks: np.ndarray) -> np.ndarray:
        """Input samples needed before coarse block b is emitted."""
        return self.encoder.need((np.asarray(blocks) + 1) * self.block - 1)

    def decoder_ticks(self, samples: np.ndarray) -> np.ndarray:
        """Ticks needed before output sample n is released."""
        return self.decoder.need(np.asarray(samples))


def _model_of(obj) -> SNAC:
    return obj if isinstance(obj, SNAC) else obj.model


def encoder_latency(obj) -> Latency:
    """Analytic encoder latency of a model or an encoder engine."""
    model = _model_of(obj)
    blocks = _steady_blocks(model)
    need = _Needs.of(obj).encoder_samples(blocks)
    return Latency(int(np.max(need - blocks * model.frame_size - 1)), model.sample_rate)


def _steady_samples(model: SNAC) -> np.ndarray:
    span = model.decoder_hop * math.lcm(model.vq_strides[0], model.attn_window_size or 1)
    start = 64 * span
    return np.arange(start, start + 2 * span)


def decoder_latency(obj) -> Latency:
    """Analytic decoder latency of a model or a decoder engine."""
    model = _model_of(obj)
    n = _steady_samples(model)
    ticks = _Needs.of(obj).decoder_ticks(n)
    return Latency(int(np.max(ticks * model.decoder_hop - (n + 1))), model.sample_rate)


def end_to_end_latency(obj) -> Latency:
    """Analytic encoder+decoder latency (codes leave the encoder as soon as they exist)."""
    model = _model_of(obj)
    needs = _Needs(model)
    n = _steady_samples(model)
    last_tick = needs.decoder_ticks(n) - 1
    samples = needs.encoder_samples(last_tick // model.vq_strides[0])
    return Latency(int(np.max(samples - (n + 1))), model.sample_rate)


# ---------------------------------------------------------------------------- probes
def _perturbed(x: torch.Tensor, start: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    y = x.clone()
    y[..., start:] += torch.randn(y[..., start:].shape, generator=gen, dtype=torch.float64).to(y.dtype)
    return y


@torch.inference_mode()
def probe_encoder_need(model: SNAC, block: int, seed: int = 0) -> int:
    """Empirical input samples needed by coarse block ``block``: the smallest P such that
    perturbing every input sample from P on leaves that block's latent frames unchanged."""
    s0 = model.vq_strides[0]
    length = (block + 2 * _period_blocks(model) + 8) * model.frame_size + model.pad_multiple
    gen = torch.Generator().manual_seed(seed)
    x = (0.3 * torch.randn(1, 1, length, generator=gen, dtype=torch.float64)).to(model.dtype)

    def latent(audio: torch.Tensor) -> torch.Tensor:
        return model.encoder(model.preprocess(audio))[..., block * s0 : (block + 1) * s0]

    base = latent(x)

    def changed(p: int) -> bool:
        return not torch.equal(latent(_perturbed(x, p, seed + 1)), base)

    lo, hi = block * model.frame_size, length  # changed(lo) is true, changed(hi) false
    if not changed(lo) or changed(hi):
        raise AssertionError("probe signal too short for this block")
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if changed(mid) else (lo, mid)
    return hi


@torch.inference_mode()
def probe_decoder_first_changed(model: SNAC, tick: int, n_frames: int | None = None, seed: int = 0) -> int:
    """Empirical first output sample that changes when every token arriving at tick >= ``tick``
    (level i token k arrives at tick k * stride_i) is replaced by another code."""
    period = math.lcm(model.vq_strides[0], model.attn_window_size or 1)
    n_frames = n_frames or (tick + 2 * period) // model.vq_strides[0] + 2
    gen = torch.Generator().manual_seed(seed)
    codes = [
        torch.randint(0, model.codebook_size, (1, n_frames * model.vq_strides[0] // s), generator=gen)
        for s in model.vq_strides
    ]
    other = []
    for c, s in zip(codes, model.vq_strides, strict=True):
        c2 = c.clone()
        first = -(-tick // s)
        c2[:, first:] = (
            c2[:, first:] + 1 + torch.randint(0, model.codebook_size - 1, c2[:, first:].shape, generator=gen)
        ) % model.codebook_size
        other.append(c2)
    a = model.decode(codes, seed=seed)
    b = model.decode(other, seed=seed)
    diff = (a != b).flatten().nonzero()
    return int(diff[0]) if len(diff) else a.shape[-1]


def _float64(model: SNAC) -> SNAC:
    """Probes run in float64: in float32 the edge taps of a receptive field can round away."""
    if model.dtype == torch.float64:
        return model
    import copy

    return copy.deepcopy(model).double()


def probe_encoder_latency(model: SNAC) -> Latency:
    """Encoder latency from probes over one period of frame phases, past the start-up region."""
    model = _float64(model)
    period = _period_blocks(model)
    first = 4 * period + -(-encoder_latency(model).samples // model.frame_size)
    blocks = range(first, first + period)
    worst = max(probe_encoder_need(model, b) - b * model.frame_size - 1 for b in blocks)
    return Latency(worst, model.sample_rate)


def probe_decoder_latency(model: SNAC) -> Latency:
    """Decoder latency from probes: ``max_Q (Q + 1) * hop - first_changed(Q) - 1`` over one period
    of ticks, starting past the start-up region (where outputs clamp to sample 0)."""
    model = _float64(model)
    period = math.lcm(model.vq_strides[0], model.attn_window_size or 1)
    start = 4 * period + -(-decoder_latency(model).samples // model.decoder_hop)
    hop = model.decoder_hop
    ticks = range(start, start + period)
    worst = max((q + 1) * hop - probe_decoder_first_changed(model, q) - 1 for q in ticks)
    return Latency(worst, model.sample_rate)

"""Helpers for the streaming tests: small random models, chunkings, tick splits, state sizes.

- ``small_configs()``: a hypothesis strategy of tiny, valid SNAC configurations (odd rates,
  encoder rate 1, 2..5 VQ levels with strides dividing the first, attention windows 2..4,
  depthwise and noise on/off), each running in a fraction of a second.
- ``sample_chunks(n, frame)``: a strategy of chunk sizes summing to ``n`` (empty chunks,
  one-sample chunks, chunks straddling frames and windows, or one big chunk).
- ``tick_chunks(n_ticks, s0)``: the same for decoder ticks.
- ``split_codes(codes, strides, bounds)``: per-level codes of ticks ``[t0, t1)`` by the ceil rule.
- ``stream_encode`` / ``stream_decode``: push a chunking, check each push's shapes, join.
- ``state_tensors(obj)``: every tensor held by a stream's state (for the memory bound).

``SNAC_STREAM_EXAMPLES_SCALE`` (a float, default 1) multiplies every property test's
``max_examples`` for longer local runs, e.g.
``SNAC_STREAM_EXAMPLES_SCALE=20 pytest tests/test_stream_exact.py``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
from collections.abc import Sequence

import torch
from hypothesis import strategies as st

from snac_model import SNAC

EXAMPLES_SCALE = float(os.environ.get("SNAC_STREAM_EXAMPLES_SCALE", "1"))


def examples(n: int) -> int:
    """``max_examples`` for a property test, scaled by ``SNAC_STREAM_EXAMPLES_SCALE``."""
    return max(1, round(n * EXAMPLES_SCALE))


# ---------------------------------------------------------------------------- models
def build_model(cfg: dict, dtype: torch.dtype = torch.float64, seed: int = 0) -> SNAC:
    """``SNAC(**cfg)`` built under ``torch.manual_seed(seed)``, with Snake alphas, weight-norm
    magnitudes and LayerNorms moved off their defaults (so a layer ignoring one is caught)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SNAC(**copy.deepcopy(cfg))
        with torch.no_grad():
            for name, p in model.named_parameters():
                u = torch.rand(p.shape, dtype=torch.float32)
                if name.endswith("alpha"):
                    p.copy_(0.5 + u)
                elif name.endswith("original0") or name.endswith("weight_g"):
                    p.mul_(0.75 + 0.5 * u)
                elif ".norm." in name:
                    p.add_(0.2 * (u - 0.5))
    return model.to(dtype).eval()


def latent_length(rates: Sequence[int], n: int) -> int:
    """Latent frames the encoder makes of ``n`` samples (a rate-1 block adds one frame)."""
    for r in rates:
        n = (n + 2 * math.ceil(r / 2) - 2 * r) // r + 1
    return n


def _capped_rates(draw, choices, n_blocks, cap):
    """Up to ``n_blocks`` rates whose product stays within ``cap`` (fewer where none fits)."""
    rates, hop = [], 1
    for _ in range(n_blocks):
        fits = [r for r in choices if hop * r <= cap]
        if not fits:
            break
        rates.append(draw(st.sampled_from(fits)))
        hop *= rates[-1]
    return rates


@st.composite
def small_configs(draw, max_hop: int = 40, max_decoder_hop: int = 40) -> dict:
    """A tiny valid SNAC configuration.

    Encoder rates come from {1..5} (rate 1 makes the latent one frame longer; where the
    offline model then cannot quantise, all strides are set to 1, the only way it works),
    decoder rates from {2..5} (a rate-1 transposed conv with ``output_padding = 1`` is
    rejected by PyTorch itself, offline as well).
    """
    window = draw(st.sampled_from([None, None, 2, 3, 4]))
    encoder_rates = _capped_rates(draw, (1, 2, 3, 4, 5), draw(st.integers(1, 4)), max_hop)
    decoder_rates = _capped_rates(draw, (2, 3, 4, 5), draw(st.integers(1, 4)), max_decoder_hop)
    n_enc, n_dec = len(encoder_rates), len(decoder_rates)
    if window is None:
        encoder_dim = draw(st.sampled_from([1, 2, 4]))
        decoder_dim = 2**n_dec * draw(st.sampled_from([1, 2]))
    else:  # attention heads are 64 channels wide
        encoder_dim = 64 // 2**n_enc
        decoder_dim = draw(st.sampled_from([64, 128]))
    s0 = draw(st.sampled_from([1, 2, 3, 4, 6]))
    divisors = [d for d in range(1, s0 + 1) if s0 % d == 0]
    n_levels = draw(st.integers(2, 5))
    strides = [s0] + [draw(st.sampled_from(divisors)) for _ in range(n_levels - 1)]
    hop = math.prod(encoder_rates)
    pad_multiple = hop * math.lcm(s0, window or 1)
    if any(latent_length(encoder_rates, k * pad_multiple) % s0 for k in (1, 2, 3)):
        strides = [1] * n_levels
    return dict(
        sampling_rate=8000,
        encoder_dim=encoder_dim,
        encoder_rates=encoder_rates,
        decoder_dim=decoder_dim,
        decoder_rates=decoder_rates,
        attn_window_size=window,
        codebook_size=draw(st.sampled_from([4, 16, 64])),
        codebook_dim=draw(st.sampled_from([2, 4, 8])),
        vq_strides=strides,
        noise=draw(st.booleans()),
        depthwise=draw(st.booleans()),
    )


# A few fixed small configurations for the deterministic tests.
FIXED_CONFIGS: dict[str, dict] = {
    # odd rates (output_padding 1), attention window 3, 3 levels with an odd coarse stride
    "odd_attn": dict(
        sampling_rate=16000,
        encoder_dim=16,
        encoder_rates=[3, 5],
        decoder_dim=64,
        decoder_rates=[5, 3],
        attn_window_size=3,
        codebook_size=64,
        codebook_dim=4,
        vq_strides=[3, 3, 1],
        noise=True,
        depthwise=True,
    ),
    # no attention, 4 levels, full convs
    "plain": dict(
        sampling_rate=8000,
        encoder_dim=4,
        encoder_rates=[2, 4, 3],
        decoder_dim=32,
        decoder_rates=[4, 3, 2],
        attn_window_size=None,
        codebook_size=32,
        codebook_dim=4,
        vq_strides=[4, 2, 1, 1],
        noise=True,
        depthwise=False,
    ),
    # 5 levels, window 2, coarse stride 6
    "deep": dict(
        sampling_rate=12000,
        encoder_dim=8,
        encoder_rates=[2, 3, 2],
        decoder_dim=128,
        decoder_rates=[3, 2, 2],
        attn_window_size=4,
        codebook_size=128,
        codebook_dim=8,
        vq_strides=[6, 3, 2, 1, 1],
        noise=True,
        depthwise=True,
    ),
}


def signal(batch: int, length: int, dtype: torch.dtype = torch.float64, seed: int = 0) -> torch.Tensor:
    """``[batch, 1, length]``: a sum of sinusoids plus noise, within about (-0.9, 0.9)."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(length, dtype=torch.float64)
    f = 0.002 + 0.05 * torch.rand(batch, 3, 1, generator=gen, dtype=torch.float64)
    x = (0.25 * torch.sin(2 * math.pi * f * t)).sum(1, keepdim=True)
    x = x + 0.05 * torch.randn(batch, 1, length, generator=gen, dtype=torch.float64)
    return x.to(dtype)


def random_codes(model: SNAC, batch: int, n_ticks: int, seed: int = 0) -> list[torch.Tensor]:
    """Uniform random codes for ``n_ticks`` ticks (level i: ``ceil(n_ticks / s_i)`` codes)."""
    gen = torch.Generator().manual_seed(seed)
    return [
        torch.randint(0, model.codebook_size, (batch, -(-n_ticks // s)), generator=gen)
        for s in model.vq_strides
    ]


# ---------------------------------------------------------------------------- chunkings
def finish_chunks(pieces: Sequence[int], n: int, tail: int | None = None) -> list[int]:
    """Cut ``pieces`` at a total of ``n`` and cover the remainder (in pieces of ``tail``)."""
    out, total = [], 0
    for p in pieces:
        p = min(p, n - total)
        out.append(p)
        total += p
    rest = n - total
    step = tail or rest
    while rest > 0:
        out.append(min(step, rest))
        rest -= out[-1]
    return out


@st.composite
def sample_chunks(draw, n: int, frame: int, window: int | None = None, max_pieces: int = 30) -> list[int]:
    """Chunk sizes summing to ``n``: one big chunk, one-sample chunks, or a random mix of
    empty, tiny, frame-sized (± 1), window-sized (± 1, ``window`` in samples) and
    several-frame chunks that straddle frame and window boundaries."""
    window = window or frame
    mode = draw(st.sampled_from(["big", "ones", "mixed", "mixed", "mixed"]))
    if mode == "big":
        return draw(st.sampled_from([[n], [0, n, 0]]))
    if mode == "ones":
        k = draw(st.integers(0, min(n, 3 * frame + 2)))
        return finish_chunks([1] * k, n, draw(st.sampled_from([None, frame, 2 * frame + 1])))
    size = st.one_of(
        st.just(0),
        st.just(1),
        st.integers(2, max(2, frame + 1)),
        st.sampled_from([max(frame - 1, 1), frame, frame + 1, max(window - 1, 1), window, window + 1]),
        st.integers(frame, 3 * frame + 7),
    )
    pieces = draw(st.lists(size, max_size=max_pieces))
    return finish_chunks(pieces, n, draw(st.sampled_from([None, 1, frame, 2 * frame + 3])))


@st.composite
def tick_chunks(draw, n_ticks: int, s0: int, max_pieces: int = 20) -> list[int]:
    """Tick counts summing to ``n_ticks`` (0-tick pushes, single ticks, partial and whole
    coarse frames, or everything at once)."""
    if draw(st.integers(0, 5)) == 0:
        return [n_ticks]
    size = st.one_of(st.just(0), st.just(1), st.integers(1, 3 * s0 + 2), st.just(s0))
    pieces = draw(st.lists(size, max_size=max_pieces))
    return finish_chunks(pieces, n_ticks, draw(st.sampled_from([None, 1, s0])))


def bounds(sizes: Sequence[int]) -> list[tuple[int, int]]:
    """``[(start, end), ...]`` of consecutive chunks."""
    out, t = [], 0
    for s in sizes:
        out.append((t, t + s))
        t += s
    return out


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def split_codes(
    codes: Sequence[torch.Tensor], strides: Sequence[int], t0: int, t1: int
) -> list[torch.Tensor]:
    """The tokens that arrive with ticks ``t0 .. t1-1``: level i carries tokens
    ``ceil(t0/s_i) .. ceil(t1/s_i)-1``."""
    return [c[:, ceil_div(t0, s) : ceil_div(t1, s)] for c, s in zip(codes, strides, strict=True)]


# ---------------------------------------------------------------------------- driving streams
def stream_encode(enc, x: torch.Tensor, sizes: Sequence[int]) -> list[torch.Tensor]:
    """Push ``x`` in chunks of ``sizes``, flush, and join. Checks the type and shape of every
    push's result: ``n_codebooks`` LongTensors ``[B, k_0 * s_0 / s_i]`` (whole coarse frames)."""
    model = enc.model
    strides = model.vq_strides
    parts = []
    for a, b in bounds(sizes):
        parts.append(enc.push(x[..., a:b]))
    parts.append(enc.flush())
    for p in parts:
        assert isinstance(p, list) and len(p) == model.n_codebooks
        k0 = p[0].shape[-1]
        for c, s in zip(p, strides, strict=True):
            assert c.dtype == torch.long
            assert c.shape == (x.shape[0], k0 * strides[0] // s)
    return [torch.cat([p[i] for p in parts], dim=-1) for i in range(model.n_codebooks)]


def stream_decode(dec, codes: Sequence[torch.Tensor], tick_sizes: Sequence[int]) -> torch.Tensor:
    """Push ``codes`` in pieces of ``tick_sizes`` ticks (ceil rule), flush, and join."""
    model = dec.model
    parts = []
    for t0, t1 in bounds(tick_sizes):
        y = dec.push(split_codes(codes, model.vq_strides, t0, t1))
        assert y.dtype == model.dtype and y.ndim == 3 and y.shape[:2] == (dec.batch_size, 1)
        parts.append(y)
    parts.append(dec.flush())
    return torch.cat(parts, dim=-1)


def assert_codes_equal(got: Sequence[torch.Tensor], want: Sequence[torch.Tensor]) -> None:
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        assert a.shape == b.shape, f"level {i}: shape {tuple(a.shape)} != offline {tuple(b.shape)}"
        assert torch.equal(a, b), f"level {i}: {(a != b).sum().item()} of {b.numel()} codes differ"


# ---------------------------------------------------------------------------- state size
def state_tensors(obj, seen: set | None = None):
    """Yield every tensor reachable from a stream state object: dataclass fields, lists,
    tuples, dicts, and the attributes of snac objects such as a ``NoiseSource`` (its cache)."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        yield obj
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            yield from state_tensors(getattr(obj, f.name), seen)
    elif isinstance(obj, list | tuple):
        for v in obj:
            yield from state_tensors(v, seen)
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from state_tensors(v, seen)
    elif type(obj).__module__.startswith(("snac_model", "snac_stream")) and hasattr(obj, "__dict__"):
        for v in vars(obj).values():
            yield from state_tensors(v, seen)


def state_size(*objs) -> tuple[int, int, int]:
    """(elements, bytes, storage bytes) of all distinct tensors reachable from the given state
    objects. Storage bytes count each underlying buffer once, in full: a small view that
    keeps a large buffer alive shows there."""
    seen: set = set()
    tensors = [t for o in objs for t in state_tensors(o, seen)]
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return (
        sum(t.numel() for t in tensors),
        sum(t.numel() * t.element_size() for t in tensors),
        sum(storages.values()),
    )

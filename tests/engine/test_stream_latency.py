"""Algorithmic latency: analytic (``snac_stream.engine.latency``) == empirical probes == the stream.

Three views of the same number must agree:

1. analytic: each stream operator's ``need`` composed through the network
   (``_Needs(model).encoder_samples`` / ``.decoder_ticks``, and the worst case over the
   frame phase, ``enc.latency_samples`` / ``dec.latency_samples``);
2. empirical: perturb the offline model's input after position P and find the first
   output that changes (``probe_encoder_need`` / ``probe_decoder_first_changed``);
3. the implementation: a StreamingEncoder fed exactly ``need - 1`` samples has not yet
   emitted the block, one more sample and it has; a StreamingDecoder releases, after each
   tick, exactly the samples whose analytic need is met (no later, no earlier).

Probes run in float64: in float32 the outermost taps of the receptive field can round
away, and the probe then reports a dependence 1-5 samples late (seen on the 24 kHz decoder).
The 32 kHz encoder probe is too slow for this file; its analytic need goes through the same
operators as the small attention config, which is probed here.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from streaming_helpers import FIXED_CONFIGS, build_model, random_codes, signal, split_codes

from snac_model import random_model
from snac_stream import StreamingDecoder, StreamingEncoder, decoder_latency, encoder_latency
from snac_stream.engine.latency import (
    _Needs,
    probe_decoder_first_changed,
    probe_decoder_latency,
    probe_encoder_latency,
    probe_encoder_need,
)


@pytest.fixture(scope="module")
def models():
    cache: dict[str, object] = {}

    def get(name: str):
        if name not in cache:
            if name == "24khz":
                cache[name] = random_model("24khz").double()
            else:
                cache[name] = build_model(FIXED_CONFIGS[name], torch.float64, seed=1)
        return cache[name]

    return get


_probe_cache: dict[tuple, int] = {}


def encoder_probe(model, b: int) -> int:
    """``probe_encoder_need``, cached (the 24 kHz probe takes several seconds)."""
    key = (id(model), "enc", b)
    if key not in _probe_cache:
        _probe_cache[key] = probe_encoder_need(model, b)
    return _probe_cache[key]


def decoder_probe(model, q: int) -> int:
    """``probe_decoder_first_changed`` on a signal just long enough (cached)."""
    key = (id(model), "dec", q)
    if key not in _probe_cache:
        frames = (q + 2 * period_ticks(model)) // model.vq_strides[0] + 3
        _probe_cache[key] = probe_decoder_first_changed(model, q, n_frames=frames)
    return _probe_cache[key]


def period_ticks(model) -> int:
    return math.lcm(model.vq_strides[0], model.attn_window_size or 1)


def first_needing(needs: _Needs, model, q: int) -> int:
    """Analytic: the first output sample whose release needs more than ``q`` ticks."""
    n = np.arange(0, (q + 2) * model.decoder_hop)
    ticks = needs.decoder_ticks(n)
    assert np.all(np.diff(ticks) >= 0)
    return int(n[ticks > q][0])


def steady_ticks(model) -> range:
    """One period of ticks far enough from the start that no output is clamped to sample 0."""
    lookahead = decoder_latency(model).samples // model.decoder_hop + 2
    period = period_ticks(model)
    start = math.ceil(lookahead / period) * period + period
    return range(start, start + period)


# ============================================================================ analytic == probe
ENCODER_BLOCKS = {"24khz": [1], "odd_attn": [0, 1, 2, 3, 4, 5], "plain": [0, 1, 2, 3]}


@pytest.mark.parametrize("name", sorted(ENCODER_BLOCKS))
def test_encoder_need_matches_probe(models, name):
    model = models(name)
    needs = _Needs(model)
    for b in ENCODER_BLOCKS[name]:
        analytic = int(needs.encoder_samples(np.array([b]))[0])
        assert analytic == encoder_probe(model, b), f"block {b}"


@pytest.mark.parametrize("name", ["24khz", "odd_attn", "plain"])
def test_encoder_latency_matches_probe(models, name):
    """``latency_samples`` is the worst case over a period of frame phases of the probed need."""
    model = models(name)
    enc = StreamingEncoder(model)
    assert enc.latency_samples == encoder_latency(model).samples
    period_blocks = period_ticks(model) // model.vq_strides[0]
    # steady blocks (the 24 kHz period is one block; its probe is the costly one)
    blocks = [1] if name == "24khz" else range(2 * period_blocks, 3 * period_blocks)
    worst = max(encoder_probe(model, b) - b * model.frame_size - 1 for b in blocks)
    assert enc.latency_samples == worst
    if name == "24khz":
        print(f"24 kHz encoder latency: {enc.latency_samples} samples ({encoder_latency(model).ms:.1f} ms)")


DECODER_TICKS = {"24khz": [0, 5, 9, 10], "odd_attn": [0, 7, 14, 15, 16, 17, 18], "plain": [0, 3, 6, 7, 8]}


@pytest.mark.parametrize("name", sorted(DECODER_TICKS))
def test_decoder_first_changed_matches_probe(models, name):
    """Early ticks (where the first changed sample is clamped at 0) and one steady period."""
    model = models(name)
    needs = _Needs(model)
    for q in [*DECODER_TICKS[name], *steady_ticks(model)]:
        assert first_needing(needs, model, q) == decoder_probe(model, q), f"tick {q}"


@pytest.mark.parametrize("name", ["24khz", "odd_attn", "plain"])
def test_decoder_latency_matches_probe(models, name):
    model = models(name)
    dec = StreamingDecoder(model)
    assert dec.latency_samples == decoder_latency(model).samples
    hop = model.decoder_hop
    worst = max((q + 1) * hop - decoder_probe(model, q) - 1 for q in steady_ticks(model))
    assert dec.latency_samples == worst
    if name == "24khz":
        print(f"24 kHz decoder latency: {dec.latency_samples} samples ({decoder_latency(model).ms:.1f} ms)")


@pytest.mark.parametrize("name", ["odd_attn", "plain"])
def test_probe_latency_helpers_agree_with_analytic(models, name):
    """``probe_encoder_latency`` / ``probe_decoder_latency`` (the library's own probe summaries)
    must measure in steady state, past the start-up region, and agree with the analytic values."""
    model = models(name)
    assert probe_encoder_latency(model).samples == encoder_latency(model).samples
    assert probe_decoder_latency(model).samples == decoder_latency(model).samples


# ============================================================================ the stream releases on time
@pytest.mark.parametrize(
    "name,blocks", [("24khz", [0, 1, 3]), ("odd_attn", [0, 1, 2, 5, 6]), ("plain", [0, 2, 3])]
)
def test_encoder_emits_block_exactly_at_need(models, name, blocks):
    model = models(name)
    needs = _Needs(model)
    need = [int(v) for v in needs.encoder_samples(np.array(blocks))]
    x = signal(1, need[-1] + 1, torch.float64, seed=2)
    enc = StreamingEncoder(model)
    pushed = emitted = 0
    for b, n in zip(blocks, need, strict=True):
        assert n >= 1
        emitted += enc.push(x[..., pushed : n - 1])[0].shape[-1]
        pushed = n - 1
        assert emitted == b, (
            f"{n - 1} samples in: {emitted} coarse blocks out, expected {b} (block {b} early)"
        )
        emitted += enc.push(x[..., pushed:n])[0].shape[-1]
        pushed = n
        assert emitted == b + 1, (
            f"{n} samples in: {emitted} coarse blocks out, expected {b + 1} (block {b} late)"
        )


@pytest.mark.parametrize("name", ["24khz", "odd_attn", "plain"])
def test_decoder_releases_exactly_at_need(models, name):
    """Pushing one tick at a time, the samples released so far are exactly those whose
    analytic tick need is met."""
    model = models(name)
    needs = _Needs(model)
    hop = model.decoder_hop
    n_ticks = steady_ticks(model).stop + period_ticks(model)
    tick_need = needs.decoder_ticks(np.arange(0, (n_ticks + 1) * hop))
    codes = random_codes(model, 1, n_ticks, seed=3)
    dec = StreamingDecoder(model, 1, seed=0)
    released = 0
    counts = []
    for t in range(n_ticks):
        released += dec.push(split_codes(codes, model.vq_strides, t, t + 1)).shape[-1]
        counts.append(released)
        assert released == int((tick_need <= t + 1).sum()), f"after {t + 1} ticks"
    assert 0 == counts[0] < counts[-1]  # the test went past the start-up lookahead
    assert released + dec.flush().shape[-1] == n_ticks * hop

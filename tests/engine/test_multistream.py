"""Batched multi-stream stepping: every stream exact against its own single-stream encoder /
decoder (float64), whatever the join/leave schedule, masks and chunk sizes; steady-state
streams really share one forward."""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from streaming_helpers import (
    assert_codes_equal,
    build_model,
    examples,
    random_codes,
    signal,
    small_configs,
    split_codes,
)

from snac_model import random_model
from snac_stream import StreamingDecoder, StreamingEncoder
from snac_stream.engine.multistream import (
    MultiStreamDecoder,
    MultiStreamEncoder,
    signature,
    split_state,
    stack_states,
)


def _schedule(rng: random.Random, n_streams: int, pieces: list[int]) -> list[dict[int, int]]:
    """Per step, ``{stream: chunk size}``: streams start at random steps, skip steps at random
    (the execution mask) and push chunk sizes drawn from ``pieces``."""
    start = [rng.randint(0, 3) for _ in range(n_streams)]
    steps = []
    for t in range(14):
        steps.append(
            {i: rng.choice(pieces) for i in range(n_streams) if t >= start[i] and rng.random() < 0.8}
        )
    return steps


def run_encoders(model, audio: list[torch.Tensor], steps, close_early: set[int] = frozenset()):
    """Drive a MultiStreamEncoder and one StreamingEncoder per stream with the same chunks."""
    multi, singles = MultiStreamEncoder(model, max_streams=len(audio)), {}
    got = {i: [] for i in range(len(audio))}
    want = {i: [] for i in range(len(audio))}
    pos, closed = [0] * len(audio), set()
    for t, step in enumerate(steps):
        chunks = {}
        for i, n in step.items():
            if i in closed:
                continue
            if i not in singles:
                multi.open(i)
                singles[i] = StreamingEncoder(model)
            chunks[i] = audio[i][..., pos[i] : pos[i] + n]
            pos[i] += n
        out = multi.step(chunks)
        assert set(out) == set(chunks)
        for i, x in chunks.items():
            got[i].append(out[i])
            want[i].append(singles[i].push(x))
        for i in close_early:
            if t == 6 and i in multi:
                multi.close(i)
                closed.add(i)
    for i in singles:
        if i in multi:
            got[i].append(multi.flush(i))
            want[i].append(singles[i].flush())
        else:
            want[i] = want[i][: len(got[i])]
    assert len(multi) == 0
    join = lambda parts: [torch.cat([p[k] for p in parts], -1) for k in range(model.n_codebooks)]  # noqa: E731
    return {i: (join(got[i]), join(want[i])) for i in singles if got[i]}, multi.stats


def run_decoders(model, codes: list[list[torch.Tensor]], steps, seeds, n_ticks: int):
    multi, singles = MultiStreamDecoder(model, max_streams=len(codes)), {}
    got = {i: [] for i in range(len(codes))}
    want = {i: [] for i in range(len(codes))}
    tick = [0] * len(codes)
    for step in steps:
        chunks = {}
        for i, n in step.items():
            if i not in singles:
                multi.open(i, seed=seeds[i])
                singles[i] = StreamingDecoder(model, seed=seeds[i])
            t1 = min(tick[i] + n, n_ticks)
            chunks[i] = split_codes(codes[i], model.vq_strides, tick[i], t1)
            tick[i] = t1
        out = multi.step(chunks)
        for i, c in chunks.items():
            got[i].append(out[i])
            want[i].append(singles[i].push(c))
            tick[i] = multi.tick(i)  # a token may cover more ticks than were asked for
            assert tick[i] == singles[i].ticks
    for i in singles:
        got[i].append(multi.flush(i))
        want[i].append(singles[i].flush())
    return {i: (torch.cat(got[i], -1), torch.cat(want[i], -1)) for i in singles}, multi.stats


@settings(max_examples=examples(12), deadline=None)
@given(data=st.data(), seed=st.integers(0, 2**16))
def test_random_schedules_are_exact_per_stream(data, seed):
    cfg = data.draw(small_configs())
    model = build_model(cfg)
    rng = random.Random(seed)
    n = 4
    frame, s0 = model.frame_size, model.vq_strides[0]
    audio = [signal(1, 6 * frame + 7, seed=seed + i) for i in range(n)]
    steps = _schedule(rng, n, [0, 1, frame, frame, 2 * frame + 1, frame // 2 + 1])
    results, _ = run_encoders(model, audio, steps, close_early={n - 1})
    for i, (got, want) in results.items():
        assert_codes_equal(got, want)
        if i != n - 1:  # a stream that was flushed: equal to offline too
            consumed = sum(s.get(i, 0) for s in steps)
            assert_codes_equal(got, model.encode(audio[i][..., :consumed]))

    codes = [random_codes(model, 1, 6 * s0 + 1, seed=seed + i) for i in range(n)]
    steps = _schedule(rng, n, [0, 1, s0, s0, 2 * s0 + 1, 3])
    seeds = [seed + 10 * i for i in range(n)]
    results, _ = run_decoders(model, codes, steps, seeds, 6 * s0 + 1)
    for got, want in results.values():
        torch.testing.assert_close(got, want, rtol=0, atol=1e-9)


def test_published_24khz_join_leave_exact_and_batched():
    model = random_model("24khz").double()
    frame, s0, n = model.frame_size, model.vq_strides[0], 5
    audio = [signal(1, 8 * frame, seed=i) for i in range(n)]
    steps = [{i: frame for i in range(n) if t >= i // 2} for t in range(8)]  # staggered joins
    results, stats = run_encoders(model, audio, steps)
    for i, (got, want) in results.items():
        assert_codes_equal(got, want)
        assert_codes_equal(got, model.encode(audio[i][..., : sum(s.get(i, 0) for s in steps)]))
    assert max(stats.group_sizes) == n  # late joiners merged once in phase

    codes = [random_codes(model, 1, 8 * s0, seed=i) for i in range(n)]
    steps = [{i: s0 for i in range(n) if t >= i // 2 and not (i == 2 and t == 4)} for t in range(9)]
    results, stats = run_decoders(model, codes, steps, list(range(100, 100 + n)), 8 * s0)
    for i, (got, want) in results.items():
        torch.testing.assert_close(got, want, rtol=0, atol=1e-9)
        ticks = sum(s.get(i, 0) for s in steps)
        offline = model.decode(split_codes(codes[i], model.vq_strides, 0, ticks), seed=100 + i)
        torch.testing.assert_close(got, offline, rtol=0, atol=1e-9)
    assert max(stats.group_sizes) >= 4


def test_eight_steady_streams_share_one_forward():
    model = random_model("24khz")
    s0 = model.vq_strides[0]
    dec = MultiStreamDecoder(model, max_streams=8)
    for i in range(8):
        dec.open(i, seed=i)
    codes = random_codes(model, 1, 10 * s0, seed=1)
    for t in range(10):
        out = dec.step({i: split_codes(codes, model.vq_strides, t * s0, (t + 1) * s0) for i in range(8)})
        assert len(out) == 8
    assert dec.stats.forwards == 10 and dec.stats.group_sizes == {8: 10}
    assert dec.stats.restacks == 1  # stacked once, then the pack persists
    assert not torch.equal(out[0], out[1])  # same codes, different noise seeds

    enc = MultiStreamEncoder(model, max_streams=8)
    for i in range(8):
        enc.open(i)
    x = signal(1, 6 * model.frame_size, torch.float32, seed=2)
    for t in range(6):
        enc.step({i: x[..., t * model.frame_size : (t + 1) * model.frame_size] for i in range(8)})
    assert enc.stats.group_sizes == {8: 6} and enc.stats.restacks == 1


def test_max_batch_splits_groups():
    model = random_model("24khz")
    dec = MultiStreamDecoder(model, max_streams=5, max_batch=2)
    for i in range(5):
        dec.open(i)
    codes = random_codes(model, 1, 4, seed=1)
    dec.step({i: codes for i in range(5)})
    assert dec.stats.group_sizes == {2: 2, 1: 1}


def test_state_stack_split_roundtrip():
    model = random_model("24khz").double()
    dec = StreamingDecoder(model, seed=1)
    dec.push(random_codes(model, 1, 4, seed=3))
    other = StreamingDecoder(model, seed=2)
    other.push(random_codes(model, 1, 4, seed=4))
    assert signature(dec.state) == signature(other.state)
    stacked = stack_states([dec.state, other.state])
    assert signature(stacked) == signature(dec.state)  # what packs are matched by
    a, b = split_state(stacked, 2)
    for x, y in ((a, dec.state), (b, other.state)):
        assert signature(x) == signature(y)


def test_errors_leave_streams_unchanged():
    model = random_model("24khz")
    dec = MultiStreamDecoder(model, max_streams=2)
    dec.open("a", seed=1)
    with pytest.raises(KeyError):
        dec.open("a")
    dec.open("b")
    with pytest.raises(RuntimeError, match="max_streams"):
        dec.open("c")
    with pytest.raises(KeyError):
        dec.step({"zzz": random_codes(model, 1, 4)})
    bad = random_codes(model, 1, 4)
    bad[0] = bad[0] + model.codebook_size
    with pytest.raises(ValueError):
        dec.step({"a": random_codes(model, 1, 4), "b": bad})
    assert dec.tick("a") == 0 and dec.tick("b") == 0  # validation happens before any state changes
    assert dec.step({"a": [c[0] for c in random_codes(model, 1, 4)]})["a"].shape[:2] == (1, 1)  # 1-D codes
    dec.close("b")
    assert "b" not in dec and len(dec) == 1
    enc = MultiStreamEncoder(model)
    enc.open(0)
    assert [c.shape for c in enc.flush(0)] == [(1, 0)] * model.n_codebooks  # empty stream: no codes

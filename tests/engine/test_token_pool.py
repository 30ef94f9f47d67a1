"""TokenPool: token streams as sessions on shared batched engines; a session without a hop
ready is left untouched, steps come per hop, outputs equal each stream's offline decode."""

from __future__ import annotations

import asyncio
import concurrent.futures
from functools import cache

import numpy as np
import pytest
import torch
from conftest import run_async
from streaming_helpers import FIXED_CONFIGS, build_model, random_codes

from snac_stream.engine.token_pool import TokenPool
from snac_stream.engine.tokens import codes_to_tokens


@cache
def model():
    return build_model(FIXED_CONFIGS["plain"], torch.float64, seed=2)  # strides 4,2,1,1: 11 tokens a frame


def flat(codes) -> list[int]:
    return codes_to_tokens(codes, model().vq_strides)[0].tolist()


def offline(codes, seed: int) -> np.ndarray:
    return model().decode(codes, seed=seed).reshape(-1).numpy()


def test_a_session_without_a_hop_ready_is_untouched():
    pool = TokenPool(model(), workers=1)
    a, b = pool.open(seed=0), pool.open(seed=1)
    tokens_a, tokens_b = flat(random_codes(model(), 1, 8, seed=1)), flat(random_codes(model(), 1, 8, seed=2))
    a.push(tokens_a[:11])  # one whole frame: a step
    assert b.push(tokens_b[:10]).size == 0  # 10 of 11 tokens: nothing runs
    assert pool.stats.steps == 1 and pool.stats.stream_steps == 1
    assert a.engine.tick(a.id) == 4 and b.engine.tick(b.id) == 0
    out_b = [b.push(tokens_b[10:]), b.flush()]
    out_a = [a.push(tokens_a[11:]), a.flush()]
    np.testing.assert_allclose(
        np.concatenate(out_a), offline(random_codes(model(), 1, 8, seed=1), 0), atol=1e-9
    )
    np.testing.assert_allclose(
        np.concatenate(out_b), offline(random_codes(model(), 1, 8, seed=2), 1), atol=1e-9
    )
    assert pool.stats.sessions_open == 0


@pytest.mark.parametrize("hop_ticks, steps", [(None, 6), (1, 24), (8, 3)])
def test_one_step_per_hop_whatever_the_push_size(hop_ticks, steps):
    """Pushed one token at a time, the decoder steps once per hop (default: a coarse frame)."""
    pool = TokenPool(model(), workers=1, hop_ticks=hop_ticks)
    codes = random_codes(model(), 1, 24, seed=3)
    session = pool.open(seed=4)
    parts = [session.push([t]) for t in flat(codes)]
    assert pool.stats.steps == steps
    parts.append(session.flush())
    np.testing.assert_allclose(np.concatenate(parts), offline(codes, 4), atol=1e-9, rtol=0)


def test_sessions_start_and_end_at_any_time_from_threads():
    pool = TokenPool(model(), workers=2, gather_ms=5)
    streams = [random_codes(model(), 1, 4 * (3 + k % 4), seed=20 + k) for k in range(8)]

    def run(k: int) -> np.ndarray:
        rng = np.random.default_rng(k)
        tokens = flat(streams[k])
        session = pool.open(seed=k)
        parts, pos = [], 0
        while pos < len(tokens):
            n = int(rng.integers(0, 30))
            parts.append(session.push(tokens[pos : pos + n]))
            pos += n
        parts.append(session.flush())
        session.close()
        return np.concatenate(parts)

    with concurrent.futures.ThreadPoolExecutor(8) as threads:
        outputs = list(threads.map(run, range(8)))
    for k, got in enumerate(outputs):
        np.testing.assert_allclose(got, offline(streams[k], k), atol=1e-9, rtol=0)
    stats = pool.stats
    assert stats.sessions_open == 0 and stats.sessions_opened == 8 and stats.flushes == 8
    assert [len(b.engine) for b in pool.shards.batchers] == [0, 0]


@run_async
async def test_restart_starts_a_fresh_segment():
    pool = TokenPool(model(), workers=1)
    first, second = random_codes(model(), 1, 12, seed=5), random_codes(model(), 1, 8, seed=6)
    session = pool.open(seed=2)
    head = await session.apush(flat(first))
    tail = await session.arestart()
    rest = [await session.apush(flat(second)), await session.aflush()]
    np.testing.assert_allclose(np.concatenate([head, tail]), offline(first, 2), atol=1e-9, rtol=0)
    np.testing.assert_allclose(np.concatenate(rest), offline(second, 2), atol=1e-9, rtol=0)


@run_async
async def test_one_call_at_a_time_and_no_use_after_the_end():
    pool = TokenPool(model(), workers=1)
    session = pool.open()
    tokens = flat(random_codes(model(), 1, 40, seed=7))
    first = asyncio.ensure_future(session.apush(tokens[:44]))
    await asyncio.sleep(0)  # the first push is in flight
    with pytest.raises(RuntimeError, match="one call at a time"):
        await session.apush(tokens[44:55])
    await first
    await session.aflush()
    with pytest.raises(RuntimeError, match="flushed or closed"):
        session.push(tokens[:11])
    session.close()
    session.close()  # twice is fine


def test_bad_tokens_and_full_pools_are_clear_errors():
    pool = TokenPool(model(), workers=1, max_streams=2)
    session = pool.open()
    with pytest.raises(ValueError, match=r"token 32 is outside \[0, 32\)"):
        session.push([1, 2, 32])
    assert session.push([1, 2]).size == 0  # the stream goes on
    with pytest.raises(ValueError, match="hop_ticks"):
        pool.open(hop_ticks=0)
    pool.open()
    with pytest.raises(RuntimeError, match="max_streams=2"):
        pool.open()

"""Endpoint sessions on a shared StepBatcher: concurrent streams are stepped together and
each stream's output equals its own single-stream decoder / encoder."""

from __future__ import annotations

import concurrent.futures

import numpy as np
import pytest
import torch

from snac_model import SNAC
from snac_stream import StreamingDecoder, StreamingEncoder
from snac_stream.engine.batcher import BatchedDecodeSession, BatchedEncodeSession, BatcherPool, StepBatcher
from snac_stream.engine.multistream import MultiStreamDecoder, MultiStreamEncoder

CONFIG = dict(
    sampling_rate=16000,
    encoder_dim=8,
    encoder_rates=[2, 4],
    decoder_dim=64,
    decoder_rates=[4, 2],
    attn_window_size=None,
    codebook_size=256,
    codebook_dim=4,
    vq_strides=[2, 1],
    noise=True,
    depthwise=True,
)


def _model() -> SNAC:
    torch.manual_seed(0)
    return SNAC(**CONFIG).double().eval()


def test_concurrent_decode_sessions_are_batched_and_exact() -> None:
    model = _model()
    batcher = StepBatcher(MultiStreamDecoder(model, 8), gather_ms=50)
    gen = torch.Generator().manual_seed(1)
    streams = [[torch.randint(0, 256, (1, 12 * r), generator=gen) for r in (1, 2)] for _ in range(4)]

    def run(k: int) -> np.ndarray:
        session = BatchedDecodeSession(batcher, seed=k)
        parts = [
            session.push([c[:, f * r : (f + 1) * r] for c, r in zip(streams[k], (1, 2), strict=True)])
            for f in range(12)
        ]
        parts.append(session.flush())
        session.close()
        return np.concatenate(parts)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        outputs = list(pool.map(run, range(4)))
    for k, got in enumerate(outputs):
        expected = StreamingDecoder(model, seed=k).decode([streams[k]]).reshape(-1).float().numpy()
        np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)
    assert batcher.items == 4 * 12
    assert batcher.steps < batcher.items  # several streams shared a step


def test_encode_sessions_match_single_stream_encoder() -> None:
    model = _model()
    batcher = StepBatcher(MultiStreamEncoder(model, 8), gather_ms=20)
    audio = [np.random.default_rng(k).standard_normal(700).astype(np.float32) * 0.3 for k in range(3)]

    def run(k: int) -> list[torch.Tensor]:
        session = BatchedEncodeSession(batcher)
        codes = [session.push(audio[k][a : a + 100]) for a in range(0, 700, 100)] + [session.flush()]
        return [torch.cat([c[i] for c in codes]) for i in range(2)]

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        outputs = list(pool.map(run, range(3)))
    for k, got in enumerate(outputs):
        x = torch.from_numpy(audio[k]).double().view(1, 1, -1)
        expected = StreamingEncoder(model).encode([x])
        for a, b in zip(got, expected, strict=True):
            assert torch.equal(a, b[0])


def test_pool_spreads_streams_over_shards_sharing_weights_and_stays_exact() -> None:
    model = _model()
    pool = BatcherPool(MultiStreamDecoder(model, 8), workers=2, gather_ms=20)
    engines = [b.engine for b in pool.batchers]
    assert engines[0].layers is engines[1].layers  # one operator chain (weights) for both shards
    gen = torch.Generator().manual_seed(2)
    streams = [[torch.randint(0, 256, (1, 8 * r), generator=gen) for r in (1, 2)] for _ in range(4)]
    sessions = [pool.open(lambda b, k=k: BatchedDecodeSession(b, seed=k)) for k in range(4)]
    assert pool.streams == [2, 2]
    assert {s.batcher for s in sessions} == set(pool.batchers)

    def run(k: int) -> np.ndarray:
        s = sessions[k]
        parts = [
            s.push([c[:, f * r : (f + 1) * r] for c, r in zip(streams[k], (1, 2), strict=True)])
            for f in range(8)
        ]
        return np.concatenate([*parts, s.flush()])

    with concurrent.futures.ThreadPoolExecutor(4) as threads:
        outputs = list(threads.map(run, range(4)))
    for k, got in enumerate(outputs):
        expected = StreamingDecoder(model, seed=k).decode([streams[k]]).reshape(-1).float().numpy()
        np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)
    assert pool.streams == [0, 0]  # flushed streams are closed
    assert all(b.items == 2 * 8 for b in pool.batchers)  # each shard stepped its own two streams
    # a new stream goes to the least-loaded shard
    first = pool.open(lambda b: BatchedDecodeSession(b, seed=9))
    assert pool.streams == [1, 0] and first.batcher is pool.batchers[0]
    assert pool.open(lambda b: BatchedDecodeSession(b, seed=9)).batcher is pool.batchers[1]


def test_pool_rejects_no_workers() -> None:
    with pytest.raises(ValueError, match="workers must be >= 1"):
        BatcherPool(MultiStreamDecoder(_model(), 2), workers=0)


def _decode_chunks(n: int, seed: int = 3) -> list[list[torch.Tensor]]:
    """``n`` one-frame chunks of random codes (levels of 1 and 2 codes)."""
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randint(0, 256, (1, r), generator=gen) for r in (1, 2)] for _ in range(n)]


def test_one_stream_flooding_a_full_queue_does_not_deadlock() -> None:
    """A stream may appear once per step: its other chunks wait in the worker, which never puts
    into its own (full) queue. The submitter blocks on the full queue and goes on as it drains."""
    model = _model()
    chunks = _decode_chunks(40)
    with StepBatcher(MultiStreamDecoder(model, 4), gather_ms=5, max_pending=3, submit_timeout=20) as batcher:
        batcher.engine.open(0, 0)
        with concurrent.futures.ThreadPoolExecutor(1) as submitter:  # submits without waiting for results
            futures = submitter.submit(lambda: [batcher.submit(0, c) for c in chunks]).result(timeout=60)
        got = np.concatenate([f.result(timeout=60).reshape(-1).float().numpy() for f in futures])
        assert batcher.steps == batcher.items == 40  # one chunk of the stream per step
    whole = [torch.cat([c[i] for c in chunks], dim=1) for i in range(2)]
    expected = StreamingDecoder(model, seed=0).push(whole).reshape(-1).float().numpy()
    assert got.size == expected.size > 0
    np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)


def test_close_stops_the_thread_and_fails_pending_and_new_work() -> None:
    batcher = StepBatcher(MultiStreamDecoder(_model(), 4), gather_ms=60_000)  # gathers for a minute
    batcher.engine.open(0, 0)
    batcher.engine.open(1, 0)
    first = batcher.submit(0, _decode_chunks(1)[0])  # taken into the batch being gathered
    pending = [batcher.submit(s, c) for s, c in zip((1, 0), _decode_chunks(2), strict=True)]
    assert batcher.thread.is_alive() and not first.done()
    batcher.close()
    assert not batcher.thread.is_alive()
    for future in (first, *pending):
        with pytest.raises(RuntimeError, match="StepBatcher is closed"):
            future.result(timeout=0)
    with pytest.raises(RuntimeError, match="StepBatcher is closed"):
        batcher.submit(0, _decode_chunks(1)[0])
    batcher.close()  # twice is fine


def test_pool_closes_as_a_context_manager_and_refuses_new_sessions() -> None:
    with BatcherPool(MultiStreamDecoder(_model(), 4), workers=2, gather_ms=1) as pool:
        session = pool.open(lambda b: BatchedDecodeSession(b, seed=0))
        assert sum(session.push(c).size for c in _decode_chunks(12)) > 0  # past the decoder's lookahead
        threads = [b.thread for b in pool.batchers]
        assert len(threads) == 2 and all(t.is_alive() for t in threads)
    assert not any(t.is_alive() for t in threads)
    with pytest.raises(RuntimeError, match="StepBatcher is closed"):
        session.push(_decode_chunks(1)[0])
    with pytest.raises(RuntimeError, match="BatcherPool is closed"):
        pool.open(lambda b: BatchedDecodeSession(b, seed=0))

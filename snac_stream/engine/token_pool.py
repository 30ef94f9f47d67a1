"""Many LM token streams at once: each request a session on shared, batched multi-stream engines.

::

    request A: await session.apush(tokens) ─┐  TokenTicks of the session (caller's thread, no model):
    request B: await session.apush(tokens) ─┤  a hop (default: one coarse frame) complete?
    request C: session.push(tokens) ────────┘     no  ─► returns at once, nothing runs
                                                  yes ─► StepBatcher (worker thread, one per shard):
                                                         one MultiStreamDecoder.step for every session
                                                         with a hop ready; the others are untouched

Inference never runs on the caller's thread: ``apush``/``aflush`` await the worker (the event
loop stays free), ``push``/``flush`` block on it. A session has at most one call in flight, so
a request that stops pushing (its reader stopped reading) holds only its own decoder state and
fewer than one hop of tokens: memory stays bounded whatever the other requests do. Sessions
start and end at any time; streams in the same phase (all pushing whole frames) step as one
batch (:mod:`snac_stream.engine.multistream`). Each session's audio equals
``model.decode(codes, seed=seed)`` of its own codes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from snac_model import SNAC

from .batcher import BatcherPool, StepBatcher
from .multistream import MultiStreamDecoder
from .token_decoder import TokenTicks, check_hop_ticks


class _HostDecoder(MultiStreamDecoder):
    """A MultiStreamDecoder whose outputs are 1-D host arrays (the device sync and copy happen on
    the worker thread, not the caller's), with the time spent stepping and flushing."""

    def __init__(self, model: SNAC, max_streams: int = 64, **options):
        super().__init__(model, max_streams, **options)
        self.compute_s = 0.0  #: seconds in step() and flush()
        self.compute_cpu_s = 0.0  #: CPU seconds of the calling thread in them (intra-op threads not counted)
        self.steps = self.flushes = 0

    @staticmethod
    def _host(audio: torch.Tensor) -> np.ndarray:
        return audio.detach().reshape(-1).cpu().numpy().copy()

    def _timed(self, fn):
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            return fn()
        finally:
            self.compute_s += time.perf_counter() - t0
            self.compute_cpu_s += time.thread_time() - c0

    def step(self, chunks: dict[Hashable, Sequence[torch.Tensor]]) -> dict[Hashable, np.ndarray]:
        self.steps += 1
        step = MultiStreamDecoder.step
        return self._timed(lambda: {k: self._host(v) for k, v in step(self, chunks).items()})

    def flush(self, stream_id: Hashable) -> np.ndarray:
        self.flushes += 1
        return self._timed(lambda: self._host(MultiStreamDecoder.flush(self, stream_id)))


@dataclass(frozen=True)
class TokenPoolStats:
    """A snapshot of a :class:`TokenPool` (all shards)."""

    sessions_open: int
    sessions_opened: int
    steps: int  #: engine steps (each: one batched forward per group of streams in phase)
    forwards: int  #: forwards of the decoder chain
    stream_steps: int  #: streams stepped, summed over forwards
    flushes: int
    compute_s: float  #: seconds the workers spent stepping and flushing
    compute_cpu_s: float  #: CPU seconds of the worker threads in them


class TokenPool:
    """Decode many token streams on ``workers`` shards (default: one per core) of a batched
    :class:`~snac_stream.engine.multistream.MultiStreamDecoder` of ``model``.

    ``max_streams``: open sessions per shard; ``max_batch``: streams per forward; ``gather_ms``:
    how long a worker waits for more ready sessions before stepping; ``hop_ticks``: the default
    step granularity of sessions (None: one coarse frame); ``lm_offset``: tokens are LM ids (see
    :class:`~snac_stream.engine.token_decoder.TokenTicks`). For one intra-op thread per shard, an
    application calls :func:`snac_stream.runtime.configure` first.
    """

    def __init__(
        self,
        model: SNAC,
        *,
        max_streams: int = 64,
        max_batch: int = 8,
        workers: int | None = None,
        gather_ms: float = 2.0,
        hop_ticks: int | None = None,
        lm_offset: int | None = None,
    ):
        self.model = model
        self.hop_ticks = check_hop_ticks(hop_ticks, model.vq_strides)
        self.lm_offset = lm_offset
        self.frame_samples = int(model.vq_strides[0] * model.decoder_hop)  #: output samples per coarse frame
        engine = _HostDecoder(model, max_streams, max_batch=max_batch)
        # a session has at most one chunk queued: the queue never fills, submit() never blocks
        self.shards = BatcherPool(engine, workers, gather_ms=gather_ms, max_pending=2 * max_streams + 8)
        self.flusher = concurrent.futures.ThreadPoolExecutor(
            len(self.shards.batchers), thread_name_prefix="snac-token-flush"
        )
        self._opened = 0
        self._lock = threading.Lock()

    def open(self, seed: int | None = 0, *, hop_ticks: int | None = None) -> TokenSession:
        """A new session (stream) on the least-loaded shard; ``seed`` keys its noise as
        ``model.decode(codes, seed=seed)``; ``hop_ticks`` overrides the pool's granularity."""
        session = self.shards.open(lambda batcher: TokenSession(self, batcher, seed, hop_ticks))
        with self._lock:
            self._opened += 1
        return session

    def close(self) -> None:
        """Stop the worker threads (steps still pending fail); open no more sessions."""
        self.shards.close()
        self.flusher.shutdown(wait=True)

    def __enter__(self) -> TokenPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def stats(self) -> TokenPoolStats:
        engines: list[_HostDecoder] = [b.engine for b in self.shards.batchers]
        return TokenPoolStats(
            sessions_open=sum(len(e) for e in engines),
            sessions_opened=self._opened,
            steps=sum(e.steps for e in engines),
            forwards=sum(e.stats.forwards for e in engines),
            stream_steps=sum(e.stats.stream_steps for e in engines),
            flushes=sum(e.flushes for e in engines),
            compute_s=sum(e.compute_s for e in engines),
            compute_cpu_s=sum(e.compute_cpu_s for e in engines),
        )


class TokenSession:
    """One stream of a :class:`TokenPool`: ``push``/``apush(tokens)`` -> newly final samples
    (1-D array, model dtype), ``flush``/``aflush()`` -> the tail (the stream ends), ``restart`` /
    ``arestart()`` -> the tail, then a fresh stream in the same session, ``close()``."""

    def __init__(self, pool: TokenPool, batcher: StepBatcher, seed: int | None, hop_ticks: int | None):
        self.pool, self.batcher, self.seed = pool, batcher, seed
        self.engine: _HostDecoder = batcher.engine
        self.gate = TokenTicks(
            pool.model, 1, pool.lm_offset, pool.hop_ticks if hop_ticks is None else hop_ticks
        )
        self.id = batcher.new_id()
        self.engine.open(self.id, seed)
        self.open = True
        self._busy: concurrent.futures.Future | None = None
        self._empty = torch.empty(0, dtype=pool.model.dtype).numpy()

    @property
    def ticks(self) -> int:
        """Ticks released to the decoder so far (this stream)."""
        return self.gate.ticks

    # -- blocking ---------------------------------------------------------------------------

    def push(self, tokens: torch.Tensor | Sequence[int]) -> np.ndarray:
        """Blocking: call it off the event loop (or use :meth:`apush`)."""
        codes, ticks = self._take(tokens)
        return self._wait(self._submit(codes)) if ticks else self._empty

    def flush(self) -> np.ndarray:
        codes, ticks = self._drain()
        head = self._wait(self._submit(codes)) if ticks else self._empty
        return np.concatenate((head, self._end()))

    def restart(self) -> np.ndarray:
        tail = self.flush()
        self._reopen()
        return tail

    # -- asyncio ----------------------------------------------------------------------------

    async def apush(self, tokens: torch.Tensor | Sequence[int]) -> np.ndarray:
        codes, ticks = self._take(tokens)
        return await self._await(self._submit(codes)) if ticks else self._empty

    async def aflush(self) -> np.ndarray:
        codes, ticks = self._drain()
        head = await self._await(self._submit(codes)) if ticks else self._empty
        return np.concatenate((head, await self._await(self._run(self._end))))

    async def arestart(self) -> np.ndarray:
        tail = await self.aflush()
        self._reopen()
        return tail

    # -- shared -----------------------------------------------------------------------------

    def close(self) -> None:
        """Release the stream (no flush); safe to call twice, and while a step is in flight
        (for a cancelled request): the stream is released when that step is done."""
        if self._busy is not None and not self._busy.done():
            self._busy.add_done_callback(lambda _: self._release())
        else:
            self._release()

    def _release(self) -> None:
        self.open = False
        if self.id in self.engine:
            self.engine.close(self.id)

    def _check_idle(self) -> None:
        if not self.open:
            raise RuntimeError("this session was flushed or closed; open a new one")
        if self._busy is not None and not self._busy.done():
            raise RuntimeError("one call at a time per session: await the previous push first")

    def _take(self, tokens) -> tuple[list[torch.Tensor], int]:
        self._check_idle()
        return self.gate.push(tokens)

    def _drain(self) -> tuple[list[torch.Tensor], int]:
        self._check_idle()
        return self.gate.drain()

    def _submit(self, codes: list[torch.Tensor]) -> concurrent.futures.Future:
        self._busy = self.batcher.submit(self.id, codes)
        return self._busy

    def _run(self, fn) -> concurrent.futures.Future:
        """``fn()`` on one of the pool's flush threads (a flush is not a batched step)."""
        self._busy = self.pool.flusher.submit(fn)
        return self._busy

    @staticmethod
    def _wait(future: concurrent.futures.Future) -> np.ndarray:
        return future.result()

    @staticmethod
    async def _await(future: concurrent.futures.Future) -> np.ndarray:
        # shield: a cancelled request must not cancel the worker's future (the worker resolves it)
        return await asyncio.shield(asyncio.wrap_future(future))

    def _end(self) -> np.ndarray:
        tail = self.engine.flush(self.id)
        self.open = False
        return tail

    def _reopen(self) -> None:
        self.engine.open(self.id, self.seed)
        self.gate.reset()
        self.open = True


__all__ = ["TokenPool", "TokenSession", "TokenPoolStats"]

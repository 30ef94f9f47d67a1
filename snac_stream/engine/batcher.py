"""Server-side batching: many connections' sessions share one multi-stream engine.

::

    connection A: session.push(x_a) ─┐                      ┌─► future_a.result()
    connection B: session.push(x_b) ─┼─► StepBatcher queue ─┤   one engine.step({a: x_a, b: x_b})
    connection C: session.push(x_c) ─┘   (worker thread)    └─► future_c.result()

Sessions block in their executor thread on a future; one worker thread collects whatever
has been submitted (waiting at most ``gather_ms`` for more), runs one ``step`` of the
:class:`~snac_stream.engine.multistream.MultiStreamEncoder` / ``MultiStreamDecoder`` for all of
them — streams in the same phase run as one batch — and resolves the futures. The queue
is bounded (``max_pending``); each stream's output equals its own single-stream result.

A :class:`BatcherPool` runs one such batcher per CPU core (shards), each engine stepping
with one intra-op thread, and places each new stream on the least-loaded shard::

    streams a c e ──► shard 0: StepBatcher(engine 0) ── core 0
    streams b d   ──► shard 1: StepBatcher(engine 1) ── core 1      (engines share weights)

Shards beat one engine with two intra-op threads: a hop's many small operators parallelise
badly, and with the other core busy every OpenMP barrier waits for a descheduled thread
(see ``python -m benchmarks.fastpath``).
"""

from __future__ import annotations

import concurrent.futures
import itertools
import os
import queue
import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np
import torch

from .multistream import MultiStreamDecoder, MultiStreamEncoder


class StepBatcher:
    """Runs ``engine.step`` for everything submitted, batched, on one worker thread."""

    def __init__(self, engine, gather_ms: float = 2.0, max_pending: int = 256):
        self.engine = engine
        self.gather = gather_ms / 1000
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._ids = itertools.count()
        self.steps = 0  # engine.step calls
        self.items = 0  # chunks stepped
        self._thread = threading.Thread(target=self._run, name="snac-batcher", daemon=True)
        self._thread.start()

    def new_id(self) -> int:
        return next(self._ids)

    def submit(self, stream_id, chunk) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._queue.put((stream_id, chunk, future), timeout=30)
        return future

    def call(self, stream_id, chunk):
        """Submit and wait: the stream's output of this step."""
        return self.submit(stream_id, chunk).result()

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            try:
                while True:
                    batch.append(self._queue.get(timeout=self.gather))
            except queue.Empty:
                pass
            # a stream may appear once per step: later chunks of the same stream wait a round
            step, later, seen = [], [], set()
            for item in batch:
                (later if item[0] in seen else step).append(item)
                seen.add(item[0])
            for item in later:
                self._queue.put(item)
            try:
                out = self.engine.step({sid: chunk for sid, chunk, _ in step})
                for sid, _, future in step:
                    future.set_result(out[sid])
            except Exception:  # one bad chunk must not fail the others: retry them one by one
                for sid, chunk, future in step:
                    try:
                        future.set_result(self.engine.step({sid: chunk})[sid])
                    except Exception as e:
                        future.set_exception(e)
            self.steps += 1
            self.items += len(step)


def default_workers() -> int:
    """One shard per CPU core this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


Session = TypeVar("Session")


class BatcherPool:
    """``workers`` :class:`StepBatcher` shards (default: one per core) over siblings of
    ``engine`` (:meth:`~snac_stream.engine.multistream.MultiStreamDecoder.sibling`: same options,
    shared layers). A stream stays on the shard it was opened on."""

    def __init__(self, engine, workers: int | None = None, **batcher_options):
        n = default_workers() if workers is None else workers
        if n < 1:
            raise ValueError(f"workers must be >= 1, got {n}")
        engines = [engine] + [engine.sibling() for _ in range(n - 1)]
        self.batchers = [StepBatcher(e, **batcher_options) for e in engines]
        self._lock = threading.Lock()

    def open(self, make_session: Callable[[StepBatcher], Session]) -> Session:
        """``make_session(batcher)`` on the shard with the fewest open streams."""
        with self._lock:
            return make_session(min(self.batchers, key=lambda b: len(b.engine)))

    @property
    def streams(self) -> list[int]:
        """Open streams per shard."""
        return [len(b.engine) for b in self.batchers]


class BatchedEncodeSession:
    """Same interface as :class:`snac_stream.net.endpoints.EncodeSession`, on a shared batcher."""

    def __init__(self, batcher: StepBatcher) -> None:
        self.batcher = batcher
        self.engine: MultiStreamEncoder = batcher.engine
        self.id = batcher.new_id()
        self.engine.open(self.id)

    def push(self, samples: np.ndarray) -> list[torch.Tensor]:
        audio = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32)).reshape(1, 1, -1)
        return [c[0] for c in self.batcher.call(self.id, audio.to(self.engine.model.dtype))]

    def flush(self) -> list[torch.Tensor]:
        return [c[0] for c in self.engine.flush(self.id)]

    def close(self) -> None:
        if self.id in self.engine:
            self.engine.close(self.id)


class BatchedDecodeSession:
    """Same interface as :class:`snac_stream.net.receiver.DecodeSession`, on a shared batcher."""

    def __init__(self, batcher: StepBatcher, seed: int | None = 0) -> None:
        self.batcher = batcher
        self.engine: MultiStreamDecoder = batcher.engine
        self.seed = seed
        self.id = batcher.new_id()
        self.engine.open(self.id, seed)

    @staticmethod
    def _numpy(audio: torch.Tensor) -> np.ndarray:
        return audio.reshape(-1).to("cpu", torch.float32).numpy()

    def push(self, codes: Sequence[torch.Tensor]) -> np.ndarray:
        return self._numpy(self.batcher.call(self.id, [c.reshape(1, -1) for c in codes]))

    def flush(self) -> np.ndarray:
        return self._numpy(self.engine.flush(self.id))

    def reset(self) -> None:
        self.close()
        self.engine.open(self.id, self.seed)

    def close(self) -> None:
        if self.id in self.engine:
            self.engine.close(self.id)

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
``close()`` (or ``with``) stops the threads; work still pending then fails.

A :class:`BatcherPool` runs one such batcher per CPU core (shards), each engine stepping
with one intra-op thread, and places each new stream on the least-loaded shard::

    streams a c e ──► shard 0: StepBatcher(engine 0) ── core 0
    streams b d   ──► shard 1: StepBatcher(engine 1) ── core 1      (engines share weights)

Shards beat one engine with two intra-op threads: a hop's many small operators parallelise
badly, and with the other core busy every OpenMP barrier waits for a descheduled thread
(see ``python -m benchmarks.fastpath``).
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import os
import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np
import torch

from .multistream import MultiStreamDecoder, MultiStreamEncoder


class StepBatcher:
    """Runs ``engine.step`` for everything submitted, batched, on one worker thread.

    At most ``max_pending`` chunks wait to be taken, and the worker takes at most that many for
    a step's batch; a stream's second chunk in a batch waits, in the worker, for the next step.
    :meth:`close` (or ``with``) stops the worker; work still pending then fails.
    """

    def __init__(self, engine, gather_ms: float = 2.0, max_pending: int = 256, submit_timeout: float = 30.0):
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending}")
        self.engine = engine
        self.gather = gather_ms / 1000
        self.max_pending = max_pending
        self.submit_timeout = submit_timeout  #: seconds submit() waits for room in a full queue
        self._pending: collections.deque = collections.deque()  # (stream_id, chunk, future)
        self._cond = threading.Condition()
        self._closed = False
        self._ids = itertools.count()
        self.steps = 0  # engine.step calls
        self.items = 0  # chunks stepped
        self.thread = threading.Thread(target=self._run, name="snac-batcher", daemon=True)
        self.thread.start()

    def new_id(self) -> int:
        return next(self._ids)

    @property
    def closed(self) -> bool:
        return self._closed

    def submit(self, stream_id, chunk) -> concurrent.futures.Future:
        """Queue ``chunk`` for the stream's next step; waits while ``max_pending`` chunks wait."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._cond:
            room = self._cond.wait_for(
                lambda: self._closed or len(self._pending) < self.max_pending, self.submit_timeout
            )
            if self._closed:
                raise RuntimeError(_CLOSED)
            if not room:
                raise TimeoutError(
                    f"StepBatcher: {len(self._pending)} chunks waited {self.submit_timeout:g} s for the "
                    "engine; it is overloaded (fewer streams per shard, or more shards)"
                )
            self._pending.append((stream_id, chunk, future))
            self._cond.notify_all()
        return future

    def call(self, stream_id, chunk):
        """Submit and wait: the stream's output of this step."""
        return self.submit(stream_id, chunk).result()

    def close(self, wait: bool = True) -> None:
        """Stop the worker thread after the step it is running (``wait``: and wait for it); chunks
        not stepped yet fail with RuntimeError, and so does every later submit()."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if wait and self.thread is not threading.current_thread():
            self.thread.join()

    def __enter__(self) -> StepBatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _take(self, batch: list) -> None:
        """Move pending chunks into ``batch`` (up to ``max_pending`` in all); wakes submitters."""
        while self._pending and len(batch) < self.max_pending:
            item = self._pending.popleft()
            if item[2].set_running_or_notify_cancel():  # skip chunks whose future was cancelled
                batch.append(item)
        self._cond.notify_all()

    def _gather(self, later: collections.deque) -> list | None:
        """The next batch: the chunks held back from the last step, then what is submitted until
        none came for ``gather`` seconds or the batch is full. None once closed."""
        batch = list(later)
        later.clear()
        with self._cond:
            while not batch and not self._closed:
                self._cond.wait_for(lambda: self._closed or self._pending)
                self._take(batch)
            while len(batch) < self.max_pending and not self._closed:
                if not self._cond.wait_for(lambda: self._closed or self._pending, self.gather):
                    break
                self._take(batch)
            if not self._closed:
                return batch
            batch.extend(self._pending)
            self._pending.clear()
        error = RuntimeError(_CLOSED)
        for _, _, future in batch:
            if not future.done():
                future.set_exception(error)
        return None

    def _run(self) -> None:
        later: collections.deque = collections.deque()  # a stream's chunks behind its first in a batch
        while (batch := self._gather(later)) is not None:
            step, seen = [], set()
            for item in batch:  # a stream may appear once per step: its later chunks wait a round
                (later if item[0] in seen else step).append(item)
                seen.add(item[0])
            try:
                out = self.engine.step({sid: chunk for sid, chunk, _ in step})
                for sid, _, future in step:
                    future.set_result(out[sid])
            except Exception:  # one bad chunk must not fail the others: retry them one by one
                for sid, chunk, future in step:
                    if future.done():
                        continue
                    try:
                        future.set_result(self.engine.step({sid: chunk})[sid])
                    except Exception as e:
                        future.set_exception(e)
            self.steps += 1
            self.items += len(step)


_CLOSED = "StepBatcher is closed (the server is stopping?): its engine takes no more chunks"


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
            if self.batchers[0].closed:
                raise RuntimeError("BatcherPool is closed: open no more sessions on it")
            return make_session(min(self.batchers, key=lambda b: len(b.engine)))

    @property
    def streams(self) -> list[int]:
        """Open streams per shard."""
        return [len(b.engine) for b in self.batchers]

    def close(self) -> None:
        """Stop every shard's thread and wait for them (see :meth:`StepBatcher.close`)."""
        with self._lock:
            for b in self.batchers:  # all stop at once, then wait for each
                b.close(wait=False)
            for b in self.batchers:
                b.close()

    def __enter__(self) -> BatcherPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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

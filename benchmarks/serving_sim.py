"""Pieces of ``python -m benchmarks.serving``: simulated LM streams, real-time playback, the decoders.

- :func:`make_requests`: request ``i`` of a workload depends only on (seed, i), so the runs for
  N = 1, 8, 32 ... decode prefixes of the same requests.
- :func:`lm_stream`: an async LM: piece k is available from its scheduled time on (tokens a
  slow reader has not taken yet wait, as in an LM server's output queue).
- :func:`playback`: real-time playback from the first audio (or from the first ``preroll``
  samples): a chunk that arrives after the playhead needs it is an underrun; the player stalls
  until it arrives.
- Decoders, one request at a time each (``async request(pieces, trace)``): :class:`Ours`
  (:func:`snac_stream.orpheus.tokens_decoder` on a shared :class:`TokenPool`), :class:`SlidingWindow`
  (``orpheus_tts.decoder``'s window, DESIGN.md section 7, decoded per request on ``workers``
  threads) and :class:`BatchedWindows` (the same windows batched across requests: up to 64 per
  forward, 15 ms gather, as Baseten's Orpheus server does).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from snac_stream.engine.token_pool import TokenPool
from snac_stream.engine.tokens import codes_to_tokens, to_lm_ids
from snac_stream.orpheus import CUSTOM_TOKEN_BASE, tokens_decoder

START_OF_SPEECH, END_OF_SPEECH = "<custom_token_1>", "<custom_token_2>"  # LM ids 128257, 128258
WINDOW, KEEP = 28, (2048, 4096)  # orpheus_tts.decoder: the last 28 tokens, samples [2048, 4096)


# ----------------------------------------------------------------------------- workload


@dataclass(frozen=True)
class Workload:
    seconds: float = 4.0  #: mean audio per request (uniform in [0.5, 1.5] x this)
    rate: tuple[float, float] = (90.0, 200.0)  #: LM tokens per second, uniform per request
    jitter: float = 0.5  #: each gap is (1/rate) * uniform(1 - jitter, 1 + jitter)
    stagger_s: float = 2.0  #: request starts uniform in [0, stagger_s]
    zero_codes: bool = False  #: codes from [0, 4096) (Orpheus drops 0 and loses its place) or [1, 4096)
    seed: int = 0


@dataclass
class Request:
    index: int
    start_s: float
    rate: float
    codes: list[torch.Tensor]  #: per level ``[1, k_i]``
    pieces: list[str]  #: one token per piece, as an LM server streams them
    times: np.ndarray  #: when each piece exists, seconds from the request's start

    @property
    def frames(self) -> int:
        return int(self.codes[0].shape[-1])


def make_requests(model, n: int, w: Workload) -> list[Request]:
    frame = model.vq_strides[0] * model.decoder_hop
    out = []
    for i in range(n):
        rng = np.random.default_rng([w.seed, i])
        start = float(rng.uniform(0, w.stagger_s))
        frames = max(4, round(rng.uniform(0.5, 1.5) * w.seconds * model.sample_rate / frame))
        rate = float(rng.uniform(*w.rate))
        low = 0 if w.zero_codes else 1
        codes = [
            torch.from_numpy(rng.integers(low, model.codebook_size, (1, frames * r))).long()
            for r in (model.vq_strides[0] // s for s in model.vq_strides)
        ]
        ids = to_lm_ids(codes_to_tokens(codes, model.vq_strides), model.vq_strides, model.codebook_size)
        pieces = [START_OF_SPEECH] + [f"<custom_token_{i - CUSTOM_TOKEN_BASE}>" for i in ids[0].tolist()]
        pieces.append(END_OF_SPEECH)
        gaps = rng.uniform(1 - w.jitter, 1 + w.jitter, len(pieces)) / rate
        gaps[0] = 0.0
        out.append(Request(i, start, rate, codes, pieces, np.cumsum(gaps)))
    return out


@dataclass
class Trace:
    """What one request saw: when its first token existed, when each PCM chunk came out."""

    first_token: float | None = None
    arrivals: list[tuple[float, int]] = field(default_factory=list)  #: (time, samples)
    pcm: bytearray | None = None  #: kept for the exactness check
    done: bool = False

    def add(self, data: bytes) -> None:
        if data:
            self.arrivals.append((time.perf_counter(), len(data) // 2))
            if self.pcm is not None:
                self.pcm += data

    @property
    def samples(self) -> int:
        return sum(n for _, n in self.arrivals)


async def lm_stream(request: Request, start: float, trace: Trace) -> AsyncIterator[str]:
    trace.first_token = start + float(request.times[0])
    for piece, t in zip(request.pieces, request.times, strict=True):
        delay = start + float(t) - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        yield piece


def playback(trace: Trace, sample_rate: int, preroll: int = 0) -> dict | None:
    """Real-time playback of ``trace``'s chunks from when ``max(preroll, 1)`` samples are out.
    None if that never happened."""
    need, have, start = max(preroll, 1), 0, None
    for t, n in trace.arrivals:
        have += n
        if have >= need:
            start = t
            break
    if start is None or trace.first_token is None:
        return None
    stall, events, before = 0.0, 0, 0
    for t, n in trace.arrivals:
        deadline = start + stall + before / sample_rate
        if t > deadline:
            events += 1
            stall += t - deadline
        before += n
    return {"start_ms": 1000 * (start - trace.first_token), "underruns": events, "stall_ms": 1000 * stall}


# ----------------------------------------------------------------------------- decoders


class Ours:
    name = "ours"

    def __init__(self, model, workers: int, max_streams: int, max_batch: int = 8):
        self.pool = TokenPool(model, workers=workers, max_streams=max_streams, max_batch=max_batch)

    async def request(self, pieces: AsyncIterator[str], trace: Trace) -> None:
        async for pcm in tokens_decoder(pieces, pool=self.pool, seed=0):
            trace.add(pcm)

    @property
    def compute_s(self) -> float:
        return self.pool.stats.compute_s

    @property
    def compute_cpu_s(self) -> float:
        return self.pool.stats.compute_cpu_s

    def extras(self) -> dict:
        s = self.pool.stats
        return {
            "forwards": s.forwards,
            "stream_steps": s.stream_steps,
            "mean_batch": s.stream_steps / max(s.forwards, 1),
        }

    def close(self) -> None:
        self.pool.close()


class OrpheusWindowParser:
    """``orpheus_tts.decoder``'s token handling (DESIGN.md section 7): the *last*
    ``<custom_token_N>`` of a piece is ``N - 10 - (count % 7) * 4096``, kept if ``> 0`` (a code of
    0 is dropped); every 7 kept tokens after 27, the last 28 are a window."""

    def __init__(self) -> None:
        self.buffer: list[int] = []

    def feed(self, piece: str) -> list[int] | None:
        piece = piece.strip()
        start = piece.rfind("<custom_token_")
        if start < 0 or not piece.endswith(">"):
            return None
        try:
            token = int(piece[start + 14 : -1]) - 10 - (len(self.buffer) % 7) * 4096
        except ValueError:
            return None
        if token <= 0:
            return None
        self.buffer.append(token)
        n = len(self.buffer)
        return self.buffer[-WINDOW:] if n % 7 == 0 and n > WINDOW - 1 else None


def window_codes(windows: Sequence[Sequence[int]], device) -> list[torch.Tensor] | None:
    """Orpheus' frame layout of 28-token windows -> per-level codes ``[B, 4 | 8 | 16]``; None if a
    code is out of range (Orpheus skips such a window; its check lets 4096 through, ours does not)."""
    w = torch.tensor(windows, dtype=torch.long).reshape(len(windows), -1, 7)
    codes = [
        w[:, :, 0],
        w[:, :, [1, 4]].reshape(len(windows), -1),
        w[:, :, [2, 3, 5, 6]].reshape(len(windows), -1),
    ]
    if any(bool(((c < 0) | (c >= 4096)).any()) for c in codes):
        return None
    return [c.to(device) for c in codes]


@torch.inference_mode()
def decode_windows(model, windows: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """Float samples ``[2048, 4096)`` of each window's decode (one batched forward)."""
    codes = window_codes(windows, model.device)
    if codes is None:
        return [np.zeros(0, dtype=np.float32) for _ in windows]
    audio = model.decode(codes)[:, 0, KEEP[0] : KEEP[1]]
    return list(audio.float().cpu().numpy())


def orpheus_pcm(audio: np.ndarray) -> bytes:
    return (audio * 32767).astype(np.int16).tobytes()  # orpheus_tts.decoder's conversion (truncates)


class SlidingWindow:
    """Each request decodes its own windows, batch 1, on a pool of ``workers`` threads."""

    name = "orpheus"

    def __init__(self, model, workers: int):
        self.model = model
        self.executor = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="orpheus")
        self.compute_s = self.compute_cpu_s = 0.0
        self.windows = 0
        self._lock = threading.Lock()

    def _decode(self, window: list[int]) -> bytes:
        t0, c0 = time.perf_counter(), time.thread_time()
        out = orpheus_pcm(decode_windows(self.model, [window])[0])
        with self._lock:
            self.compute_s += time.perf_counter() - t0
            self.compute_cpu_s += time.thread_time() - c0
            self.windows += 1
        return out

    async def request(self, pieces: AsyncIterator[str], trace: Trace) -> None:
        loop, parser = asyncio.get_running_loop(), OrpheusWindowParser()
        async for piece in pieces:
            window = parser.feed(piece)
            if window is not None:
                trace.add(await loop.run_in_executor(self.executor, self._decode, window))

    def extras(self) -> dict:
        return {"windows": self.windows, "mean_batch": 1.0}

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)


class BatchedWindows:
    """The same windows, gathered across requests: a worker takes the first waiting window, waits
    up to ``gather_ms`` for more (at most ``max_batch``) and decodes them as one batch."""

    name = "batched_windows"

    def __init__(self, model, workers: int, max_batch: int = 64, gather_ms: float = 15.0):
        self.model, self.max_batch, self.gather = model, max_batch, gather_ms / 1000
        self.queue: queue.Queue = queue.Queue(maxsize=4096)
        self.compute_s = self.compute_cpu_s = 0.0
        self.windows = self.forwards = 0
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(workers)]
        for t in self.threads:
            t.start()

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            batch, deadline = [item], time.perf_counter() + self.gather
            while len(batch) < self.max_batch and (left := deadline - time.perf_counter()) > 0:
                try:
                    item = self.queue.get(timeout=left)
                except queue.Empty:
                    break
                if item is None:
                    self.queue.put(None)
                    break
                batch.append(item)
            t0, c0 = time.perf_counter(), time.thread_time()
            out = decode_windows(self.model, [w for w, _ in batch])
            with self._lock:
                self.compute_s += time.perf_counter() - t0
                self.compute_cpu_s += time.thread_time() - c0
                self.windows += len(batch)
                self.forwards += 1
            for (_, future), audio in zip(batch, out, strict=True):
                if future.set_running_or_notify_cancel():
                    future.set_result(orpheus_pcm(audio))

    async def request(self, pieces: AsyncIterator[str], trace: Trace) -> None:
        parser = OrpheusWindowParser()
        async for piece in pieces:
            window = parser.feed(piece)
            if window is not None:
                future: concurrent.futures.Future = concurrent.futures.Future()
                self.queue.put_nowait((window, future))
                trace.add(await asyncio.wrap_future(future))

    def extras(self) -> dict:
        return {
            "windows": self.windows,
            "forwards": self.forwards,
            "mean_batch": self.windows / max(self.forwards, 1),
        }

    def close(self) -> None:
        for _ in self.threads:
            self.queue.put(None)
        for t in self.threads:
            t.join(timeout=30)


# ----------------------------------------------------------------------------- one run


async def run_requests(
    decoder, requests: Sequence[Request], keep_pcm: int, cap_s: float
) -> tuple[list, float]:
    """All ``requests`` at their start times through ``decoder``; stops (cancels) at ``cap_s``.
    Returns (traces, wall seconds)."""
    t0 = time.perf_counter() + 0.05
    traces = [Trace(pcm=bytearray() if r.index < keep_pcm else None) for r in requests]

    async def one(request: Request, trace: Trace) -> None:
        start = t0 + request.start_s
        await asyncio.sleep(max(0.0, start - time.perf_counter()))
        await decoder.request(lm_stream(request, start, trace), trace)
        trace.done = True

    tasks = [asyncio.create_task(one(r, t)) for r, t in zip(requests, traces, strict=True)]
    _, pending = await asyncio.wait(tasks, timeout=cap_s)
    for task in pending:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()
    return traces, time.perf_counter() - t0

"""Sender side: audio chunks -> StreamingEncoder (on a worker thread) -> code packets.

::

    source (file in real time | microphone) --chunks--> Packetizer.push  [worker thread]
        --> HELLO, CODES(seq, first_frame, n frames) ..., END(total_samples) --> publish()

Codes leave as soon as ``frames_per_packet`` coarse frames are final; ``END`` carries the
number of input samples, so the receiver trims exactly as offline ``forward`` does.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import random
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from snac_model import SNAC
from snac_stream.engine.encoder import StreamingEncoder
from snac_stream.protocol.packets import End, Hello, ModelInfo, Packet, split_codes


@dataclass
class EncodeStats:
    samples: int = 0
    frames: int = 0
    packets: int = 0
    step_seconds: list[float] = field(default_factory=list)  # compute time of each push


class Packetizer:
    """Synchronous core: audio in, packets out (B=1). Not thread-safe; one per stream."""

    def __init__(self, model: SNAC, frames_per_packet: int = 1, stream_id: int | None = None):
        if frames_per_packet < 1:
            raise ValueError("frames_per_packet must be >= 1")
        self.encoder = StreamingEncoder(model, batch_size=1)
        self.info = ModelInfo.from_model(model)
        self.frames_per_packet = frames_per_packet
        self.stream_id = random.getrandbits(31) if stream_id is None else stream_id
        self.hello = Hello(self.info, self.stream_id)
        self.stats = EncodeStats()
        self._pending: list[torch.Tensor] | None = None  # codes of frames not yet packed
        self._seq = 0

    def _pack(self, codes: list[torch.Tensor], final: bool) -> list[Packet]:
        if self._pending is not None:
            codes = [torch.cat((a, b), dim=-1) for a, b in zip(self._pending, codes, strict=True)]
        per = self.info.codes_per_level
        n = codes[0].shape[-1]
        whole = n if final else n - n % self.frames_per_packet  # frames that leave now
        out: list[Packet] = list(
            split_codes(
                [c[:, : whole * r] for c, r in zip(codes, per, strict=True)],
                self.info,
                self.frames_per_packet,
                stream_id=self.stream_id,
                first_seq=self._seq,
                first_frame=self.stats.frames,
            )
        )
        self._pending = [c[:, whole * r :] for c, r in zip(codes, per, strict=True)]
        self._seq += len(out)
        self.stats.frames += whole
        self.stats.packets += len(out)
        return out

    def push(self, samples: np.ndarray) -> list[Packet]:
        t = time.perf_counter()
        audio = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32)).view(1, 1, -1)
        codes = self.encoder.push(audio)
        self.stats.step_seconds.append(time.perf_counter() - t)
        self.stats.samples += audio.shape[-1]
        return self._pack(codes, final=False)

    def finish(self) -> list[Packet]:
        """Flush the encoder: the last CODES packets and END."""
        out = self._pack(self.encoder.flush(), final=True)
        out.append(End(self.stream_id, self._seq, self.stats.frames, self.stats.samples))
        self.stats.packets += 1
        return out


async def encode_stream(
    packetizer: Packetizer,
    chunks: AsyncIterable[np.ndarray],
    executor: concurrent.futures.Executor | None = None,
) -> AsyncIterator[Packet]:
    """HELLO, then the packets of every chunk as they become final, then END. The encoder
    runs on ``executor`` (a private single worker thread by default), never on the loop."""
    own = executor is None
    executor = executor or concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="snac-encode")
    loop = asyncio.get_running_loop()
    try:
        yield packetizer.hello
        async for chunk in chunks:
            for packet in await loop.run_in_executor(executor, packetizer.push, chunk):
                yield packet
        for packet in await loop.run_in_executor(executor, packetizer.finish):
            yield packet
    finally:
        if own:
            executor.shutdown(wait=False)


async def file_chunks(
    audio: np.ndarray,
    sample_rate: int,
    chunk_ms: float = 10.0,
    realtime: bool = True,
    on_chunk: Callable[[int, float], None] | None = None,
) -> AsyncIterator[np.ndarray]:
    """Yield ``audio`` in chunks of ``chunk_ms``; with ``realtime``, each chunk no earlier than
    the moment its last sample would have been captured. ``on_chunk(end_sample, time)``
    is called as each chunk is handed on (for end-to-end latency measurements)."""
    step = max(1, int(sample_rate * chunk_ms / 1000))
    start = time.perf_counter()
    for a in range(0, len(audio), step):
        b = min(a + step, len(audio))
        if realtime:
            delay = start + b / sample_rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        if on_chunk is not None:
            on_chunk(b, time.perf_counter())
        yield audio[a:b]


async def microphone_chunks(
    mic,
    seconds: float | None = None,
    chunk_ms: float = 10.0,
    on_chunk: Callable[[int, float], None] | None = None,
) -> AsyncIterator[np.ndarray]:
    """Yield whatever the microphone's ring buffer holds (at least ``chunk_ms`` per read),
    for ``seconds`` of audio or until cancelled."""
    limit = None if seconds is None else int(seconds * mic.sample_rate)
    minimum = max(1, int(mic.sample_rate * chunk_ms / 1000))
    total = 0
    while limit is None or total < limit:
        chunk = await asyncio.to_thread(mic.read_blocking, minimum, 1.0)
        if limit is not None:
            chunk = chunk[: limit - total]
        if chunk.size == 0:
            continue
        total += chunk.size
        if on_chunk is not None:
            on_chunk(total, time.perf_counter())
        yield chunk

"""Live view of the multi-scale codes: one row per level, tokens appearing at that level's
own rate, with input level, bitrate and latency (rich, lazily imported; plain text without)."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator

import numpy as np
import torch

from snac_model import SNAC
from snac_stream.engine.encoder import StreamingEncoder
from snac_stream.engine.latency import encoder_latency


class CodeView:
    """Keeps the recent tokens of each level and the numbers shown next to them."""

    def __init__(self, model: SNAC, ticks: int = 12):
        self.model = model
        finest = min(model.vq_strides)
        # a time-aligned grid: ``ticks`` finest ticks wide, a level-i token spans stride_i ticks
        self.spans = [s // finest for s in model.vq_strides]
        self.rows = [deque(maxlen=max(1, ticks // span)) for span in self.spans]
        self.frames = 0
        self.samples = 0
        self.rms_db = -120.0
        self.delays_ms: deque[float] = deque(maxlen=64)
        self.started = time.perf_counter()
        self.algorithmic_ms = encoder_latency(model).ms

    def add(self, codes: list[torch.Tensor], delay_ms: float | None) -> None:
        for row, c in zip(self.rows, codes, strict=True):
            row.extend(int(v) for v in c[0])
        self.frames += codes[0].shape[-1]
        if delay_ms is not None and codes[0].shape[-1]:
            self.delays_ms.append(delay_ms)

    def audio(self, chunk: np.ndarray) -> None:
        self.samples += chunk.size
        if chunk.size:
            rms = float(np.sqrt(np.mean(np.square(chunk, dtype=np.float64))))
            self.rms_db = 20 * np.log10(max(rms, 1e-6))

    def lines(self) -> list[str]:
        m = self.model
        out = []
        for i, (row, rate, span) in enumerate(zip(self.rows, m.frame_rates, self.spans, strict=True)):
            cells = "".join(f"{v:03x}".ljust(4 * span) for v in row)
            out.append(f"level {i} {rate:5.1f} Hz | {cells}")
        seconds = self.samples / m.sample_rate
        bar = "#" * int(max(0.0, min(1.0, (self.rms_db + 60) / 60)) * 30)
        delay = f"{np.median(self.delays_ms):.0f} ms" if self.delays_ms else "-"
        out.append(f"input  {self.rms_db:6.1f} dBFS |{bar:<30}|  {seconds:6.2f} s")
        out.append(
            f"codes  {self.frames} coarse frames, {m.bitrate:.0f} bit/s nominal; code delay {delay} "
            f"(algorithmic worst case {self.algorithmic_ms:.0f} ms)"
        )
        return out


def run_view(model: SNAC, chunks: Iterator[tuple[np.ndarray, float]], refresh_hz: float = 20.0) -> CodeView:
    """Encode ``(chunk, capture_time)`` pairs and show the codes live. The code delay is the
    time from capturing the first sample of a coarse frame to its codes being emitted."""
    encoder = StreamingEncoder(model)
    view = CodeView(model)
    captured: deque[tuple[int, float]] = deque()  # (end sample, capture time) of recent chunks
    try:
        from rich.live import Live
        from rich.text import Text

        live = Live(Text(""), refresh_per_second=refresh_hz, transient=False)
    except ImportError:
        live = None

    def show() -> None:
        if live is not None:
            live.update(Text("\n".join(view.lines())))

    def delay_of(first_sample: int, now: float) -> float | None:
        for end, t in captured:
            if end > first_sample:
                return 1000 * (now - t)
        return None

    if live is not None:
        live.start()
    try:
        last_print = 0.0
        for chunk, t_capture in chunks:
            view.audio(chunk)
            captured.append((view.samples, t_capture))
            first = view.frames * model.frame_size
            codes = encoder.push(torch.from_numpy(chunk).view(1, 1, -1))
            view.add(codes, delay_of(first, time.perf_counter()))
            while len(captured) > 1 and captured[0][0] <= view.frames * model.frame_size:
                captured.popleft()
            if live is not None:
                show()
            elif time.perf_counter() - last_print > 1.0:
                last_print = time.perf_counter()
                print("\n".join(view.lines()), flush=True)
        view.add(encoder.flush(), None)
        show()
    finally:
        if live is not None:
            live.stop()
    if live is None:
        print("\n".join(view.lines()))
    return view


def file_source(audio: np.ndarray, sample_rate: int, realtime: bool = True, chunk_ms: float = 10.0):
    """``(chunk, capture_time)`` from a file, paced like a microphone when ``realtime``."""
    step = max(1, int(sample_rate * chunk_ms / 1000))
    start = time.perf_counter()
    for a in range(0, len(audio), step):
        b = min(a + step, len(audio))
        if realtime:
            time.sleep(max(0.0, start + b / sample_rate - time.perf_counter()))
        yield audio[a:b], time.perf_counter()


def mic_source(mic, seconds: float | None, chunk_ms: float = 10.0):
    """``(chunk, capture_time)`` from a started Microphone, for ``seconds`` (None: forever)."""
    limit = None if seconds is None else int(seconds * mic.sample_rate)
    total, minimum = 0, max(1, int(mic.sample_rate * chunk_ms / 1000))
    while limit is None or total < limit:
        chunk = mic.read_blocking(minimum, 1.0)
        if limit is not None:
            chunk = chunk[: limit - total]
        total += chunk.size
        if chunk.size:
            yield chunk, time.perf_counter()

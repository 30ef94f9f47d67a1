"""End-to-end latency by timestamps: when a sample entered the encoder, when it left the decoder.

Both ends must share one clock (``time.perf_counter`` in one process, as in the demo and
the benchmark). Memory is bounded: entry marks already passed by the output are dropped,
and at most ``max_samples`` latencies are kept (a uniform subsample beyond that).
"""

from __future__ import annotations

import bisect
import random
from collections import deque

import numpy as np


class EndToEndMeter:
    def __init__(self, sample_rate: int, every: int = 64, max_samples: int = 200_000):
        self.sample_rate = sample_rate
        self.every = every  # measure one sample in ``every``
        self.max_samples = max_samples
        self._ends: deque[int] = deque()  # end sample (exclusive) of each entered chunk
        self._times: deque[float] = deque()
        self.latencies: list[float] = []  # seconds
        self._seen = 0

    def entered(self, end_sample: int, t: float) -> None:
        """Samples before ``end_sample`` have entered the encoder by time ``t``."""
        self._ends.append(end_sample)
        self._times.append(t)

    def left(self, start: int, end: int, t: float) -> None:
        """Samples ``[start, end)`` left the decoder at time ``t``."""
        first = -(-start // self.every) * self.every
        for n in range(first, end, self.every):
            i = bisect.bisect_right(self._ends, n)
            if i >= len(self._ends):
                break  # output beyond the input (the end padding): not a real sample
            self._keep(t - self._times[i])
        while len(self._ends) > 1 and self._ends[0] <= end:
            self._ends.popleft()
            self._times.popleft()

    def _keep(self, value: float) -> None:
        self._seen += 1
        if len(self.latencies) < self.max_samples:
            self.latencies.append(value)
        else:  # reservoir sampling keeps a uniform subsample
            j = random.randrange(self._seen)
            if j < self.max_samples:
                self.latencies[j] = value

    def quantiles_ms(self) -> dict[str, float]:
        if not self.latencies:
            return {"p50": float("nan"), "p95": float("nan"), "p99": float("nan")}
        ms = 1000 * np.asarray(self.latencies)
        return {f"p{q}": float(np.percentile(ms, q)) for q in (50, 95, 99)}

"""A short load test: 50 publisher/listener pairs relaying for ~5 s on loopback.

Every frame must be delivered or counted lost, and at this modest rate (50 x 11.7
packets/s) none may be lost. No timing asserts; the numbers are printed (``-s``). The full
run is ``python -m benchmarks.load --pairs 50 --seconds 30``.
"""

from __future__ import annotations

import asyncio

from benchmarks.load import run_load


def test_fifty_pairs_every_frame_delivered_memory_bounded():
    result = asyncio.run(run_load(pairs=50, seconds=5.0))
    print("\n" + result.report())
    assert not result.errors
    assert result.accounting_ok == 50  # received + counted lost == sent, for every pair
    assert result.frames_sent == 50 * int(5.0 / (2048 / 24000)) > 0
    assert result.frames_delivered == result.frames_sent and result.frames_lost == 0
    counters = result.server_counters
    assert counters.get("frames_skipped", 0) == 0 and counters.get("listeners_dropped", 0) == 0
    assert result.latency_samples == result.frames_sent
    # the relay's own memory: a few MiB over the interpreter + torch import, nowhere near the bounds
    assert result.rss_peak_mib - result.rss_baseline_mib < 64

"""``snac-stream bench``: latency, cost, exactness and wire rate of streaming SNAC in one run.

Only the arguments live here; the benchmark is :mod:`benchmarks.bench` (also runnable as
``python -m benchmarks.bench``). Prints a table, optionally writes ``--json`` and ``--plot``.
"""

from __future__ import annotations

import argparse

HELP = "measure latency, cost, exactness and wire rate of streaming vs offline / sliding window"
DEFAULT_MODEL = "random:24khz"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a(
        "--model",
        default=DEFAULT_MODEL,
        metavar="M",
        help="model spec: checkpoint dir, hub id or random:24khz|random:32khz|random:44khz "
        f"(default {DEFAULT_MODEL}: the published 24 kHz architecture with seeded random weights; "
        "timings are real)",
    )
    a(
        "--seconds",
        type=float,
        default=None,
        metavar="S",
        help="seconds of test audio (default 10; --quick: 2)",
    )
    a(
        "--e2e-seconds",
        type=float,
        default=None,
        metavar="S",
        help="seconds streamed end to end (default S; --quick: 2)",
    )
    a(
        "--quick",
        action="store_true",
        help="short run (< 2 min on 2 cores): less audio, one probe phase, small budgets",
    )
    a("--json", default=None, metavar="FILE", help="write every number as JSON to FILE")
    a("--plot", default=None, metavar="FILE.png", help="write a one-page summary plot to FILE.png")
    a("--device", default="cpu", choices=("cpu", "cuda"), help="where the model runs (default cpu)")
    a(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="torch intra-op threads (default: torch's default)",
    )
    a("--streams", type=int, default=4, metavar="N", help="concurrent end-to-end streams (default 4)")
    a(
        "--probe-phases",
        type=int,
        default=None,
        metavar="K",
        help="latency probes at K frame phases (default: all phases of a period; --quick: 1)",
    )
    a(
        "--budget",
        type=float,
        default=None,
        metavar="SEC",
        help="compute seconds per method before a streaming loop stops early (default 120; --quick: 6)",
    )
    a(
        "--repeats",
        type=int,
        default=None,
        metavar="R",
        help="timed repetitions of each cost method, interleaved; the best is kept (default 2; --quick: 1)",
    )
    a(
        "--tune-malloc",
        action="store_true",
        help="glibc mallopt(M_MMAP_MAX=0, M_TRIM_THRESHOLD=max) before running (DESIGN.md section 6)",
    )


def run(args: argparse.Namespace) -> int:
    from benchmarks.bench import run as run_bench

    return run_bench(args)

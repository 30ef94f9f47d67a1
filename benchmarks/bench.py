"""``snac-stream bench``: latency, cost, exactness and wire rate of streaming SNAC, in one run.

On one deterministic synthetic signal and one model:

1. algorithmic latency of the exact mode, analytic and by perturbation probes;
2. cost (real-time factor), exactness and time to first output of offline, our
   streaming (hops of 1 tick, 1 and 4 coarse frames), the Orpheus-style sliding window
   and naive independent chunks;
3. compute per hop (p50/p95/p99 of one streaming step of one coarse frame);
4. end-to-end latency per sample over a real loopback WebSocket (sender -> relay room
   -> listener), with 1 and with N concurrent streams, split into its parts;
5. nominal bitrate against the bytes on the wire.

Run ``python -m benchmarks.bench --help`` or ``snac-stream bench --help``. Module layout:
:mod:`.bench_common` (signal, timing, machine), :mod:`.bench_latency`,
:mod:`.bench_cost`, :mod:`.bench_e2e`, :mod:`.bench_report` (table, PNG).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass

DEFAULT_MODEL = "random:24khz"  # the benchmark's default: random weights, no hub download


@dataclass
class BenchConfig:
    model: str = DEFAULT_MODEL
    seconds: float = 10.0
    e2e_seconds: float = 10.0
    quick: bool = False
    json_path: str | None = None
    plot_path: str | None = None
    device: str = "cpu"
    threads: int | None = None
    streams: int = 4
    probe_phases: int | None = None  # None: every phase of one period
    budget_s: float = 120.0  # compute seconds per method before a streaming loop stops
    repeats: int = 2  # timed repetitions per cost method (best kept)
    bracket_probes: bool = False  # encoder probe: verify the analytic need instead of bisecting

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> BenchConfig:
        quick = bool(args.quick)
        seconds = args.seconds if args.seconds is not None else (2.0 if quick else 10.0)
        e2e = args.e2e_seconds if args.e2e_seconds is not None else (min(seconds, 2.0) if quick else seconds)
        phases = args.probe_phases if args.probe_phases is not None else (1 if quick else None)
        budget = args.budget if args.budget is not None else (4.0 if quick else 120.0)
        repeats = args.repeats if args.repeats is not None else (1 if quick else 2)
        return cls(
            model=args.model,
            seconds=seconds,
            e2e_seconds=e2e,
            quick=quick,
            json_path=args.json,
            plot_path=args.plot,
            device=args.device,
            threads=args.threads,
            streams=args.streams,
            probe_phases=phases,
            budget_s=budget,
            repeats=repeats,
            bracket_probes=quick,
        )


# ----------------------------------------------------------------------------- progress


class _Progress:
    """One rich progress bar on stderr, advanced stage by stage (weights ~ expected seconds)."""

    def __init__(self, stages: dict[str, float], enabled: bool = True):
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.stages = stages
        self.total = sum(stages.values())
        self.done = 0.0
        self.current: str | None = None
        self.progress = Progress(
            TextColumn("[bold blue]bench[/bold blue]"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TimeElapsedColumn(),
            TextColumn("{task.description}"),
            console=Console(stderr=True),
            refresh_per_second=4,
            disable=not enabled,
        )
        self.task = self.progress.add_task("starting", total=self.total)
        self.started = time.perf_counter()
        self.seconds: dict[str, float] = {}

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        self.progress.update(self.task, completed=self.total)
        self.progress.__exit__(*exc)

    def stage(self, name: str | None, detail: str = "") -> None:
        now = time.perf_counter()
        if self.current is not None:
            self.done += self.stages[self.current]
            self.seconds[self.current] = now - self.started
        self.started = now
        self.current = name
        if name is None:
            return
        self.progress.update(self.task, completed=self.done, description=detail or name)

    def note(self, detail: str) -> None:
        self.progress.update(self.task, description=f"{self.current}: {detail}")

    def fraction(self, f: float) -> None:
        if self.current is not None:
            self.progress.update(self.task, completed=self.done + f * self.stages[self.current])


# ----------------------------------------------------------------------------- run


def run_bench(cfg: BenchConfig, malloc_tuned: bool = False, show_progress: bool = True) -> dict:
    """Everything; returns the JSON-able result (see module doc)."""
    import torch

    from snac_model import load_model

    from .bench_common import loadavg, machine_info, make_signal, model_summary, noise_free_twin
    from .bench_cost import run_cost
    from .bench_e2e import run_e2e
    from .bench_latency import analytic, latency_modes, probe

    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    started = time.perf_counter()
    machine = machine_info(cfg.device, torch.get_num_threads(), malloc_tuned)
    stages = {
        "load": 3.0,
        "latency": 5.0,
        "probes": 3.0 if cfg.bracket_probes else 60.0,
        "cost": 12.0 * cfg.seconds * cfg.repeats,
        "e2e 1": 3.0 + 1.2 * cfg.e2e_seconds,
        "e2e N": 3.0 + 1.5 * cfg.e2e_seconds * max(1, cfg.streams / 2),
    }
    with _Progress(stages, show_progress) as prog:
        prog.stage("load", f"loading {cfg.model}")
        model = load_model(cfg.model, fallback_to_random=True, device=cfg.device).eval()
        twin = noise_free_twin(model)
        cpu_model = model if cfg.device == "cpu" else load_model(cfg.model, fallback_to_random=True).eval()
        sr = model.sample_rate
        signal = make_signal(sr, cfg.seconds)
        x = torch.from_numpy(signal).view(1, 1, -1).to(device=model.device, dtype=model.dtype)
        if cfg.e2e_seconds <= cfg.seconds:  # the same audio (its beginning)
            x_e2e = x[..., : int(round(cfg.e2e_seconds * sr))]
        else:
            x_e2e = torch.from_numpy(make_signal(sr, cfg.e2e_seconds)).view(1, 1, -1)
            x_e2e = x_e2e.to(device=model.device, dtype=model.dtype)

        prog.stage("latency", "analytic latency")
        lat = analytic(cpu_model)
        prog.stage("probes", "latency probes")
        pr = probe(cpu_model, cfg.probe_phases, progress=prog.fraction, bracket=cfg.bracket_probes)
        lat.update(pr)
        lat["modes"] = latency_modes(lat, pr)

        prog.stage("cost", "cost")
        cost = run_cost(model, twin, x, cfg.device, cfg.budget_s, prog.note, cfg.repeats, prog.fraction)

        prog.stage("e2e 1", "end to end, 1 stream (real time)")
        e2e_1 = run_e2e(model, x_e2e, 1, cfg.device)
        prog.stage("e2e N", f"end to end, {cfg.streams} streams (real time)")
        e2e_n = run_e2e(model, x_e2e, cfg.streams, cfg.device)
        prog.stage(None)
        stage_seconds = dict(prog.seconds)

    lat.update(
        e2e_ms_p50=e2e_1["total_ms"]["p50"],
        e2e_ms_p95=e2e_1["total_ms"]["p95"],
        e2e_ms_p99=e2e_1["total_ms"]["p99"],
        e2e_streams=cfg.streams,
        e2e_streams_ms_p50=e2e_n["total_ms"]["p50"],
        e2e_streams_ms_p95=e2e_n["total_ms"]["p95"],
        e2e_streams_ms_p99=e2e_n["total_ms"]["p99"],
        e2e_breakdown_ms={k: v["p50"] for k, v in e2e_1["components_ms"].items()},
    )
    w = e2e_1.pop("wire")
    e2e_n.pop("wire")
    wire = {
        "nominal_bps": model.bitrate,
        "measured_bps": w["publisher_wire_bps"],
        "listener_bps": w["listener_wire_bps"],
        "payload_bps": w["payload_bps"],
        "predicted_bps": w["predicted_wire_bps"],
        "overhead_ratio": w["publisher_wire_bps"] / model.bitrate,
        **{k: w[k] for k in ("packets", "codes_packets", "frames_per_packet_mean", "payload_bytes", "note")},
    }
    machine["loadavg_end"] = loadavg()
    warnings = []
    load = max(machine["loadavg_start"] or [0.0])
    if machine["cpu_count"] and load > machine["cpu_count"]:
        warnings.append(
            f"load average {load:g} > {machine['cpu_count']} CPUs: other processes share the cores; "
            "multi-threaded timings of small steps suffer most (try --threads 1)"
        )
    machine["warnings"] = warnings
    return {
        "schema": 1,
        "quick": cfg.quick,
        "config": {k: v for k, v in vars(cfg).items()},
        "machine": machine,
        "model": model_summary(model, cfg.model),
        "signal": {
            "description": "log chirp 80 Hz..0.4 sr + 220 Hz harmonic tone with tremolo + 40 ms noise bursts",
            "seed": 0,
            "seconds": cfg.seconds,
            "e2e_seconds": x_e2e.shape[-1] / sr,
        },
        "latency": lat,
        "cost": cost["cost"],
        "exactness": cost["exactness"],
        "per_hop_ms": cost["per_hop_ms"],
        "e2e": {"single": e2e_1, "concurrent": e2e_n},
        "wire": wire,
        "stage_seconds": stage_seconds,
        "elapsed_s": time.perf_counter() - started,
    }


def run(args: argparse.Namespace) -> int:
    """Entry point of ``snac-stream bench`` (parsed arguments in, exit status out)."""
    from rich.console import Console

    console = Console()
    if not console.is_terminal:  # files and pipes: wide enough for the tables
        console = Console(width=150)
    err = Console(stderr=True)
    cfg = BenchConfig.from_args(args)
    if (
        cfg.seconds <= 0
        or cfg.e2e_seconds <= 0
        or cfg.streams < 1
        or (cfg.threads is not None and cfg.threads < 1)
    ):
        err.print(
            "snac-stream bench: error: --seconds, --e2e-seconds, --streams, --repeats, --threads must be > 0"
        )
        return 2
    if cfg.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            err.print("snac-stream bench: error: --device cuda but torch.cuda.is_available() is False")
            return 2
    malloc_tuned = False
    if args.tune_malloc:
        from snac_stream.runtime import tune_allocator

        malloc_tuned = tune_allocator()
        if not malloc_tuned:
            err.print("[yellow]warning: --tune-malloc: mallopt not available (not glibc?)[/yellow]")
    if cfg.model == DEFAULT_MODEL:
        err.print(
            f"[yellow]model {DEFAULT_MODEL}: the published 24 kHz architecture with SEEDED RANDOM weights "
            "(shapes, rates and timings are real; pass --model for a checkpoint)[/yellow]"
        )
    from snac_model import CheckpointError

    try:
        result = run_bench(cfg, malloc_tuned, show_progress=True)
    except (CheckpointError, ValueError) as e:
        err.print(f"snac-stream bench: error: {e}")
        return 2
    from .bench_report import plot, render

    render(result, console)
    if cfg.json_path:
        from .bench_common import write_json

        write_json(cfg.json_path, result, default=_json_default)
        console.print(f"wrote {cfg.json_path}")
    if cfg.plot_path:
        plot(result, cfg.plot_path)
        console.print(f"wrote {cfg.plot_path}")
    return 0


def _json_default(o):
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, tuple | set):
        return list(o)
    return str(o)


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
        help="glibc mallopt(M_MMAP_MAX=0, M_TRIM_THRESHOLD=max) before running (docs/design.md, Engines)",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())

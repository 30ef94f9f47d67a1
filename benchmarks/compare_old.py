"""The engine before and after a change, in one run: per-hop compute, exactness, kernels, lines.

``python -m benchmarks.compare_old --old DIR [--new DIR] [--quick] [--rounds N] [--seconds S] [--json FILE]``

``DIR`` is a checkout of snac-stream (the pre-restructure engine is commit 5f8c96b:
``git worktree add /tmp/snac-old 5f8c96b``); ``--new`` defaults to this checkout. Each side runs
in its own fresh interpreter (``benchmarks/_compare_worker.py`` with ``PYTHONPATH`` at its
checkout; the ``snac_stream.__file__`` it imported is checked and reported), with the same
settings: one torch thread, glibc's allocator tuned (``MALLOC_MMAP_MAX_=0``,
``MALLOC_TRIM_THRESHOLD_=2^31-1``, what ``snac_stream.runtime.tune_allocator`` sets), torch's
huge pages on (``THP_MEM_ALLOC_ENABLE=1``), the same environment otherwise. Old and new
alternate over ``--rounds`` rounds (the first side swaps every round) so that the machine's
noise hits both. On the 24 kHz architecture (``random_model("24khz")``, float32) it reports,
per configuration (decode at one coarse frame = 2048 samples = 4 ticks, and at one tick = 512
samples; encode at one coarse frame), the per-hop compute p50/p99 of old and new (hops of all
rounds pooled) and new/old; whether both streams equal the offline model (float32: audio
within 1e-4, at most 1% of codes flipped at near-ties) and each other; the kernels each used;
and the engine's non-blank lines of ``.py`` and ``.c`` before and after (:data:`ENGINE_FILES`).
The JSON goes to ``--json`` (default ``benchmarks/results/compare_old.json``; ``--quick``: none).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .bench_common import cpu_model, loadavg, percentiles, write_json

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("_compare_worker.py")
RESULTS = ROOT / "benchmarks" / "results" / "compare_old.json"
AUDIO_TOL = 1e-4  # float32 streaming vs offline (tests/engine/test_stream_exact.py: F32_AUDIO_TOL)
MAX_FLIP_FRACTION = 0.01  # float32 codes flipped at near-ties (F32_MAX_FLIP_FRACTION there)
# the engine's files in each layout (snac_stream/...): the layout is told by which files exist
ENGINE_FILES = {
    "pre-restructure (5f8c96b)": [
        *(
            f"{name}.py"
            for name in "streaming conv attention noise fastops build quantizer kernels encoder decoder "
            "token_decoder tokens latency multistream batcher".split()
        ),
        "native/",
    ],
    "restructured (ops/, kernels/, engine/)": ["ops/", "kernels/", "engine/"],
}
SETTINGS_ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TRIM_THRESHOLD_": str(2**31 - 1),
    "THP_MEM_ALLOC_ENABLE": "1",
    "PYTHONDONTWRITEBYTECODE": "1",  # leave the checkouts as they are
}
DROPPED_ENV = ("PYTHONPATH", "SNAC_STREAM_KERNELS", "MALLOC_", "THP_", "OMP_", "MKL_")
CPU_FLAGS = (
    "avx2",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512dq",
    "avx512_bf16",
    "avx_ne_convert",
    "amx_bf16",
)


class CheckoutError(ValueError):
    """A ``--old`` / ``--new`` folder that is not a snac-stream checkout; the message says what to do."""


def check_checkout(path: Path, flag: str) -> Path:
    path = path.expanduser().resolve()
    if not (path / "snac_stream" / "__init__.py").is_file() or not (path / "snac_model").is_dir():
        raise CheckoutError(
            f"{flag} {path}: not a snac-stream checkout (no snac_stream/__init__.py and snac_model/ there); "
            "for the pre-restructure engine run: git -C <repo> worktree add /tmp/snac-old 5f8c96b"
        )
    return path


# ----------------------------------------------------------------------------- lines


def engine_lines(root: Path) -> dict:
    """Non-blank lines of ``.py`` and ``.c`` of the engine files under ``root/snac_stream`` in the
    layout found there: ``{"layout", "files": {path: lines}, "py", "c", "total"}``."""
    pkg = root / "snac_stream"
    found = [
        (name, entries) for name, entries in ENGINE_FILES.items() if all((pkg / e).exists() for e in entries)
    ]
    if not found:
        return {"layout": "unknown", "files": {}, "py": 0, "c": 0, "total": 0}
    layout, entries = found[0]
    files = []
    for e in entries:
        p = pkg / e
        files += sorted(q for q in p.rglob("*") if q.suffix in (".py", ".c")) if e.endswith("/") else [p]
    counts = {
        str(f.relative_to(root)): sum(1 for line in f.read_text().splitlines() if line.strip())
        for f in files
        if f.is_file() and "__pycache__" not in f.parts
    }
    py = sum(n for f, n in counts.items() if f.endswith(".py"))
    c = sum(n for f, n in counts.items() if f.endswith(".c"))
    return {"layout": layout, "files": counts, "py": py, "c": c, "total": py + c}


# ----------------------------------------------------------------------------- runs


def worker_env(checkout: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(DROPPED_ENV)}
    return {**env, **SETTINGS_ENV, "PYTHONPATH": str(checkout)}


def run_side(checkout: Path, seconds: float, out: Path, timeout: float) -> dict:
    """One fresh worker process on ``checkout``; its result (outputs saved under ``out``)."""
    out.mkdir(parents=True)
    cmd = [sys.executable, str(WORKER), "--seconds", str(seconds), "--out", str(out)]
    proc = subprocess.run(
        cmd, cwd=out, env=worker_env(checkout), capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        raise RuntimeError(f"worker on {checkout} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    result = json.loads((out / "result.json").read_text())
    imported = Path(result["snac_stream_file"]).resolve()
    if not imported.is_relative_to(checkout):
        raise RuntimeError(f"worker meant for {checkout} imported snac_stream from {imported}")
    return result


def compare_outputs(a: Path, b: Path, configs: dict) -> dict:
    """Old against new output of each configuration: max |audio difference|, code mismatches."""
    out = {}
    for name, entry in configs.items():
        if entry["part"] == "decode":
            x, y = np.load(a / f"{name}.npy"), np.load(b / f"{name}.npy")
            same = x.shape == y.shape
            out[name] = {"same_shape": same, "max_abs": float(np.abs(x - y).max()) if same else None}
        else:
            levels = sorted(p.name for p in a.glob(f"{name}_*.npy"))
            pairs = [(np.load(a / n), np.load(b / n)) for n in levels]
            same = all(x.shape == y.shape for x, y in pairs)
            mismatches = sum(int((x != y).sum()) for x, y in pairs) if same else None
            out[name] = {"same_shape": same, "code_mismatches": mismatches}
    return out


def exact(entry: dict) -> bool:
    """Whether one side's stream equals the offline model within the float32 tolerance."""
    if entry["part"] == "decode":
        return entry["length"] == entry["offline_length"] and entry["max_abs_vs_offline"] <= AUDIO_TOL
    return entry["shapes_equal"] and entry["code_mismatches"] <= MAX_FLIP_FRACTION * entry["codes"]


def summarize(sides: dict[str, list[dict]]) -> dict:
    """Per configuration: pooled p50/p99 of old and new, new/old, per-round p50s (their best, and
    the median over rounds of new/old within a round), exactness."""
    configs = {}
    for name, first in sides["old"][0]["configs"].items():
        row: dict = {
            "part": first["part"],
            "hop_ticks": first["hop_ticks"],
            "hop_samples": first["hop_samples"],
        }
        for side, results in sides.items():
            entries = [r["configs"][name] for r in results]
            stats = percentiles([ms for e in entries for ms in e["ms"]], qs=(50, 99))
            row[side] = {
                "p50_ms": stats["p50"],
                "p99_ms": stats["p99"],
                "mean_ms": stats["mean"],
                "hops": stats["n"],
                "round_p50_ms": [percentiles(e["ms"], qs=(50,))["p50"] for e in entries],
                "exact": all(exact(e) for e in entries),
            }
            if first["part"] == "decode":
                row[side]["max_abs_vs_offline"] = max(e["max_abs_vs_offline"] for e in entries)
            else:
                row[side]["code_mismatches_vs_offline"] = max(e["code_mismatches"] for e in entries)
                row[side]["codes"] = entries[0]["codes"]
        row["ratio_p50"] = row["new"]["p50_ms"] / row["old"]["p50_ms"]
        # robust to load that drifts between rounds: each round's old and new ran back to back
        paired = [n / o for o, n in zip(row["old"]["round_p50_ms"], row["new"]["round_p50_ms"], strict=True)]
        row["ratio_p50_paired"] = float(np.median(paired))
        for side in ("old", "new"):
            row[side]["best_round_p50_ms"] = min(row[side]["round_p50_ms"])
        row["ratio_p99"] = row["new"]["p99_ms"] / row["old"]["p99_ms"]
        configs[name] = row
    return configs


def machine(worker: dict) -> dict:
    """The CPU (model, vector extensions) and software; ``worker``: one side's result."""
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    return {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_capability": worker["cpu_capability"],
        "cpu_flags": {f: f in flags for f in CPU_FLAGS},
        "torch": worker["torch"],
        "python": worker["python"],
        "loadavg_start": loadavg(),
    }


def compare(old: Path, new: Path, rounds: int, seconds: float, quick: bool) -> dict:
    """Run the rounds (see the module doc) and gather everything into the JSON-able result."""
    started = time.perf_counter()
    load_start = loadavg()
    sides: dict[str, list[dict]] = {"old": [], "new": []}
    with tempfile.TemporaryDirectory(prefix="compare_old-") as tmp:
        for r in range(rounds):
            order = ("old", "new") if r % 2 == 0 else ("new", "old")
            for side in order:
                checkout = old if side == "old" else new
                print(f"round {r + 1}/{rounds}: {side} ({checkout})", file=sys.stderr, flush=True)
                sides[side].append(run_side(checkout, seconds, Path(tmp) / f"{r}-{side}", 60 + 30 * seconds))
        cross = compare_outputs(Path(tmp) / "0-old", Path(tmp) / "0-new", sides["old"][0]["configs"])
    configs = summarize(sides)
    for name, row in configs.items():
        c = cross[name]
        if row["part"] == "decode":
            c["exact"] = c["same_shape"] and c["max_abs"] <= AUDIO_TOL
        else:
            c["exact"] = c["same_shape"] and c["code_mismatches"] <= MAX_FLIP_FRACTION * row["old"]["codes"]
        row["old_vs_new"] = c
    info = {side: results[0] for side, results in sides.items()}
    lines = {"old": engine_lines(old), "new": engine_lines(new)}
    result = {
        "schema": 1,
        "quick": quick,
        "rounds": rounds,
        "seconds_per_config": info["new"]["audio_samples"] / info["new"]["sample_rate"],
        "model": "random:24khz (seeded random weights, float32)",
        "machine": {**machine(info["new"]), "loadavg_start": load_start, "loadavg_end": loadavg()},
        "settings": {
            "threads": {side: i["threads"] for side, i in info.items()},
            "env": SETTINGS_ENV,
            "anon_huge_pages_kib": {
                side: [r["anon_huge_pages_kib"] for r in rs] for side, rs in sides.items()
            },
            "note": "each side a fresh process per round, alternating which goes first",
        },
        "checkouts": {
            side: {
                "path": str(old if side == "old" else new),
                "snac_stream_file": i["snac_stream_file"],
                "snac_model_file": i["snac_model_file"],
                "weights_fingerprint": i["fingerprint"],
                "kernels": i["kernels"],
            }
            for side, i in info.items()
        },
        "same_weights": info["old"]["fingerprint"] == info["new"]["fingerprint"],
        "configs": configs,
        "exact": all(row[s]["exact"] for row in configs.values() for s in ("old", "new", "old_vs_new")),
        "tolerance": {"audio_max_abs": AUDIO_TOL, "code_flip_fraction": MAX_FLIP_FRACTION},
        "engine_lines": {
            **lines,
            "ratio_new_over_old": lines["new"]["total"] / max(1, lines["old"]["total"]),
        },
        "elapsed_s": time.perf_counter() - started,
    }
    return result


# ----------------------------------------------------------------------------- report

LABELS = {
    "decode_frame": "decode, 1 coarse frame (2048 samples, 4 ticks)",
    "decode_tick": "decode, 1 tick (512 samples)",
    "encode_frame": "encode, 1 coarse frame (2048 samples)",
}


def report(r: dict) -> str:
    m = r["machine"]
    flags = ", ".join(f for f, on in m["cpu_flags"].items() if on)
    lines = [
        f"old vs new engine: {r['model']}; {r['rounds']} rounds x {r['seconds_per_config']:.1f} s per "
        f"configuration; 1 torch thread, allocator tuned, huge pages on",
        f"CPU: {m['cpu']} ({m['cpu_count']} CPUs; {flags}; torch {m['torch']} capability "
        f"{m['cpu_capability']}); load {m['loadavg_start']} -> {m['loadavg_end']}",
    ]
    for side, c in r["checkouts"].items():
        k = c["kernels"]
        lines.append(
            f"{side}: {c['snac_stream_file']}  kernels {k['kernels']} (GEMMs {k['gemm']}, Snake {k['snake']})"
        )
    heads = [
        "old p50",
        "new p50",
        "new/old",
        "old p99",
        "new p99",
        "new/old",
        "paired",
        "best old",
        "best new",
    ]
    lines += [
        "",
        f"| {'per-hop compute, ms':46} | " + " | ".join(f"{h:>8}" for h in heads) + " |",
        f"|{'-' * 48}|" + "---------:|" * len(heads),
    ]
    for name, row in r["configs"].items():
        o, n = row["old"], row["new"]
        cells = [o["p50_ms"], n["p50_ms"], row["ratio_p50"], o["p99_ms"], n["p99_ms"], row["ratio_p99"]]
        cells += [row["ratio_p50_paired"], o["best_round_p50_ms"], n["best_round_p50_ms"]]
        lines.append(f"| {LABELS.get(name, name):46} | " + " | ".join(f"{v:8.2f}" for v in cells) + " |")
    lines.append(
        "(hops of all rounds pooled; paired: median over rounds of new p50 / old p50 within the round; "
        "best: the lowest round p50)"
    )
    lines.append("")
    for name, row in r["configs"].items():
        o, n, x = row["old"], row["new"], row["old_vs_new"]
        if row["part"] == "decode":
            detail = (
                f"max |stream - offline| old {o['max_abs_vs_offline']:.2g}, new "
                f"{n['max_abs_vs_offline']:.2g}; |old - new| {x['max_abs']:.2g}"
            )
        else:
            detail = (
                f"codes differing from offline: old {o['code_mismatches_vs_offline']}, new "
                f"{n['code_mismatches_vs_offline']} of {o['codes']}; old vs new {x['code_mismatches']}"
            )
        ok = "exact" if o["exact"] and n["exact"] and x["exact"] else "NOT EXACT"
        lines.append(f"{name}: {ok} ({detail})")
    el = r["engine_lines"]
    lines.append(
        f"\nengine lines (non-blank .py + .c): old {el['old']['total']} ({el['old']['layout']}: py "
        f"{el['old']['py']}, c {el['old']['c']}), new {el['new']['total']} ({el['new']['layout']}: py "
        f"{el['new']['py']}, c {el['new']['c']}), new/old {el['ratio_new_over_old']:.2f}"
    )
    lines.append(f"same weights: {r['same_weights']}; total {r['elapsed_s']:.0f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.compare_old", description=__doc__.split("\n")[0])
    p.add_argument(
        "--old", type=Path, required=True, help="checkout of the engine before (e.g. /tmp/snac-old)"
    )
    p.add_argument("--new", type=Path, default=ROOT, help="checkout of the engine after (default: this one)")
    p.add_argument("--quick", action="store_true", help="2 rounds of 1.5 s per configuration (a test run)")
    p.add_argument("--rounds", type=int, default=None, help="old/new rounds (default 6; --quick: 2)")
    p.add_argument(
        "--seconds", type=float, default=None, help="audio per configuration (default 20; --quick: 1.5)"
    )
    p.add_argument("--json", metavar="FILE", default=None, help=f"write the results here (default {RESULTS})")
    args = p.parse_args(argv)
    rounds = args.rounds if args.rounds is not None else (2 if args.quick else 6)
    seconds = args.seconds if args.seconds is not None else (1.5 if args.quick else 20.0)
    if rounds < 1 or seconds <= 0:
        p.error("--rounds must be at least 1 and --seconds above 0")
    try:
        old, new = check_checkout(args.old, "--old"), check_checkout(args.new, "--new")
    except CheckoutError as e:
        p.error(str(e))
    result = compare(old, new, rounds, seconds, args.quick)
    print(report(result))
    path = args.json or (None if args.quick else RESULTS)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_json(path, result)
        print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()

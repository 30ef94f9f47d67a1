"""Files benchmark: an hour of audio through ``snac-stream encode``/``decode`` in bounded memory,
against the reference package's offline encode, and a directory of short clips batched vs one by one.

``python -m benchmarks.files [--quick] [--minutes M] [--clips N] [--json FILE]`` (or
``snac-stream bench files ...``), on the 24 kHz architecture with seeded random weights (memory
and speed do not depend on the weights). The audio is generated locally: a speech-like synthetic
signal (:func:`snac_stream.audio.files.demo_signal`: voiced syllables with formants, noise bursts,
pauses), 24 kHz 16-bit WAV. Every job runs in a fresh process, whose own peak RSS
(``getrusage(RUSAGE_SELF).ru_maxrss``) it reports with its wall time:

1. a ``--minutes`` file (default 60) encoded to ``.snac`` and decoded back to WAV with the real
   CLI (streaming engines, block by block): peak RSS (target < 1 GiB each) and real-time factor;
2. the reference ``snac`` package's offline ``encode`` of pieces of growing length (default 15, 60
   and 180 s; it holds the whole signal's activations, so an hour does not fit): peak RSS, its
   growth per audio second, and the longest piece that would fit in this machine's memory;
3. ``--clips`` short clips (default 200, 1-3 s) in a folder tree, encoded and decoded one by one
   (``--jobs 1``), batched on one thread (``--jobs 8 --workers 1``) and batched on one worker
   thread per core (``--jobs 8``, the default), best of ``--repeats``: wall and CPU time of the
   work itself (the run's own summary, without process start and model load).

The CLI runs as shipped (one torch thread, its allocator setting, huge pages); the reference runs
with glibc's default allocator and 1 torch thread, as its users run it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODEL = "random:24khz"
REF_SCRIPT = r"""
import json, resource, sys, time
import torch
torch.set_num_threads(1)
import snac
from snac_model import PUBLISHED_CONFIGS
from snac_stream.audio.files import demo_blocks
import numpy as np
seconds = float(sys.argv[1])
torch.manual_seed(0)
model = snac.SNAC(**PUBLISHED_CONFIGS["24khz"]).eval()
audio = torch.from_numpy(np.concatenate(list(demo_blocks(24000, seconds))))[None, None]
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
with torch.inference_mode():
    codes = model.encode(audio)
wall = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": seconds, "wall_s": wall, "peak_rss_kib": peak, "before_encode_rss_kib": base,
                  "frames": codes[0].shape[-1]}))
"""


def job(argv: list[str]) -> int:
    """``_job OUT.json -- ARGS``: run ``snac-stream ARGS`` in this process, then record its exit
    status, wall time and peak RSS (the whole process, model load included) in OUT.json."""
    out, args = argv[0], argv[2:]
    from snac_stream.cli.main import main

    t = time.perf_counter()
    code = main(args)
    wall = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    Path(out).write_text(json.dumps({"rc": code, "wall_s": wall, "peak_rss_kib": peak}))
    return 0


def run_cli(args: list[str], tmp: Path) -> dict:
    """``snac-stream ARGS --json`` in a fresh process: its summary plus exit status, wall, peak RSS."""
    out = tmp / f"job-{time.monotonic_ns()}.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.files", "_job", str(out), "--", *args, "--json", "--quiet"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"snac-stream {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(out.read_text())
    result["summary"] = json.loads(proc.stdout)
    if result["rc"] != 0:
        raise RuntimeError(f"snac-stream {' '.join(args)} exited {result['rc']}:\n{proc.stderr[-3000:]}")
    return result


def run_reference(seconds: float) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", REF_SCRIPT, str(seconds)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        env={k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "THP_"))},
    )
    if proc.returncode != 0:
        return {
            "seconds": seconds,
            "error": proc.stderr.strip().splitlines()[-1:] or [f"rc {proc.returncode}"],
        }
    return json.loads(proc.stdout)


# ----------------------------------------------------------------------------- inputs


def write_long(path: Path, seconds: float) -> None:
    from snac_stream.audio.files import WavWriter, demo_blocks

    with WavWriter(path, 24000, format="WAV", subtype="PCM_16") as w:
        for piece in demo_blocks(24000, seconds):
            w.write(piece)


def write_clips(root: Path, n: int, lo: float, hi: float) -> float:
    """``n`` clips of ``lo..hi`` seconds in ``root/speakerNN/``; their total seconds."""
    import numpy as np

    from snac_stream.audio.files import WavWriter, demo_signal

    rng = np.random.default_rng(0)
    total = 0.0
    for i in range(n):
        seconds = float(rng.uniform(lo, hi))
        path = root / f"speaker{i % 10:02d}" / f"clip{i:04d}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        x = demo_signal(24000, seconds, seed=i)
        with WavWriter(path, 24000, format="WAV", subtype="PCM_16") as w:
            w.write(x)
        total += x.shape[0] / 24000
    return total


# ----------------------------------------------------------------------------- sections


def long_file(tmp: Path, minutes: float, log) -> dict:
    src, codes, back = tmp / "long.wav", tmp / "long.snac", tmp / "long.out.wav"
    seconds = minutes * 60
    log(f"writing {minutes:g} min of speech-like audio ({src})")
    write_long(src, seconds)
    log("encoding it (fresh process) ...")
    enc = run_cli(["encode", str(src), "-o", str(codes), "--model", MODEL], tmp)
    log(f"  {enc['summary']['wall_seconds']:.0f} s, peak RSS {enc['peak_rss_kib'] / 1024:.0f} MiB; decoding")
    dec = run_cli(["decode", str(codes), "-o", str(back), "--model", MODEL], tmp)
    log(f"  {dec['summary']['wall_seconds']:.0f} s, peak RSS {dec['peak_rss_kib'] / 1024:.0f} MiB")
    import soundfile as sf

    out_frames = sf.info(str(back)).frames
    result = {"audio_seconds": seconds, "snac_bytes": codes.stat().st_size, "decoded_samples": out_frames}
    for name, r in (("encode", enc), ("decode", dec)):
        work = r["summary"]["wall_seconds"]
        result[name] = {
            "cpu_s": r["summary"]["cpu_seconds"],
            "peak_rss_mib": r["peak_rss_kib"] / 1024,
            "under_1_gib": r["peak_rss_kib"] < 1 << 20,
            "wall_s": work,
            "process_wall_s": r["wall_s"],
            "rtf": work / seconds,
        }
    result["decoded_length_matches"] = out_frames == int(seconds * 24000)
    for p in (src, codes, back):
        p.unlink()
    return result


def reference(lengths: list[float], log) -> dict:
    runs = []
    for seconds in lengths:
        log(f"reference snac offline encode of {seconds:g} s (fresh process) ...")
        runs.append(run_reference(seconds))
        log(f"  {runs[-1]}")
    ok = [r for r in runs if "error" not in r]
    out: dict = {"runs": ok, "failed": [r for r in runs if "error" in r]}
    if len(ok) >= 2:
        a, b = ok[-2], ok[-1]
        per_s = (b["peak_rss_kib"] - a["peak_rss_kib"]) / 1024 / (b["seconds"] - a["seconds"])
        fixed = a["peak_rss_kib"] / 1024 - per_s * a["seconds"]
        mem_mib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
        out.update(
            peak_rss_mib_per_audio_second=per_s,
            longest_measured_s=b["seconds"],
            longest_measured_peak_mib=b["peak_rss_kib"] / 1024,
            machine_memory_mib=mem_mib,
            longest_that_fits_s=(mem_mib - fixed) / per_s if per_s > 0 else None,
            one_hour_needs_mib=fixed + per_s * 3600,
            rtf=b["wall_s"] / b["seconds"],
        )
    return out


MODES = {
    "one_by_one": ["--jobs", "1"],
    "batched": ["--jobs", "8", "--workers", "1"],
    "batched_per_core": ["--jobs", "8"],  # the default: one worker thread per core
}


def clips(tmp: Path, n: int, lo: float, hi: float, repeats: int, log, modes=tuple(MODES)) -> dict:
    src = tmp / "clips"
    total = write_clips(src, n, lo, hi)
    log(f"{n} clips, {total:.0f} s of audio in all")
    modes = {m: MODES[m] for m in modes}
    result: dict = {"clips": n, "audio_seconds": total, "clip_seconds": [lo, hi], "encode": {}, "decode": {}}
    for rep in range(repeats):
        for name, flags in modes.items():
            codes = tmp / f"codes-{name}"
            enc = run_cli(["encode", str(src), "-o", str(codes), "--model", MODEL, *flags], tmp)
            dec = run_cli(
                ["decode", str(codes), "-o", str(tmp / f"audio-{name}"), "--model", MODEL, *flags], tmp
            )
            for part, r in (("encode", enc), ("decode", dec)):
                s = r["summary"]
                assert s["files"] == n and s["failed"] == 0, s
                best = result[part].setdefault(name, {"wall_s": float("inf"), "cpu_s": float("inf")})
                best["wall_s"] = min(best["wall_s"], s["wall_seconds"])  # best of the repeats, each
                best["cpu_s"] = min(best["cpu_s"], s["cpu_seconds"])
                best["rtf"] = best["wall_s"] / total
                best["peak_rss_mib"] = r["peak_rss_kib"] / 1024
                best["forwards_by_batch_size"] = s["forwards_by_batch_size"]
            log(f"  {name} (run {rep + 1}): encode {enc['summary']['wall_seconds']:.1f} s, "
                f"decode {dec['summary']['wall_seconds']:.1f} s")  # fmt: skip
    for part in ("encode", "decode"):
        r = result[part]
        for name in modes:
            if name != "one_by_one":
                r[f"gain_{name}"] = r["one_by_one"]["wall_s"] / r[name]["wall_s"]
                r[f"cpu_gain_{name}"] = r["one_by_one"]["cpu_s"] / r[name]["cpu_s"]
    return result


# ----------------------------------------------------------------------------- main


def machine() -> dict:
    import torch

    from benchmarks.bench_common import cpu_model, loadavg

    return {
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "loadavg_start": loadavg(),
        "threads": "1 per process (snac-stream's runtime; the reference set to 1)",
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_job"]:
        return job(argv[1:])
    p = argparse.ArgumentParser(prog="python -m benchmarks.files", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="seconds, not an hour (for tests)")
    p.add_argument(
        "--minutes", type=float, default=None, help="length of the long file (default 60; quick 0.25)"
    )
    p.add_argument("--ref-seconds", default=None, help="reference piece lengths, e.g. 15,60,180 (quick 2,4)")
    p.add_argument("--clips", type=int, default=None, help="short clips (default 200; quick 6)")
    p.add_argument(
        "--repeats", type=int, default=None, help="runs per clip mode, best kept (default 2; quick 1)"
    )
    p.add_argument("--skip", default="", help="comma-separated sections to skip: long, reference, clips")
    p.add_argument("--json", metavar="FILE", help="write the results here")
    args = p.parse_args(argv)
    q = args.quick
    minutes = args.minutes if args.minutes is not None else (0.25 if q else 60.0)
    refs = [float(s) for s in (args.ref_seconds or ("2,4" if q else "15,60,180")).split(",")]
    n_clips = args.clips if args.clips is not None else (6 if q else 200)
    repeats = args.repeats if args.repeats is not None else (1 if q else 2)
    skip = set(filter(None, args.skip.split(",")))
    start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - start:6.0f} s] {msg}", file=sys.stderr, flush=True)

    result: dict = {"model": MODEL, "quick": q, "machine": machine()}
    with tempfile.TemporaryDirectory(prefix="snac-files-bench-") as d:
        tmp = Path(d)
        if "long" not in skip:
            result["long_file"] = long_file(tmp, minutes, log)
        if "reference" not in skip:
            result["reference_offline_encode"] = reference(refs, log)
        if "clips" not in skip:
            lo, hi = (0.5, 1.0) if q else (1.0, 3.0)
            modes = ("one_by_one", "batched") if q else tuple(MODES)
            result["clips"] = clips(tmp, n_clips, lo, hi, repeats, log, modes)
    result["machine"]["loadavg_end"] = machine()["loadavg_start"]
    result["total_s"] = time.perf_counter() - start
    text = json.dumps(result, indent=2)
    if args.json:
        Path(args.json).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

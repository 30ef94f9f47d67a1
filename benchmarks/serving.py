"""Serving benchmark: N simulated LLM TTS streams (Orpheus-style tokens) decoded at once, played in real time.

    python -m benchmarks.serving [--quick] [--streams 1,8,32] [--no-find-max] [--device cpu|cuda]
                                 [--seconds 4] [--rate 90:200] [--jitter 0.5] [--stagger 2] [--json FILE]
    snac-stream bench serving ARGS

1. **Granularity** (one stream, as fast as it goes): the cost per audio second of
   :class:`~snac_stream.TokenDecoder` pushed one token at a time with one-frame steps (the
   default), one frame (7 tokens) at a time, and one token at a time with per-tick steps; the
   ratios, in one run; the first audio in tokens for each granularity and for the Orpheus
   window; the whole drop-in path (``tokens_decoder_sync``, text pieces).
2. **Serving**: for each N, the same N requests (staggered starts and lengths, LM rates
   uniform in ``--rate`` with jitter) through three decoders: ours (``tokens_decoder`` on a shared
   :class:`~snac_stream.engine.token_pool.TokenPool`), the Orpheus sliding window decoded per
   request, and the same windows batched across requests (Baseten-style: up to 64, 15 ms gather).
   Each request is played back in real time from its first audio: time to first audio (after
   the first token), underruns (playback starved), compute and process CPU per audio second,
   exactness (ours: int16 samples against the offline decode; windows: samples never output).
   The same with playback starting once one coarse frame (85 ms) is buffered. A load is
   *sustained* when every request finishes and, with that 85 ms pre-roll, none underruns;
   ``--find-max`` (default) searches the largest sustained N per decoder (doubling, then bisecting).
3. **Window exactness**: the Orpheus window's deviation from the exact decode, on the model's
   noise-free twin (its noise restarts every window and cannot match).

Workers: ours runs ``--workers`` shards (one per core by default), the window decoders the same
number of threads; ``--threads`` torch intra-op threads (default 1), set for the whole process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import time
from dataclasses import asdict

import numpy as np
import torch

from snac_stream.engine.batcher import default_workers

from .bench_common import machine_info, model_summary, noise_free_twin, percentiles, rerun_with_huge_pages
from .serving_report import progress_line, report
from .serving_sim import (
    KEEP,
    BatchedWindows,
    OrpheusWindowParser,
    Ours,
    SlidingWindow,
    Workload,
    decode_windows,
    make_requests,
    playback,
    run_requests,
)

DEFAULT_STREAMS = (1, 8, 32)
METHODS = ("ours", "orpheus", "batched_windows")


# ----------------------------------------------------------------------------- 1. granularity


def granularity_section(model, seconds: float, repeats: int) -> dict:
    from snac_stream import TokenDecoder, codes_to_tokens, to_lm_ids
    from snac_stream.engine.token_pool import TokenPool
    from snac_stream.orpheus import CUSTOM_TOKEN_BASE, tokens_decoder_sync

    frame = model.vq_strides[0] * model.decoder_hop
    n_frames = max(4, round(seconds * model.sample_rate / frame))
    gen = torch.Generator().manual_seed(1)
    codes = [
        torch.randint(0, model.codebook_size, (1, n_frames * model.vq_strides[0] // s), generator=gen)
        for s in model.vq_strides
    ]
    flat = codes_to_tokens(codes, model.vq_strides)[0].tolist()
    per = len(flat) // n_frames
    audio_s = n_frames * frame / model.sample_rate

    def run(hop, size) -> tuple[int, torch.Tensor]:
        tok = TokenDecoder(model, seed=0, hop_ticks=hop)
        first, parts = None, []
        for k in range(0, len(flat), size):
            y = tok.push(flat[k : k + size])
            if first is None and y.shape[-1]:
                first = k + size
            parts.append(y)
        parts.append(tok.flush())
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        return first, torch.cat(parts, dim=-1)

    pool = TokenPool(model, workers=1)
    lm = to_lm_ids(torch.tensor([flat]), model.vq_strides, model.codebook_size)[0].tolist()
    pieces = [f"<custom_token_{i - CUSTOM_TOKEN_BASE}>" for i in lm]
    variants = {
        "token_frame_hop": lambda: run(None, 1),
        "frame_frame_hop": lambda: run(None, per),
        "token_tick_hop": lambda: run(1, 1),
        "dropin_text_per_token": lambda: (None, b"".join(tokens_decoder_sync(pieces, pool=pool, seed=0))),
    }
    wall, cpu, out = {}, {}, {}
    for _ in range(repeats):  # interleaved, best of each (process CPU: the pool's worker included)
        for name, fn in variants.items():
            t0, c0 = time.perf_counter(), time.process_time()
            out[name] = fn()
            wall[name] = min(wall.get(name, math.inf), (time.perf_counter() - t0) / audio_s)
            cpu[name] = min(cpu.get(name, math.inf), (time.process_time() - c0) / audio_s)
    pool.close()
    window = OrpheusWindowParser()
    orpheus_first = next(k + 1 for k, p in enumerate(pieces) if window.feed(p) is not None)

    def ratios(rtf: dict) -> dict:
        return {
            "per_token_over_per_frame": rtf["token_frame_hop"] / rtf["frame_frame_hop"],
            "per_token_tick_hop_over_per_frame": rtf["token_tick_hop"] / rtf["frame_frame_hop"],
            "dropin_over_per_frame": rtf["dropin_text_per_token"] / rtf["frame_frame_hop"],
        }

    return {
        "audio_s": audio_s,
        "repeats": repeats,
        "rtf": wall,
        "cpu_rtf": cpu,
        "ratios": ratios(wall),
        "cpu_ratios": ratios(cpu),
        "target_per_token_over_per_frame": 1.5,
        "first_audio_tokens": {
            "tick_hop": out["token_tick_hop"][0],
            "frame_hop": out["token_frame_hop"][0],
            "orpheus_window": orpheus_first,
        },
        "per_token_equals_per_frame_max_abs": float(
            (out["token_frame_hop"][1] - out["frame_frame_hop"][1]).abs().max()
        ),
        "dropin_samples": len(out["dropin_text_per_token"][1]) // 2,
    }


# ----------------------------------------------------------------------------- 2. serving


class Serving:
    """Runs and summarises (decoder, N) pairs on the prefixes of one list of requests."""

    def __init__(self, model, workload: Workload, workers: int, exact_requests: int, max_n: int):
        self.model, self.workload, self.workers = model, workload, workers
        self.exact_requests = exact_requests
        self.requests = make_requests(model, max_n, workload)
        self.frame = model.vq_strides[0] * model.decoder_hop
        self.results: dict[tuple[str, int], dict] = {}
        self._refs: dict[int, np.ndarray] = {}

    def decoder(self, method: str, n: int):
        if method == "ours":
            return Ours(self.model, self.workers, max_streams=max(n, 1))
        if method == "orpheus":
            return SlidingWindow(self.model, self.workers)
        return BatchedWindows(self.model, self.workers)

    def run(self, method: str, n: int) -> dict:
        if (method, n) in self.results:
            return self.results[method, n]
        requests = self.requests[:n]
        nominal = max(r.start_s + float(r.times[-1]) for r in requests)
        cap = 2 * nominal + 5
        decoder = self.decoder(method, n)
        cpu0 = time.process_time()
        try:
            traces, wall = asyncio.run(run_requests(decoder, requests, self.exact_requests, cap))
        finally:
            decoder.close()
        cpu = time.process_time() - cpu0
        result = self.summary(method, decoder, requests, traces, wall, cpu, cap)
        self.results[method, n] = result
        print(f"  {method:>16} N={n:<3} {progress_line(result)}", file=sys.stderr, flush=True)
        return result

    def summary(self, method, decoder, requests, traces, wall, cpu, cap) -> dict:
        sr = self.model.sample_rate
        audio_s = sum(t.samples for t in traces) / sr
        plays = {
            name: [playback(t, sr, pre) for t in traces]
            for name, pre in (("first_audio", 0), ("frame_buffered", self.frame))
        }
        out = {
            "method": method,
            "streams": len(requests),
            "completed": sum(t.done for t in traces),
            "truncated": not all(t.done for t in traces),
            "cap_s": cap,
            "wall_s": wall,
            "audio_s": audio_s,
            "compute_s": decoder.compute_s,
            "compute_cpu_s": decoder.compute_cpu_s,
            "compute_per_audio_s": decoder.compute_s / audio_s if audio_s else None,
            "compute_cpu_per_audio_s": decoder.compute_cpu_s / audio_s if audio_s else None,
            "cpu_per_audio_s": cpu / audio_s if audio_s else None,
            "no_audio": sum(p is None for p in plays["first_audio"]),
            **decoder.extras(),
        }
        for name, ps in plays.items():
            got = [p for p in ps if p is not None]
            out[name] = {
                "ttfa_ms": percentiles([p["start_ms"] for p in got]),
                "requests_with_underrun": sum(p["underruns"] > 0 for p in got),
                "underruns": sum(p["underruns"] for p in got),
                "stall_ms": percentiles([p["stall_ms"] for p in got]),
                "stall_ms_total": sum(p["stall_ms"] for p in got),
            }
        out["sustained"] = bool(
            out["completed"] == len(requests)
            and out["frame_buffered"]["requests_with_underrun"] == 0
            and out["no_audio"] == 0
        )
        out["exactness"] = self.exactness(method, requests, traces)
        return out

    def reference(self, index: int) -> np.ndarray:
        """int16 samples of the exact offline decode (seed 0) of request ``index``."""
        from snac_stream.audio.pcm import to_s16le

        if index not in self._refs:
            codes = [c.to(self.model.device) for c in self.requests[index].codes]
            with torch.inference_mode():
                audio = self.model.decode(codes, seed=0).reshape(-1).float().cpu().numpy()
            self._refs[index] = np.frombuffer(to_s16le(audio), dtype="<i2").astype(np.int64)
        return self._refs[index]

    def exactness(self, method: str, requests, traces) -> dict:
        done = [(r, t) for r, t in zip(requests, traces, strict=True) if t.done]
        expected = [r.frames * self.frame for r, _ in done]
        got = [t.samples for _, t in done]
        out = {
            "requests": len(done),
            "samples_expected": sum(expected),
            "samples_out": sum(got),
            "samples_lost": sum(expected) - sum(got),
        }
        if method == "ours":
            checked = [(r, t) for r, t in done if t.pcm is not None]
            diffs = []
            for r, t in checked:
                ours = np.frombuffer(bytes(t.pcm), dtype="<i2").astype(np.int64)
                ref = self.reference(r.index)
                n = min(ours.size, ref.size)
                diffs.append(np.abs(ours[:n] - ref[:n]))
            d = np.concatenate(diffs) if diffs else np.zeros(0, dtype=np.int64)
            out.update(
                checked_requests=len(checked),
                checked_samples=int(d.size),
                max_lsb=int(d.max()) if d.size else 0,
                samples_differing=int((d > 0).sum()),
            )
        return out

    def find_max(self, method: str, limit: int) -> dict:
        """Largest sustained N (doubling from 1, then bisecting twice)."""
        good, bad, n = 0, None, 1
        while n <= limit:
            if self.run(method, n)["sustained"]:
                good, n = n, n * 2
            else:
                bad = n
                break
        for _ in range(2):
            if bad is None or bad - good <= 1:
                break
            mid = (good + bad) // 2
            if self.run(method, mid)["sustained"]:
                good = mid
            else:
                bad = mid
        return {"max_sustained": good, "first_not_sustained": bad, "limit": limit}


# ----------------------------------------------------------------------------- 3. window exactness


def window_exactness(twin, request) -> dict:
    """The Orpheus window against the exact decode, both on the noise-free twin (float)."""
    parser, windows = OrpheusWindowParser(), []
    for piece in request.pieces:
        w = parser.feed(piece)
        if w is not None:
            windows.append(w)
    out = np.concatenate([decode_windows(twin, [w])[0] for w in windows]) if windows else np.zeros(0)
    with torch.inference_mode():
        exact = twin.decode([c.to(twin.device) for c in request.codes]).reshape(-1).float().cpu().numpy()
    covered = exact[KEEP[0] : KEEP[0] + out.size]
    dev = np.abs(out - covered)
    return {
        "frames": request.frames,
        "samples_exact": int(exact.size),
        "samples_out": int(out.size),
        "missing_start_samples": KEEP[0],
        "missing_end_samples": int(exact.size - KEEP[0] - out.size),
        "first_audio_tokens": 28,
        "max_abs": float(dev.max()) if dev.size else 0.0,
        "max_lsb": float(dev.max() * 32768) if dev.size else 0.0,
        "mean_abs": float(dev.mean()) if dev.size else 0.0,
    }


# ----------------------------------------------------------------------------- main


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.serving", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="seconds: tiny requests, N = 1, 2, no search")
    p.add_argument("--streams", help="comma-separated N (default 1,8,32; quick 1,2)")
    p.add_argument(
        "--find-max",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="search the largest sustained N (default: on, off with --quick)",
    )
    p.add_argument("--search-limit", type=int, default=64, help="largest N the search tries (default 64)")
    p.add_argument("--seconds", type=float, help="mean audio seconds per request (default 4; quick 0.5)")
    p.add_argument("--rate", default="90:200", help="LM tokens/s per request, uniform LO:HI (default 90:200)")
    p.add_argument(
        "--jitter", type=float, default=0.5, help="token gap jitter, fraction of the mean gap (default 0.5)"
    )
    p.add_argument(
        "--stagger", type=float, help="request starts spread over this many seconds (default 2; quick 0.3)"
    )
    p.add_argument(
        "--zero-codes", action="store_true", help="codes from 0..4095 (Orpheus drops 0s and loses its place)"
    )
    p.add_argument(
        "--exact-requests",
        type=int,
        help="requests per run whose int16 output is checked (default 4; quick 2)",
    )
    p.add_argument("--workers", type=int, help="decoder shards / window threads (default: cores; cuda: 1)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--model", default="random:24khz", help="a 24 kHz model spec (default random:24khz)")
    p.add_argument("--malloc", choices=("tuned", "default"), default="tuned")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        built = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        p.error(
            f"--device {args.device}: CUDA is not available (torch {torch.__version__}, {built}); use cpu"
        )
    if args.device != "cpu" and not args.device.startswith("cuda"):
        p.error(f"--device must be cpu or cuda, got {args.device!r}")
    try:
        lo, hi = (float(x) for x in args.rate.split(":"))
        streams = [
            int(x)
            for x in (args.streams or ("1,2" if args.quick else ",".join(map(str, DEFAULT_STREAMS)))).split(
                ","
            )
        ]
    except ValueError:
        p.error("--rate must look like 90:200 and --streams like 1,8,32")
    if (
        not 0 < lo <= hi
        or min(streams) < 1
        or args.threads < 1
        or (args.workers is not None and args.workers < 1)
        or not 0 <= args.jitter < 1
    ):
        p.error("need 0 < rate LO <= HI, N >= 1, --threads/--workers >= 1, 0 <= --jitter < 1")
    args.rate, args.streams = (lo, hi), streams
    return p, args


def main(argv: list[str] | None = None) -> dict:
    p, args = parse_args(argv)
    if args.malloc == "tuned" and argv is None:
        rerun_with_huge_pages("benchmarks.serving", sys.argv[1:])
    from snac_model import load_model
    from snac_stream.runtime import tune_allocator

    tuned = tune_allocator() if args.malloc == "tuned" else False
    torch.set_num_threads(args.threads)  # this script is the application: it sets the threads
    model = load_model(args.model, fallback_to_random=True, device=args.device).eval()
    twin = noise_free_twin(model).fold_weight_norm()  # built before folding: it maps the unfolded weights
    model.fold_weight_norm()
    if list(model.vq_strides) != [4, 2, 1] or model.codebook_size != 4096:
        p.error(f"Orpheus tokens need the 24 kHz architecture (vq_strides 4,2,1), not {model.vq_strides}")
    quick = args.quick
    workers = args.workers or (1 if args.device.startswith("cuda") else default_workers())
    workload = Workload(
        seconds=args.seconds or (0.5 if quick else 4.0),
        rate=args.rate,
        jitter=args.jitter,
        stagger_s=args.stagger if args.stagger is not None else (0.3 if quick else 2.0),
        zero_codes=args.zero_codes,
        seed=args.seed,
    )
    find_max = (not quick) if args.find_max is None else args.find_max
    max_n = max([*args.streams, args.search_limit if find_max else 1])
    start = time.perf_counter()
    machine = machine_info(args.device, args.threads, tuned)
    machine["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    r: dict = {
        "machine": machine,
        "model": model_summary(model, args.model),
        "quick": quick,
        "config": {
            "workers": workers,
            "threads": args.threads,
            "streams": args.streams,
            "find_max": find_max,
            "workload": asdict(workload),
            "argv": sys.argv[1:] if argv is None else argv,
        },
    }
    print("granularity ...", file=sys.stderr, flush=True)
    r["granularity"] = granularity_section(model, 1.0 if quick else 10.0, 1 if quick else 2)
    serving = Serving(model, workload, workers, args.exact_requests or (2 if quick else 4), max_n)
    print("serving ...", file=sys.stderr, flush=True)
    for n in args.streams:
        for method in METHODS:
            serving.run(method, n)
    if find_max:
        r["max_sustained"] = {method: serving.find_max(method, args.search_limit) for method in METHODS}
    r["serving"] = [
        serving.results[k] for k in sorted(serving.results, key=lambda k: (k[1], METHODS.index(k[0])))
    ]
    print("window exactness ...", file=sys.stderr, flush=True)
    r["window_exactness"] = window_exactness(twin, serving.requests[0])
    r["machine"]["loadavg_end"] = list(os.getloadavg())
    r["elapsed_s"] = time.perf_counter() - start
    print(report(r))
    if args.json:
        tmp = f"{args.json}.tmp"
        with open(tmp, "w") as f:
            json.dump(r, f, indent=2, default=str)
        os.replace(tmp, args.json)
    return r


if __name__ == "__main__":
    main()

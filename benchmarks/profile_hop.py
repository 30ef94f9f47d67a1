"""Where a streaming hop's time goes: a per-operator profile, one stream and a batch.

``python -m benchmarks.profile_hop [--model 24khz] [--batch 8] [--hops 30] [--json FILE] [--malloc default]``
steps the decoder and encoder (the kernels ``auto`` picks, see :mod:`snac_stream.kernels`) one
coarse frame at a time on one thread, once for a single stream (:class:`~snac_stream.StreamingDecoder`
/ ``StreamingEncoder``, how streams run one by one) and once for ``--batch`` streams in one
multi-stream engine (each the fastest of three stretches of hops, against this machine's noise),
and splits each hop's time, per stream, into

- GEMMs, by shape (``K -> N`` features; every 1x1 conv, im2col conv, transposed conv and
  noise projection goes through one), with their FLOPs and achieved GFLOP/s;
- the Snake and depthwise conv + Snake passes (native C, or torch passes where it is absent);
- the rest (adds, copies, noise draws, quantizer, Python).

It also measures this core's fp32 GEMM peak (a large, well-shaped packed GEMM) and derives
the ceiling on what batching can gain: one stream's hop against a batched hop whose GEMMs
all ran at that peak and whose other work cost what it measured batched.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections import defaultdict
from collections.abc import Callable

import torch

import snac_model
from snac_stream import StreamingDecoder, StreamingEncoder, kernels
from snac_stream.engine.latency import decoder_latency, encoder_latency
from snac_stream.engine.multistream import MultiStreamDecoder, MultiStreamEncoder
from snac_stream.kernels import CpuKernels, GenericKernels
from snac_stream.runtime import tune_allocator

from .bench_common import frames_of, rerun_with_huge_pages, torch_threads, write_json

PATCHED_KERNEL_SETS = (GenericKernels, CpuKernels)  # the classes whose Snake methods are timed


class HopProfiler:
    """Context manager: while active, every GEMM of a kernel set (:class:`~snac_stream.kernels.Linear`
    and its packed subclass) and every Snake / depthwise + Snake pass (``snake`` / ``dw_snake`` of
    :class:`~snac_stream.kernels.GenericKernels` and :class:`~snac_stream.kernels.CpuKernels`) is
    timed; a kernel called inside another timed one (a fallback ``dw_snake`` calls ``snake``) counts
    once, for the outer. ``seconds[key]`` and ``flops[key]`` accumulate; GEMM keys read
    ``"gemm K->N"``. The methods are put back on exit; results are unchanged while profiling."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.flops: dict[str, float] = defaultdict(float)
        self._saved: list[tuple[type, str, Callable]] = []
        self._depth = 0

    def _timed(self, fn: Callable, key: Callable[..., str], flops: Callable[..., float] | None):
        def wrapper(*args, **kwargs):
            if self._depth:  # inside another timed call: the outer one counts it
                return fn(*args, **kwargs)
            self._depth += 1
            start = time.perf_counter()
            try:
                out = fn(*args, **kwargs)
            finally:
                self._depth -= 1
            k = key(*args)
            self.seconds[k] += time.perf_counter() - start
            if flops is not None:
                self.flops[k] += flops(*args)
            return out

        return wrapper

    def __enter__(self) -> HopProfiler:
        def gemm_key(linear, x):
            return f"gemm {linear.in_features}->{linear.out_features}"

        def gemm_flops(linear, x):
            return 2.0 * x.numel() * linear.out_features

        patches = [(kernels.Linear, "__call__", gemm_key, gemm_flops)]  # PackedLinear inherits it
        for cls in PATCHED_KERNEL_SETS:
            patches += [
                (cls, "dw_snake", lambda *a: "dw+snake", None),
                (cls, "snake", lambda *a: "snake", None),
            ]
        for cls, name, key, flops in patches:
            fn = vars(cls)[name]
            self._saved.append((cls, name, fn))
            setattr(cls, name, self._timed(fn, key, flops))
        return self

    def __exit__(self, *exc) -> None:
        for cls, name, fn in reversed(self._saved):
            setattr(cls, name, fn)
        self._saved.clear()

    def reset(self) -> None:
        self.seconds.clear()
        self.flops.clear()


def gemm_peak_gflops(rows: int = 4096, features: int = 512, repeats: int = 7) -> float:
    """fp32 GFLOP/s of a large GEMM (``[rows, F] @ [F, F]``, packed where the ``auto`` kernels
    pack) on the current threads, best of ``repeats``: the most a GEMM of a hop can reach."""
    gen = torch.Generator().manual_seed(0)
    linear = kernels.select("cpu").linear(torch.randn(features, features, generator=gen), None)
    x = torch.randn(rows, features, generator=gen)
    linear(x)
    best = min(_seconds(lambda: linear(x)) for _ in range(repeats))
    return 2.0 * rows * features * features / best / 1e9


def _seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def hop_inputs(model, mode: str, hops: int) -> list:
    """``hops`` one-coarse-frame inputs: audio chunks ``[1, 1, frame_size]`` (encode) or
    code frames (decode), from a seeded signal."""
    n = model.frame_size * hops
    gen = torch.Generator().manual_seed(1)
    t = torch.arange(n, dtype=torch.float32) / model.sample_rate
    audio = (0.3 * torch.sin(2 * torch.pi * 220 * t) + 0.02 * torch.randn(n, generator=gen)).view(1, 1, n)
    chunks = list(audio.split(model.frame_size, dim=-1))
    if mode == "encode":
        return chunks
    return frames_of(model, model.encode(audio))


def stepper(model, mode: str, batch: int) -> Callable[[object], object]:
    """One hop for ``batch`` streams: a single streaming engine (batch 1) or one multi-stream engine."""
    if batch == 1:
        engine = StreamingDecoder(model, seed=0) if mode == "decode" else StreamingEncoder(model)
        return engine.push
    if mode == "decode":
        multi = MultiStreamDecoder(model, max_streams=batch)
        for i in range(batch):
            multi.open(i, seed=i)
    else:
        multi = MultiStreamEncoder(model, max_streams=batch)
        for i in range(batch):
            multi.open(i)
    return lambda x: multi.step(dict.fromkeys(range(batch), x))


def warmup_hops(model, mode: str) -> int:
    """Hops until every layer of ``mode``'s chain works on each hop (its latency, plus two)."""
    latency = decoder_latency(model) if mode == "decode" else encoder_latency(model)
    return math.ceil(latency.samples / model.frame_size) + 2


def profile_hops(
    model, mode: str, batch: int, hops: int, warmup: int | None = None, repeats: int = 3
) -> dict:
    """Per-stream, per-hop milliseconds of ``mode`` (``"decode"`` / ``"encode"``) at ``batch``
    in steady state (after ``warmup`` hops, default :func:`warmup_hops`): ``total_ms``,
    ``gemm_ms`` with ``gemm`` by shape (ms, MFLOP, GFLOP/s), ``snake_ms`` (Snake and
    depthwise + Snake passes) and ``rest_ms``. The stream runs ``repeats`` stretches of
    ``hops`` hops; the fastest stretch counts (the others carry the machine's noise)."""
    warmup = warmup_hops(model, mode) if warmup is None else warmup
    inputs = hop_inputs(model, mode, warmup + hops * repeats)
    step = stepper(model, mode, batch)
    best: tuple[float, dict, dict] | None = None
    with torch.inference_mode(), HopProfiler() as prof:
        for x in inputs[:warmup]:
            step(x)
        for r in range(repeats):
            prof.reset()
            stretch = inputs[warmup + r * hops : warmup + (r + 1) * hops]
            total = sum(_seconds(lambda x=x: step(x)) for x in stretch)
            if best is None or total < best[0]:
                best = (total, dict(prof.seconds), dict(prof.flops))
    total, seconds, flops = best
    per = 1000.0 / (hops * batch)  # seconds summed over hops -> ms per stream and hop
    gemm = {
        k: {
            "ms": per * s,
            "mflop": flops[k] / (hops * batch) / 1e6,
            "gflops": flops[k] / s / 1e9 if s > 0 else 0.0,
        }
        for k, s in sorted(seconds.items(), key=lambda kv: -kv[1])
        if k.startswith("gemm")
    }
    gemm_ms = sum(g["ms"] for g in gemm.values())
    snake_ms = per * sum(s for k, s in seconds.items() if not k.startswith("gemm"))
    return {
        "batch": batch,
        "total_ms": per * total,
        "gemm_ms": gemm_ms,
        "gemm_mflop": sum(g["mflop"] for g in gemm.values()),
        "snake_ms": snake_ms,
        "rest_ms": per * total - gemm_ms - snake_ms,
        "gemm": gemm,
    }


def profile_section(name: str = "24khz", batch: int = 8, hops: int = 30) -> dict:
    """Decode and encode profiles at batch 1 and ``batch`` for the published ``name``
    architecture (seeded random weights), the GEMM peak, and the batching ceiling."""
    model = snac_model.random_model(name)
    with torch_threads(1):
        peak = gemm_peak_gflops()
        out: dict = {
            "model": name,
            "hop_ms": 1000 * model.frame_size / model.sample_rate,
            "gemm_peak_gflops": peak,
            "kernels": kernels.select(model.device).describe(),
        }
        for mode in ("decode", "encode"):
            single = profile_hops(model, mode, 1, hops)
            batched = profile_hops(model, mode, batch, max(4, hops // batch * 2))
            floor_ms = batched["gemm_mflop"] / peak  # MFLOP / (GFLOP/s) = ms
            best_ms = floor_ms + batched["snake_ms"] + batched["rest_ms"]
            out[mode] = {
                "single": single,
                "batched": batched,
                "gain": single["total_ms"] / batched["total_ms"],
                "gemm_floor_ms": floor_ms,
                "gain_ceiling": single["total_ms"] / best_ms,
            }
    return out


def print_profile(p: dict) -> None:
    print(
        f"   {p['model']}, hop {p['hop_ms']:.1f} ms of audio, 1 thread; fp32 GEMM peak of this core "
        f"{p['gemm_peak_gflops']:.0f} GFLOP/s; ms per stream and hop"
    )
    k = p["kernels"]
    print(f"   kernels: {k['kernels']} (GEMMs {k['gemm']}, Snake {k['snake']}; {k['reason']})")
    for mode in ("decode", "encode"):
        m = p[mode]
        for r in (m["single"], m["batched"]):
            print(
                f"   {mode} batch {r['batch']:2d}: total {r['total_ms']:6.2f} = GEMM {r['gemm_ms']:6.2f} "
                f"({r['gemm_mflop']:.0f} MFLOP, {r['gemm_mflop'] / r['gemm_ms']:.0f} GFLOP/s) + Snake/dw "
                f"{r['snake_ms']:5.2f} + rest {r['rest_ms']:5.2f}"
            )
        top = list(m["single"]["gemm"].items())[:4]
        shapes = ", ".join(
            f"{k[5:]} {g['ms']:.2f} ms @ {g['gflops']:.0f} -> {m['batched']['gemm'][k]['gflops']:.0f}"
            for k, g in top
        )
        print(f"   {mode} slowest GEMMs (batch 1 GFLOP/s -> batched): {shapes}")
        print(
            f"   {mode} batched gain {m['gain']:.2f}x; ceiling with every batched GEMM at peak "
            f"({m['gemm_floor_ms']:.2f} ms): {m['gain_ceiling']:.2f}x"
        )


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile_hop", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="24khz", choices=sorted(snac_model.PUBLISHED_CONFIGS))
    p.add_argument("--batch", type=int, default=8, help="streams in the batched engine (default 8)")
    p.add_argument("--hops", type=int, default=30, help="hops timed for one stream (default 30)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument(
        "--malloc",
        choices=("tuned", "default"),
        default="tuned",
        help="allocator as the snac-stream commands run it (tuned: mallopt and huge pages; the "
        "default) or as it comes",
    )
    args = p.parse_args(argv)
    if args.batch < 2 or args.hops < 1:
        p.error("--batch must be at least 2 and --hops at least 1")
    if args.malloc == "tuned":
        if argv is None:
            rerun_with_huge_pages("benchmarks.profile_hop", sys.argv[1:])
        tune_allocator()
    result = profile_section(args.model, args.batch, args.hops)
    print_profile(result)
    if args.json:
        write_json(args.json, result, indent=2)
    return result


if __name__ == "__main__":
    main()

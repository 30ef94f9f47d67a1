"""Fast-path benchmark: our streaming engine against the reference ``snac`` package, one run.

``python -m benchmarks.fastpath [--quick] [--json FILE] [--workers N]`` reports, on the
published 24 and 32 kHz architectures with seeded random weights (the reference ``snac.SNAC``
gets the same state dict), with the kernels ``auto`` picks (:mod:`snac_stream.kernels`):

1. real-time factor (compute s / audio s) of our streaming encode and decode at a hop of
   one coarse frame, one after the other and pipelined (encoder and decoder on two threads,
   as a live round trip runs), against the reference's offline encode / decode of the same
   audio (timed with 1 and 2 torch threads, the faster counts), twice: "shipped" (a fresh
   process with glibc's default allocator, as the reference's users run it) and "tuned"
   (in this process, with the allocator setting ours runs with);
2. per-hop decode compute, p50/p99 (24 kHz, one coarse frame = 85.3 ms of audio), with
   the other core idle and with it busy (a spinning process), 1 and 2 intra-op threads;
3. concurrent real-time 24 kHz streams one process sustains (mean step time <= one hop),
   decode and full duplex (encode + decode), batched (:mod:`snac_stream.engine.multistream`)
   and one by one, on 1 worker thread and on ``--workers`` (shards, as the server's
   :class:`~snac_stream.engine.batcher.BatcherPool`); throughput of 8 batched streams against
   stepping them one by one with the same workers;
4. the opt-in bf16 GEMMs (speed, deviation, code agreement);
5. where a 24 kHz hop's time goes, one stream and 8 batched (:mod:`benchmarks.profile_hop`:
   GEMMs by shape with GFLOP/s, Snake passes, the rest), this core's GEMM peak, and the
   ceiling on the batched gain that follows from them.

Every timing covers all work of a step (validation, embedding, noise, layers). The
allocator setting (``mallopt`` at start, and torch's huge pages for large buffers as the
``snac-stream`` commands run, unless ``--malloc default``; ``MALLOC_*`` variables honoured)
holds for ours and the "tuned" reference alike. The torch thread count is set by this script
(``--threads``, and 1 or 2 where a section compares them), never by the engines.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import os
import queue
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import torch

import snac_model
from snac_stream import StreamingDecoder, StreamingEncoder, kernels
from snac_stream.engine.batcher import default_workers
from snac_stream.engine.multistream import MultiStreamDecoder, MultiStreamEncoder
from snac_stream.runtime import HUGE_PAGES_ENV, tune_allocator

from .bench_common import cpu_model, frames_of, rerun_with_huge_pages, torch_threads, write_json
from .profile_hop import print_profile, profile_section


# ---------------------------------------------------------------- helpers
class BusyCore:
    """Context manager: another process spinning on a core for the duration (a fresh
    interpreter, not a fork: a forked child would make this process pay copy-on-write faults
    on its next writes, which a busy core does not cause)."""

    def __enter__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        time.sleep(0.3)
        return self

    def __exit__(self, *exc):
        self.proc.kill()
        self.proc.wait()


def signal(sample_rate: int, seconds: float, seed: int = 0) -> torch.Tensor:
    """``[1, 1, n]`` float32: a few partials and a little noise."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(int(sample_rate * seconds), dtype=torch.float64) / sample_rate
    x = sum(0.2 / (k + 1) * torch.sin(2 * torch.pi * (220 * (k + 1) + 30 * k * t) * t) for k in range(4))
    x = x + 0.02 * torch.randn(t.shape, generator=gen, dtype=torch.float64)
    return x.float().view(1, 1, -1)


def timed(fn: Callable[[], object], repeats: int = 1) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def pct(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q / 100 * (len(v) - 1))))]


def reference_model(name: str, ours):
    import snac

    ref = snac.SNAC(**snac_model.PUBLISHED_CONFIGS[name]).eval()
    ref.load_state_dict(ours.state_dict())
    return ref


# ---------------------------------------------------------------- 1. real-time factors
def reference_rtf(name: str, seconds: float, repeats: int) -> dict:
    """The reference's offline encode/decode real-time factors at 1 and 2 threads, in this
    process (whatever allocator it has)."""
    model = snac_model.random_model(name)
    ref = reference_model(name, model)
    audio = signal(model.sample_rate, seconds)
    codes = model.encode(audio)
    audio_s = audio.shape[-1] / model.sample_rate
    out = {}
    with torch.inference_mode():
        ref.encode(audio), ref.decode(codes)  # warm-up
        for n in (1, 2):
            with torch_threads(n):
                out[f"encode_{n}t"] = timed(lambda: ref.encode(audio), repeats) / audio_s
                out[f"decode_{n}t"] = timed(lambda: ref.decode(codes), repeats) / audio_s
    return out


def reference_rtf_as_shipped(name: str, seconds: float, repeats: int) -> dict:
    """:func:`reference_rtf` in a fresh process with the allocator as it comes (no ``mallopt``,
    ``MALLOC_*`` variables and torch's huge-page switch removed): the reference as its users run it."""
    drop = [k for k in os.environ if k.startswith("MALLOC_") or k == HUGE_PAGES_ENV]
    saved = {k: os.environ.pop(k) for k in drop}
    try:
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            return pool.apply(reference_rtf, (name, seconds, repeats))
    finally:
        os.environ.update(saved)


def pipelined_round_trip(model, audio: torch.Tensor, **decoder_options) -> None:
    """Stream ``audio`` through encoder and decoder running concurrently on two threads
    (hop by hop, a bounded queue between them), as a live codec round trip does."""
    hop = model.frame_size
    handoff: queue.Queue = queue.Queue(maxsize=4)

    def encode() -> None:
        enc = StreamingEncoder(model)
        for i in range(0, audio.shape[-1], hop):
            handoff.put(enc.push(audio[..., i : i + hop]))
        handoff.put(enc.flush())
        handoff.put(None)

    producer = threading.Thread(target=encode)
    producer.start()
    dec = StreamingDecoder(model, seed=0, **decoder_options)
    while (codes := handoff.get()) is not None:
        if codes[0].shape[-1]:
            dec.push(codes)
    dec.flush()
    producer.join()


def rtf_section(name: str, seconds: float, threads: int, repeats: int) -> dict:
    """Section 1 for the published ``name`` architecture; our steps on ``threads`` torch threads
    (and on 2 for the ``_2t`` keys)."""
    model = snac_model.random_model(name)
    audio = signal(model.sample_rate, seconds)
    codes = model.encode(audio)
    audio_s = audio.shape[-1] / model.sample_rate
    hop = model.frame_size
    frames = frames_of(model, codes)
    out: dict = {"audio_s": audio_s}

    def ours_encode():
        enc = StreamingEncoder(model)
        for i in range(0, audio.shape[-1], hop):
            enc.push(audio[..., i : i + hop])
        enc.flush()

    def ours_decode():
        dec = StreamingDecoder(model, seed=0)
        for f in frames:
            dec.push(f)
        dec.flush()

    with torch_threads(threads):
        ours_encode(), ours_decode()  # warm-up (first-call costs)
        out["ours_encode_rtf"] = timed(ours_encode, repeats) / audio_s
        out["ours_decode_rtf"] = timed(ours_decode, repeats) / audio_s
    with torch_threads(2):
        out["ours_encode_rtf_2t"] = timed(ours_encode, repeats) / audio_s
        out["ours_decode_rtf_2t"] = timed(ours_decode, repeats) / audio_s
    with torch_threads(threads):  # the threads below start now and take this count
        pipelined_round_trip(model, audio)  # warm-up
        out["ours_pipelined_rtf"] = timed(lambda: pipelined_round_trip(model, audio), repeats) / audio_s
        # opt-in: the decoder in bf16 (codes identical, audio ~44 dB SNR)
        bf16 = {"gemm_dtype": torch.bfloat16}
        pipelined_round_trip(model, audio, **bf16)
        out["ours_pipelined_bf16_decoder_rtf"] = (
            timed(lambda: pipelined_round_trip(model, audio, **bf16), repeats) / audio_s
        )
    for label, ref_rtf in (
        ("ref", reference_rtf(name, seconds, repeats)),  # this process: allocator as ours
        ("ref_shipped", reference_rtf_as_shipped(name, seconds, repeats)),
    ):
        for key, value in ref_rtf.items():
            out[f"{label}_{key.replace('_', '_rtf_')}"] = value
        enc = out[f"{label}_encode_rtf"] = min(ref_rtf["encode_1t"], ref_rtf["encode_2t"])
        dec = out[f"{label}_decode_rtf"] = min(ref_rtf["decode_1t"], ref_rtf["decode_2t"])
        suffix = "" if label == "ref" else "_vs_shipped"
        out[f"speedup_encode{suffix}"] = enc / out["ours_encode_rtf"]
        out[f"speedup_decode{suffix}"] = dec / out["ours_decode_rtf"]
        ours_seq = out["ours_encode_rtf"] + out["ours_decode_rtf"]
        out[f"speedup_encode_decode{suffix}"] = (enc + dec) / ours_seq
        out[f"speedup_pipelined{suffix}"] = (enc + dec) / out["ours_pipelined_rtf"]
        out[f"speedup_pipelined_bf16_decoder{suffix}"] = (enc + dec) / out["ours_pipelined_bf16_decoder_rtf"]
    ours = out["ours_encode_rtf"] + out["ours_decode_rtf"]
    for n in (1, 2):  # at matched thread counts, same allocator
        ours_n = ours if n == threads else out["ours_encode_rtf_2t"] + out["ours_decode_rtf_2t"]
        out[f"speedup_encode_decode_{n}t"] = (
            out[f"ref_encode_rtf_{n}t"] + out[f"ref_decode_rtf_{n}t"]
        ) / ours_n
    return out


# ---------------------------------------------------------------- 2. per-hop latency
def hop_section(seconds: float) -> dict:
    model = snac_model.random_model("24khz")
    frames = frames_of(model, model.encode(signal(model.sample_rate, seconds, seed=1)))
    out = {"hop_ms": 1000 * model.frame_size / model.sample_rate, "hops": len(frames)}

    def run(threads: int) -> list[float]:
        with torch_threads(threads):
            dec = StreamingDecoder(model, seed=0)
            for f in frames[:3]:
                dec.push(f)
            times = []
            for f in frames[3:]:
                t = time.perf_counter()
                dec.push(f)
                times.append(time.perf_counter() - t)
        return times

    for threads in (1, 2):
        for busy in (False, True):
            if busy:
                with BusyCore():
                    times = run(threads)
            else:
                times = run(threads)
            key = f"{threads}t_{'busy' if busy else 'idle'}"
            out[key] = {"p50_ms": 1000 * pct(times, 50), "p99_ms": 1000 * pct(times, 99)}
    return out


# ---------------------------------------------------------------- 3. concurrent streams
class StreamGroup:
    """Streams stepped one hop at a time on one thread, batched (one multi-stream engine) or
    one by one; ``mode`` is ``"decode"``, ``"encode"`` or ``"duplex"`` (both)."""

    def __init__(self, model, n: int, batched: bool, mode: str, first: int, share=None):
        self.batched, self.ids = batched, range(first, first + n)
        self.encode, self.decode = mode in ("encode", "duplex"), mode in ("decode", "duplex")
        if batched:  # engines of one StreamSet share their layers, as the server's shards do
            self.dec = share[0].sibling() if share else MultiStreamDecoder(model, max_streams=n)
            self.enc = share[1].sibling() if share else MultiStreamEncoder(model, max_streams=n)
            for i in self.ids:
                self.dec.open(i, seed=i)
                self.enc.open(i)
        else:
            self.decs = [StreamingDecoder(model, seed=i) for i in self.ids]
            self.encs = [StreamingEncoder(model) for _ in self.ids]

    def step(self, x: torch.Tensor, f: list[torch.Tensor]) -> None:
        if self.batched:
            if self.encode:
                self.enc.step({i: x for i in self.ids})
            if self.decode:
                self.dec.step({i: f for i in self.ids})
            return
        for k in range(len(self.ids)):
            if self.encode:
                self.encs[k].push(x)
            if self.decode:
                self.decs[k].push(f)


class StreamSet:
    """N 24 kHz streams split over ``workers`` threads (shards, like the server's
    :class:`~snac_stream.engine.batcher.BatcherPool`), each stepping its share every hop (on the
    torch thread count current when the set is made: its worker threads start then)."""

    def __init__(self, model, n: int, batched: bool, mode: str, audio, frames, workers=1):
        self.audio, self.frames, self.hop, self.j = audio, frames, model.frame_size, 0
        sizes = [n // workers + (w < n % workers) for w in range(workers)]
        self.groups: list[StreamGroup] = []
        for w, size in enumerate(sizes):
            if size:
                share = (self.groups[0].dec, self.groups[0].enc) if batched and self.groups else None
                self.groups.append(StreamGroup(model, size, batched, mode, sum(sizes[:w]), share))
        self.pool = concurrent.futures.ThreadPoolExecutor(len(self.groups)) if len(self.groups) > 1 else None

    def step(self) -> None:
        j = self.j % len(self.frames)
        x, f = self.audio[..., j * self.hop : (j + 1) * self.hop], self.frames[j]
        self.j += 1
        if self.pool is None:
            self.groups[0].step(x, f)
        else:
            for done in [self.pool.submit(g.step, x, f) for g in self.groups]:
                done.result()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()


def step_times(streams: StreamSet, steps: int) -> list[float]:
    for _ in range(3):
        streams.step()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        streams.step()
        times.append(time.perf_counter() - t)
    streams.close()
    return times


def streams_section(steps: int, threads: int, max_n: int, workers: int) -> dict:
    model = snac_model.random_model("24khz")
    audio = signal(model.sample_rate, 4.0, seed=2)
    frames = frames_of(model, model.encode(audio))
    hop_s = model.frame_size / model.sample_rate
    out: dict = {"criterion": "mean step time for N streams <= one hop (85.3 ms)", "workers": workers}

    def mean_step(n: int, batched: bool, mode: str, w: int) -> list[float]:
        with torch_threads(threads):
            return step_times(StreamSet(model, n, batched, mode, audio, frames, w), steps)

    for w in sorted({1, workers}):
        for mode in ("decode", "duplex"):
            for batched in (False, True):
                best, n, curve = 0, 1, {}
                while n <= max_n:
                    times = mean_step(n, batched, mode, w)
                    curve[n] = {"mean_ms": 1000 * statistics.mean(times), "p99_ms": 1000 * pct(times, 99)}
                    if statistics.mean(times) > hop_s:
                        break
                    best, n = n, n + (1 if n < 8 else 2)
                key = f"{mode}_{'batched' if batched else 'one_by_one'}_{w}w"
                out[key] = {"streams": best, "curve": curve}
        for mode in ("decode", "encode", "duplex"):
            t1 = statistics.mean(mean_step(8, False, mode, w))
            t8 = statistics.mean(mean_step(8, True, mode, w))
            ratio = {"one_by_one_ms": 1000 * t1, "batched_ms": 1000 * t8, "ratio": t1 / t8}
            out[f"batch8_{mode}_{w}w"] = ratio
    return out


# ---------------------------------------------------------------- 4. opt-ins
def options_section(seconds: float) -> dict:
    """Section 4: the bf16 GEMM opt-in against float32 (24 kHz, the current torch threads)."""
    model = snac_model.random_model("24khz")
    audio = signal(model.sample_rate, seconds, seed=3)
    codes = model.encode(audio)
    frames = frames_of(model, codes)

    def decode(**kw) -> tuple[torch.Tensor, float]:
        dec = StreamingDecoder(model, seed=0, **kw)
        parts, times = [dec.push(frames[0]), dec.push(frames[1])], []
        for f in frames[2:]:
            t = time.perf_counter()
            parts.append(dec.push(f))
            times.append(time.perf_counter() - t)
        parts.append(dec.flush())
        return torch.cat(parts, dim=-1), pct(times, 50)

    exact, p50 = decode()
    out: dict = {"fp32_decode_p50_ms": 1000 * p50}
    approx, p50 = decode(gemm_dtype=torch.bfloat16)
    err = approx - exact
    out["bf16_decode_p50_ms"] = 1000 * p50
    out["bf16_decode_max_abs_dev"] = err.abs().max().item()
    out["bf16_decode_snr_db"] = (10 * torch.log10(exact.pow(2).sum() / err.pow(2).sum())).item()
    enc = StreamingEncoder(model, gemm_dtype=torch.bfloat16)
    got = enc.encode(
        [audio[..., i : i + model.frame_size] for i in range(0, audio.shape[-1], model.frame_size)]
    )
    agree = sum((a == b).sum().item() for a, b in zip(got, codes, strict=True)) / sum(
        c.numel() for c in codes
    )
    out["bf16_encode_code_agreement"] = agree
    return out


# ---------------------------------------------------------------- report
def machine(malloc: str, tuned: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k.startswith(("MALLOC_", "OMP_", "MKL_", "THP_"))}
    return {
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "loadavg_start": list(os.getloadavg()),
        "allocator": {"mode": malloc, "mallopt_applied": tuned, "env": env},
        "kernels": kernels.select("cpu").describe(),
    }


def print_report(r: dict) -> None:
    m = r["machine"]
    print(
        f"\nsnac-stream fast path  ({m['cpu']}, {m['cpu_capability']}, {m['cpus']} CPUs, torch {m['torch']}, "
        f"load at start {m['loadavg_start']})"
    )
    print(f"allocator: {m['allocator']}; streaming steps: {r['threads']} intra-op thread(s)")
    k = m["kernels"]
    print(f"kernels: {k['kernels']} (GEMMs {k['gemm']}, Snake {k['snake']}; {k['reason']})\n")
    print(
        "1. real-time factor (compute s / audio s; lower is better), hop = 1 coarse frame; ref = the "
        "faster of 1 and 2 threads;\n   'shipped' = the reference in a fresh process with glibc's default "
        "allocator (as its users run it), 'tuned' = in this process (allocator as ours)"
    )
    print(
        f"   {'model':7} {'ours enc':>9} {'ours dec':>9} {'pipelined':>9} {'ref enc':>15} {'ref dec':>15}"
        f"   {'enc+dec speedup (seq / pipelined)':>34}"
    )
    for name, s in r["rtf"].items():
        print(
            f"   {name:7} {s['ours_encode_rtf']:9.3f} {s['ours_decode_rtf']:9.3f} "
            f"{s['ours_pipelined_rtf']:9.3f} "
            f"{s['ref_shipped_encode_rtf']:6.3f} / {s['ref_encode_rtf']:6.3f} "
            f"{s['ref_shipped_decode_rtf']:6.3f} / {s['ref_decode_rtf']:6.3f}   "
            f"vs shipped {s['speedup_encode_decode_vs_shipped']:.2f}x / "
            f"{s['speedup_pipelined_vs_shipped']:.2f}x, "
            f"vs tuned {s['speedup_encode_decode']:.2f}x / {s['speedup_pipelined']:.2f}x"
        )
        print(
            f"   {'':7} tuned, matched threads: 1 vs 1 {s['speedup_encode_decode_1t']:.2f}x, 2 vs 2 "
            f"{s['speedup_encode_decode_2t']:.2f}x (ours at 2 threads: enc {s['ours_encode_rtf_2t']:.3f}, "
            f"dec {s['ours_decode_rtf_2t']:.3f})"
        )
        print(
            f"   {'':7} opt-in, decoder GEMMs in bf16 (codes identical): pipelined "
            f"{s['ours_pipelined_bf16_decoder_rtf']:.3f}, vs shipped "
            f"{s['speedup_pipelined_bf16_decoder_vs_shipped']:.2f}x, vs tuned "
            f"{s['speedup_pipelined_bf16_decoder']:.2f}x"
        )
    h = r["hop"]
    print(f"\n2. 24 kHz decode compute per hop ({h['hop_ms']:.1f} ms of audio, {h['hops'] - 3} hops), ms")
    for key in ("1t_idle", "1t_busy", "2t_idle", "2t_busy"):
        print(f"   {key:8} p50 {h[key]['p50_ms']:6.1f}   p99 {h[key]['p99_ms']:6.1f}")
    s = r["streams"]
    print(f"\n3. concurrent real-time 24 kHz streams ({s['criterion']}); Nw = N worker threads (shards)")
    for w in sorted({1, s["workers"]}):
        for key in ("decode_one_by_one", "decode_batched", "duplex_one_by_one", "duplex_batched"):
            k = f"{key}_{w}w"
            curve = ", ".join(f"{n}: {v['mean_ms']:.0f}" for n, v in s[k]["curve"].items())
            print(f"   {k:21} {s[k]['streams']:3d}   (N: mean ms/step  {curve})")
        for mode in ("decode", "encode", "duplex"):
            b = s[f"batch8_{mode}_{w}w"]
            print(
                f"   batch8_{mode}_{w}w{'':6} 8 streams one by one {b['one_by_one_ms']:.1f} ms, batched "
                f"{b['batched_ms']:.1f} ms -> {b['ratio']:.2f}x"
            )
    o = r["options"]
    print(f"\n4. opt-in (24 kHz, {r['threads']} thread(s))")
    print(
        f"   bf16 GEMMs: decode p50 {o['bf16_decode_p50_ms']:.1f} ms (fp32 {o['fp32_decode_p50_ms']:.1f}), "
        f"SNR vs fp32 {o['bf16_decode_snr_db']:.1f} dB, max |dev| {o['bf16_decode_max_abs_dev']:.2e}; "
        f"encoder codes agreeing {100 * o['bf16_encode_code_agreement']:.1f}%"
    )
    print("\n5. where a hop's time goes (1 thread)")
    print_profile(r["profile"])
    print(f"\ntotal {r['seconds']:.0f} s; load at end {r['loadavg_end']}")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.fastpath", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="shorter signals, fewer hops (about a minute)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--malloc", choices=("tuned", "default"), default="tuned")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads of our streaming steps")
    p.add_argument(
        "--workers",
        type=int,
        default=default_workers(),
        help="worker threads (shards) in section 3 (default: cores)",
    )
    p.add_argument(
        "--settle",
        type=float,
        default=5.0,
        help="seconds of idling between sections (default 5): right after a section that loads both "
        "cores, single-thread hops ran ~30%% slower here for a few seconds",
    )
    args = p.parse_args(argv)
    if args.threads < 1 or args.workers < 1:
        p.error("--threads and --workers must be at least 1")
    if args.malloc == "tuned" and argv is None:
        rerun_with_huge_pages("benchmarks.fastpath", sys.argv[1:])
    tuned = tune_allocator() if args.malloc == "tuned" else False
    torch.set_num_threads(args.threads)  # this script is the application: it sets the threads
    start = time.perf_counter()
    r: dict = {"machine": machine(args.malloc, tuned), "threads": args.threads, "quick": args.quick}
    seconds = 4.0 if args.quick else 10.0
    r["settle_s"] = args.settle
    steps, max_n = (6, 16) if args.quick else (12, 20)
    r["rtf"] = {
        name: rtf_section(name, seconds, args.threads, 1 if args.quick else 2) for name in ("24khz", "32khz")
    }
    time.sleep(args.settle)
    r["hop"] = hop_section(8.0 if args.quick else 25.0)
    time.sleep(args.settle)
    r["streams"] = streams_section(steps, args.threads, max_n, args.workers)
    time.sleep(args.settle)
    r["options"] = options_section(4.0 if args.quick else 8.0)
    time.sleep(args.settle)
    r["profile"] = profile_section("24khz", 8, 10 if args.quick else 40)
    r["seconds"] = time.perf_counter() - start
    r["loadavg_end"] = list(os.getloadavg())
    print_report(r)
    if args.json:
        write_json(args.json, r, indent=2)
    return r


if __name__ == "__main__":
    main()

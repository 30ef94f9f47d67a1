"""Cost (real-time factor), exactness and time to first audio of every way to run the codec.

Encode: offline ``model.encode``; our StreamingEncoder at hops of 1 tick, 1 coarse frame
and 4 coarse frames. Decode (of the same codes, from the offline encode): offline
``model.decode(codes, seed=0)``; our StreamingDecoder (seed=0) at the same hops; the
Orpheus-style sliding window (for each new coarse frame j decode frames j-3..j and keep
samples ``[frame_size, 2*frame_size)``, i.e. frame j-2); naive independent chunks (each
coarse frame decoded alone).

Every method is a list of calls ``(arrival_s, compute_s, n_out)``: ``arrival_s`` is when
the call's input exists if audio (or codes) arrive in real time, counted from the first
input; ``compute_s`` is measured. Time to first output replays the calls in real time:
a call starts when its input has arrived and the previous call has finished.

Timings use the model as given (noise on, seed 0 wherever the API takes one). The
deviation columns use the model's noise-free twin (same weights, NoiseBlocks removed),
because the sliding window and naive chunks restart positions on every call and so cannot
reproduce position-keyed noise; our seeded stream is also compared with the seeded
offline decode of the noisy model (it should agree to float rounding).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .bench_common import (
    Clock,
    codes_per_frame_level,
    max_abs,
    n_frames,
    percentiles,
    slice_frames,
    slice_ticks,
)


@dataclass
class Run:
    name: str
    op: str  # "encode" | "decode"
    hop: str  # "whole" | "tick" | "frame" | "4 frames" | "window"
    hop_ms: float | None
    calls: list[tuple[float, float, int]] = field(default_factory=list)  # arrival, compute, n_out
    audio_s: float = 0.0  # audio duration processed (input audio or decoded code frames)
    truncated: bool = False
    setup_s: float = 0.0
    output: object = None
    covered: tuple[int, int] | None = None  # decode: output samples [a, b) of the reference
    flush_calls: int = 0  # trailing calls that are flushes (excluded from per-hop stats)
    repeat_rtfs: list = field(default_factory=list)  # RTF of every repetition (this one is the best)

    @property
    def compute_s(self) -> float:
        return sum(c for _, c, _ in self.calls)

    @property
    def rtf(self) -> float | None:
        return self.compute_s / self.audio_s if self.audio_s > 0 else None

    def step_times(self) -> list[float]:
        calls = self.calls[: len(self.calls) - self.flush_calls]
        return [c for _, c, _ in calls]

    def first_output(self) -> dict:
        finish, first = 0.0, None
        for arrival, compute, n_out in self.calls:
            finish = max(arrival, finish) + compute
            if n_out > 0:
                first = (finish, arrival)
                break
        if first is None:
            return {"ttfa_ms": None, "ttfa_wait_ms": None, "ttfa_compute_ms": None}
        return {
            "ttfa_ms": 1000 * first[0],
            "ttfa_wait_ms": 1000 * first[1],
            "ttfa_compute_ms": 1000 * (first[0] - first[1]),
        }


class Budget:
    """Compute-time cap per method: streaming loops stop (``truncated``) once it is spent."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def spent(self, run: Run) -> bool:
        return run.compute_s > self.seconds


# ----------------------------------------------------------------------------- encode


def encode_offline(model, x: torch.Tensor, clock: Clock) -> Run:
    sr = model.sample_rate
    run = Run("offline", "encode", "whole", None)
    t0 = clock()
    codes = model.encode(x)
    run.calls.append(((x.shape[-1] - 1) / sr, clock() - t0, n_frames(codes)))
    run.audio_s = x.shape[-1] / sr
    run.output = codes
    return run


def encode_stream(model, x: torch.Tensor, hop: int, label: str, clock: Clock, budget: Budget) -> Run:
    from snac_stream import StreamingEncoder

    sr = model.sample_rate
    run = Run("ours", "encode", label, 1000 * hop / sr)
    t0 = time.perf_counter()
    enc = StreamingEncoder(model)
    run.setup_s = time.perf_counter() - t0
    parts: list[list[torch.Tensor]] = []
    length = x.shape[-1]
    for start in range(0, length, hop):
        chunk = x[..., start : start + hop]
        t0 = clock()
        codes = enc.push(chunk)
        run.calls.append(((start + chunk.shape[-1] - 1) / sr, clock() - t0, n_frames(codes)))
        parts.append(codes)
        run.audio_s = (start + chunk.shape[-1]) / sr
        if budget.spent(run) and start + hop < length:
            run.truncated = True
            break
    if not run.truncated:
        t0 = clock()
        codes = enc.flush()
        run.calls.append(((length - 1) / sr, clock() - t0, n_frames(codes)))
        run.flush_calls = 1
        parts.append(codes)
    run.output = [torch.cat(level, dim=-1) for level in zip(*parts, strict=True)]
    return run


# ----------------------------------------------------------------------------- decode


def decode_offline(model, codes, clock: Clock, seed: int | None = 0) -> Run:
    fd = model.frame_size / model.sample_rate
    n = n_frames(codes)
    run = Run("offline", "decode", "whole", None)
    t0 = clock()
    audio = model.decode(codes, seed=seed)
    run.calls.append(((n - 1) * fd, clock() - t0, audio.shape[-1]))
    run.audio_s = n * fd
    run.output = audio
    run.covered = (0, audio.shape[-1])
    return run


def decode_stream(
    model, codes, hop_ticks: int, label: str, clock: Clock, budget: Budget, seed: int | None = 0
) -> Run:
    from snac_stream import StreamingDecoder

    sr, strides = model.sample_rate, model.vq_strides
    tick_s = model.hop_length / sr
    total_ticks = n_frames(codes) * strides[0]
    run = Run("ours", "decode", label, 1000 * hop_ticks * tick_s)
    t0 = time.perf_counter()
    dec = StreamingDecoder(model, seed=seed)
    run.setup_s = time.perf_counter() - t0
    parts = []
    for t in range(0, total_ticks, hop_ticks):
        t1 = min(t + hop_ticks, total_ticks)
        chunk = slice_ticks(codes, strides, t, t1)
        c0 = clock()
        audio = dec.push(chunk)
        run.calls.append(((t1 - 1) * tick_s, clock() - c0, audio.shape[-1]))
        parts.append(audio)
        run.audio_s = t1 * tick_s
        if budget.spent(run) and t1 < total_ticks:
            run.truncated = True
            break
    if not run.truncated:
        c0 = clock()
        audio = dec.flush()
        run.calls.append(((total_ticks - 1) * tick_s, clock() - c0, audio.shape[-1]))
        run.flush_calls = 1
        parts.append(audio)
    run.output = torch.cat(parts, dim=-1)
    run.covered = (0, run.output.shape[-1])
    return run


def _per_frame(run: Run, n: int, fd: float, decode_frame, clock: Clock, budget: Budget, first: int = 0):
    """``decode_frame(j)`` for coarse frames ``j = first .. n-1`` (earlier ones: a call that
    decodes nothing yet), each call recorded in ``run``; stops early once the budget is spent.
    Returns the outputs concatenated."""
    parts = []
    for j in range(n):
        if j < first:
            run.calls.append((j * fd, 0.0, 0))
            continue
        c0 = clock()
        audio = decode_frame(j)
        run.calls.append((j * fd, clock() - c0, audio.shape[-1]))
        parts.append(audio)
        run.audio_s = (j + 1) * fd
        if budget.spent(run) and j + 1 < n:
            run.truncated = True
            break
    return torch.cat(parts, dim=-1) if parts else torch.zeros(1, 1, 0)


def decode_sliding_window(
    model, codes, clock: Clock, budget: Budget, seed: int | None = 0, context: int = 4
) -> Run:
    """Orpheus TTS: on each new coarse frame j >= 3 decode frames j-3..j, keep ``[fs, 2fs)``
    (frame j-2). Covers frames 1 .. n-3: the first frame and the last two are never output."""
    fs, fd = model.frame_size, model.frame_size / model.sample_rate
    per = codes_per_frame_level(model)
    n = n_frames(codes)
    run = Run("sliding window", "decode", "window", 1000 * fd)

    def window(j: int) -> torch.Tensor:
        return model.decode(slice_frames(codes, per, j - context + 1, j + 1), seed=seed)[..., fs : 2 * fs]

    run.output = _per_frame(run, n, fd, window, clock, budget, first=context - 1)
    # window j-context+1..j keeps its second frame, j-context+2: the first output is frame 1
    run.covered = (fs, fs + run.output.shape[-1])
    return run


def decode_naive(model, codes, clock: Clock, budget: Budget, seed: int | None = 0) -> Run:
    """Each coarse frame decoded alone (no context), outputs concatenated."""
    fd = model.frame_size / model.sample_rate
    per = codes_per_frame_level(model)
    n = n_frames(codes)
    run = Run("naive chunks", "decode", "frame", 1000 * fd)

    def alone(j: int) -> torch.Tensor:
        return model.decode(slice_frames(codes, per, j, j + 1), seed=seed)

    run.output = _per_frame(run, n, fd, alone, clock, budget)
    run.covered = (0, run.output.shape[-1])
    return run


def deviation(run: Run, reference: torch.Tensor) -> float:
    a, b = run.covered
    return max_abs(run.output, reference[..., a:b])


def code_mismatches(codes, reference) -> tuple[int, int]:
    """(differing codes, codes compared) over the frames both have."""
    diff = total = 0
    for c, r in zip(codes, reference, strict=True):
        n = min(c.shape[-1], r.shape[-1])
        diff += int((c[..., :n] != r[..., :n]).sum())
        total += int(n * c.shape[0])
    return diff, total


# ----------------------------------------------------------------------------- all of it


def warm_up(model, twin, x: torch.Tensor, clock: Clock) -> None:
    """First calls of each path pay one-off costs (primitive caches, page faults)."""
    from snac_stream import StreamingDecoder, StreamingEncoder

    sr = model.sample_rate
    short = x[..., : min(x.shape[-1], 2 * model.pad_multiple, sr)]
    codes = model.encode(short)
    model.decode(codes, seed=0)
    twin.decode(codes)
    enc, dec, tdec = StreamingEncoder(model), StreamingDecoder(model, seed=0), StreamingDecoder(twin)
    for hop in (model.hop_length, model.frame_size):
        for start in range(0, min(short.shape[-1], 4 * hop), hop):
            enc.push(short[..., start : start + hop])
    for t in range(0, min(n_frames(codes) * model.vq_strides[0], 8)):
        dec.push(slice_ticks(codes, model.vq_strides, t, t + 1))
        tdec.push(slice_ticks(codes, model.vq_strides, t, t + 1))
    per = codes_per_frame_level(model)
    model.decode(slice_frames(codes, per, 0, 1), seed=0)
    clock()


def _best(runs: list[Run]) -> Run:
    """The repetition with the lowest real-time factor (the least disturbed by other load)."""
    best = min(runs, key=lambda r: r.rtf if r.rtf is not None else float("inf"))
    best.repeat_rtfs = [r.rtf for r in runs]
    return best


def run_cost(
    model,
    twin,
    x: torch.Tensor,
    device: str,
    budget_s: float,
    progress: Callable[[str], None],
    repeats: int = 1,
    fraction: Callable[[float], None] | None = None,
) -> dict:
    """All cost/exactness measurements (JSON-able dicts, plus ``runs`` for the report).

    Every timed method runs ``repeats`` times, interleaved (rep 1 of every method, then rep
    2, ...); the repetition with the lowest RTF is kept.
    """
    clock = Clock(device)
    budget = Budget(budget_s)
    sr, fs, s0 = model.sample_rate, model.frame_size, model.vq_strides[0]
    hops = [("tick", model.hop_length, 1), ("frame", fs, s0), ("4 frames", 4 * fs, 4 * s0)]

    progress("warm-up")
    warm_up(model, twin, x, clock)
    codes = model.encode(x)

    methods: list[tuple[str, Callable[[], Run]]] = [
        ("offline encode", lambda: encode_offline(model, x, clock))
    ]
    for label, hop, _ in hops:
        methods.append(
            (
                f"stream encode, hop {label}",
                lambda h=hop, lb=label: encode_stream(model, x, h, lb, clock, budget),
            )
        )
    methods.append(("offline decode", lambda: decode_offline(model, codes, clock)))
    for label, _, hop_ticks in hops:
        methods.append(
            (
                f"stream decode, hop {label}",
                lambda h=hop_ticks, lb=label: decode_stream(model, codes, h, lb, clock, budget),
            )
        )
    methods.append(("sliding-window decode", lambda: decode_sliding_window(model, codes, clock, budget)))
    methods.append(("naive-chunk decode", lambda: decode_naive(model, codes, clock, budget)))
    done = {name: [] for name, _ in methods}
    steps, total = 0, repeats * len(methods) + 4
    for rep in range(repeats):
        for name, fn in methods:
            progress(name + (f" (repeat {rep + 1}/{repeats})" if repeats > 1 else ""))
            done[name].append(fn())
            steps += 1
            if fraction:
                fraction(steps / total)
    runs = [_best(done[name]) for name, _ in methods]
    off_enc, off_dec = runs[0], runs[4]
    enc_runs = {label: runs[1 + i] for i, (label, _, _) in enumerate(hops)}
    dec_runs = {label: runs[5 + i] for i, (label, _, _) in enumerate(hops)}
    sliding, naive = runs[8], runs[9]
    if not all(torch.equal(a, b) for a, b in zip(off_enc.output, codes, strict=True)):
        raise AssertionError("offline encode is not deterministic")

    # Deviation from exact offline output, noise off (same weights).
    twin_runs = []
    for name, fn in (
        ("offline", lambda: decode_offline(twin, codes, clock, seed=None)),
        ("stream", lambda: decode_stream(twin, codes, s0, "frame", clock, budget, seed=None)),
        ("sliding window", lambda: decode_sliding_window(twin, codes, clock, budget, seed=None)),
        ("naive chunks", lambda: decode_naive(twin, codes, clock, budget, seed=None)),
    ):
        progress(f"deviation (noise-free twin): {name}")
        twin_runs.append(fn())
        steps += 1
        if fraction:
            fraction(steps / total)
    twin_ref, twin_stream, twin_sliding, twin_naive = twin_runs
    ref = twin_ref.output
    dev = {
        "offline": 0.0,
        "ours": deviation(twin_stream, ref),
        "sliding window": deviation(twin_sliding, ref),
        "naive chunks": deviation(twin_naive, ref),
    }
    seeded = {label: deviation(r, off_dec.output) for label, r in dec_runs.items()}
    mismatches = {label: code_mismatches(r.output, codes) for label, r in enc_runs.items()}

    methods = []
    for r in runs:
        row = {
            "name": r.name,
            "op": r.op,
            "hop": r.hop,
            "hop_ms": r.hop_ms,
            "rtf": r.rtf,
            "compute_s": r.compute_s,
            "audio_s": r.audio_s,
            "calls": len(r.calls),
            "truncated": r.truncated,
            "setup_s": r.setup_s,
            "repeat_rtfs": r.repeat_rtfs,
            **r.first_output(),
        }
        if r.op == "decode":
            twin_run = {"offline": twin_ref, "ours": twin_stream, "sliding window": twin_sliding}.get(
                r.name, twin_naive
            )
            row["max_abs_noise_off"] = dev[r.name]
            row["covered_samples"] = list(twin_run.covered)
            if r.name == "ours":
                row["max_abs_seeded"] = seeded[r.hop]
        else:
            row["code_mismatches"], row["codes_compared"] = (
                mismatches[r.hop] if r.name == "ours" else (0, sum(int(c.numel()) for c in codes))
            )
        methods.append(row)

    def rtf(run: Run) -> float | None:
        return run.rtf

    stream_enc, stream_dec = enc_runs["frame"], dec_runs["frame"]
    ratios = {
        "target": 1.15,
        "stream_over_offline_encode": _ratio(rtf(stream_enc), rtf(off_enc)),
        "stream_over_offline_decode": _ratio(rtf(stream_dec), rtf(off_dec)),
        "stream_tick_over_offline_encode": _ratio(rtf(enc_runs["tick"]), rtf(off_enc)),
        "stream_tick_over_offline_decode": _ratio(rtf(dec_runs["tick"]), rtf(off_dec)),
        "stream_4frames_over_offline_encode": _ratio(rtf(enc_runs["4 frames"]), rtf(off_enc)),
        "stream_4frames_over_offline_decode": _ratio(rtf(dec_runs["4 frames"]), rtf(off_dec)),
        "sliding_window_over_stream_decode": _ratio(rtf(sliding), rtf(stream_dec)),
        "sliding_window_over_offline_decode": _ratio(rtf(sliding), rtf(off_dec)),
        "naive_chunks_over_stream_decode": _ratio(rtf(naive), rtf(stream_dec)),
    }
    for op in ("encode", "decode"):
        r = ratios[f"stream_over_offline_{op}"]
        ratios[f"{op}_meets_target"] = None if r is None else bool(r <= ratios["target"])

    cost = {
        "audio_seconds": x.shape[-1] / sr,
        "budget_s_per_method": budget_s,
        "repeats": repeats,
        "repeat_policy": "methods interleaved; the repetition with the lowest RTF is reported",
        "stream_hop": "frame",
        "offline_encode_rtf": rtf(off_enc),
        "stream_encode_rtf": rtf(stream_enc),
        "stream_encode_rtf_tick": rtf(enc_runs["tick"]),
        "stream_encode_rtf_4frames": rtf(enc_runs["4 frames"]),
        "offline_decode_rtf": rtf(off_dec),
        "stream_decode_rtf": rtf(stream_dec),
        "stream_decode_rtf_tick": rtf(dec_runs["tick"]),
        "stream_decode_rtf_4frames": rtf(dec_runs["4 frames"]),
        "sliding_window_decode_rtf": rtf(sliding),
        "naive_chunks_decode_rtf": rtf(naive),
        "noise_off_offline_decode_rtf": rtf(twin_ref),
        "noise_off_stream_decode_rtf": rtf(twin_stream),
        "ratios": ratios,
        "methods": methods,
    }
    total_mismatch = sum(m for m, _ in mismatches.values())
    exactness = {
        "reference": "offline model.decode of the same codes by the same weights with noise off "
        "(noise-free twin); deviations over the samples each method produces, aligned",
        "reference_rms": float(ref.double().pow(2).mean().sqrt()) if ref.numel() else 0.0,
        "stream_decode_max_abs": dev["ours"],
        "sliding_window_max_abs": dev["sliding window"],
        "naive_chunks_max_abs": dev["naive chunks"],
        "stream_decode_seeded_max_abs": max(seeded.values()),
        "stream_decode_seeded_by_hop": seeded,
        "stream_encode_code_mismatches": total_mismatch,
        "stream_encode_mismatches_by_hop": {
            k: {"differ": m, "compared": n} for k, (m, n) in mismatches.items()
        },
        "sliding_window_coverage": {
            "first_sample": twin_sliding.covered[0],
            "end_sample": twin_sliding.covered[1],
            "missing_start_samples": twin_sliding.covered[0],
            "missing_end_samples": ref.shape[-1] - twin_sliding.covered[1],
            "truncated": twin_sliding.truncated,
        },
    }
    enc_steps, dec_steps = stream_enc.step_times(), stream_dec.step_times()
    n = min(len(enc_steps), len(dec_steps))
    both = [1000 * (a + b) for a, b in zip(enc_steps[:n], dec_steps[:n], strict=True)]
    per_hop = {
        "definition": "one coarse frame through the whole codec: StreamingEncoder.push of frame_size "
        "samples + StreamingDecoder.push of one coarse frame of codes (p over hops)",
        "hop_ms": 1000 * fs / sr,
        **{k: v for k, v in percentiles(both).items() if k in ("p50", "p95", "p99", "max", "mean", "n")},
        "encode": percentiles([1000 * t for t in enc_steps]),
        "decode": percentiles([1000 * t for t in dec_steps]),
    }
    per_hop["p99_over_hop"] = None if per_hop["p99"] is None else per_hop["p99"] / per_hop["hop_ms"]
    return {"cost": cost, "exactness": exactness, "per_hop_ms": per_hop, "codes": codes, "runs": runs}


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b

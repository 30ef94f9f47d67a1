"""The text report of ``python -m benchmarks.serving``: a line per run as it goes, a table at the end."""

from __future__ import annotations


def _ms(v) -> str:
    return "-" if v is None else f"{v:.0f}"


def _f(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def progress_line(r: dict) -> str:
    fa, fb, n = r["first_audio"], r["frame_buffered"], r["streams"]
    return (
        f"ttfa p50 {_ms(fa['ttfa_ms']['p50'])} p95 {_ms(fa['ttfa_ms']['p95'])} ms, "
        f"underruns in {fa['requests_with_underrun']}/{n} | 85 ms buffered: ttfa p50 "
        f"{_ms(fb['ttfa_ms']['p50'])} ms, underruns in {fb['requests_with_underrun']}/{n} | "
        f"decoder CPU/audio s {_f(r['compute_cpu_per_audio_s'])}, done {r['completed']}/{n}"
    )


def _granularity(g: dict) -> list[str]:
    lines = [
        f"1. Granularity (one stream, {g['audio_s']:.1f} s of audio, best of {g['repeats']}): seconds per "
        "audio second, process CPU (wall)",
    ]
    cpu, wall = g["cpu_rtf"], g["rtf"]
    names = {
        "token_frame_hop": "per token, one-frame steps (default)",
        "frame_frame_hop": "per frame (7 tokens a push)",
        "token_tick_hop": "per token, per-tick steps",
        "dropin_text_per_token": "drop-in tokens_decoder_sync, text pieces",
    }
    lines += [f"   {label:<42} {cpu[k]:.3f} ({wall[k]:.3f})" for k, label in names.items()]
    r, rw, first = g["cpu_ratios"], g["ratios"], g["first_audio_tokens"]
    lines += [
        f"   per token / per frame: {r['per_token_over_per_frame']:.2f}x CPU "
        f"({rw['per_token_over_per_frame']:.2f}x wall; target <= {g['target_per_token_over_per_frame']}x); "
        f"per-tick steps / per frame: {r['per_token_tick_hop_over_per_frame']:.2f}x "
        f"({rw['per_token_tick_hop_over_per_frame']:.2f}x)",
        f"   first audio after {first['tick_hop']} tokens (per-tick steps), {first['frame_hop']} "
        f"(one-frame steps); Orpheus window: {first['orpheus_window']}",
    ]
    return lines


HEADER = (
    f"   {'N':>3} {'decoder':>15} | {'TTFA p50/p95/p99':>17} {'underrun':>8} {'stall ms':>8} | "
    f"{'TTFA p50/p95':>13} {'underrun':>8} | {'CPU':>5} {'wall':>5} {'proc':>5} {'batch':>5} | exactness"
)


def _row(res: dict) -> str:
    fa, fb, ex, n = res["first_audio"], res["frame_buffered"], res["exactness"], res["streams"]
    t, tb = fa["ttfa_ms"], fb["ttfa_ms"]
    exact = f"lost {ex['samples_lost']} samples"
    if "max_lsb" in ex:
        exact += f", max {ex['max_lsb']} LSB ({ex['samples_differing']}/{ex['checked_samples']} differ)"
    if res["completed"] < n:
        exact += f"  [{res['completed']}/{n} done in {res['cap_s']:.0f} s]"
    ttfa = f"{_ms(t['p50'])}/{_ms(t['p95'])}/{_ms(t['p99'])}"
    ttfa_b = f"{_ms(tb['p50'])}/{_ms(tb['p95'])}"
    under, under_b = f"{fa['requests_with_underrun']}/{n}", f"{fb['requests_with_underrun']}/{n}"
    return (
        f"   {n:>3} {res['method']:>15} | {ttfa:>17} {under:>8} {fa['stall_ms_total']:>8.0f} | "
        f"{ttfa_b:>13} {under_b:>8} | {_f(res['compute_cpu_per_audio_s']):>5} "
        f"{_f(res['compute_per_audio_s']):>5} {_f(res['cpu_per_audio_s']):>5} "
        f"{res['mean_batch']:>5.1f} | {exact}"
    )


def report(r: dict) -> str:
    m, c = r["machine"], r["config"]
    lines = [
        f"snac-stream serving benchmark: {m['cpu']} (torch CPU capability {m.get('cpu_capability')}), "
        f"device {m['device']}, {m['threads']} torch thread(s), {c['workers']} worker(s), "
        f"model {r['model']['spec']}",
        f"allocator: {m['allocator']['summary']}; load average {m.get('loadavg_start')} at start, "
        f"{m.get('loadavg_end')} at the end",
        "",
        *_granularity(r["granularity"]),
        "",
        "2. Serving: each request played in real time; TTFA = ms from its first token to the start of",
        "   playback: at its first audio (left), or once 85 ms (one coarse frame) are buffered (right);",
        "   underrun = requests whose playback starved; per audio second: CPU and wall seconds of the",
        "   decoder's calls, proc = CPU seconds of the whole process (simulated LMs and event loop too)",
        f"   workload: {c['workload']}",
        f"   {'':>20} | {'from the first audio':^35} | {'from 85 ms buffered':^22} |",
        HEADER,
        *(_row(res) for res in r["serving"]),
    ]
    if r.get("max_sustained"):
        found = ", ".join(f"{k} {v['max_sustained']}" for k, v in r["max_sustained"].items())
        lines.append(f"   largest N sustained (all finish, no underrun from 85 ms buffered): {found}")
    w = r["window_exactness"]
    lines += [
        "",
        f"3. Orpheus window vs the exact decode (noise-free twin, {w['frames']} frames): "
        f"{w['samples_out']} of {w['samples_exact']} samples (the first {w['missing_start_samples']} "
        f"and last {w['missing_end_samples']} never come out), max deviation {w['max_abs']:.2e} "
        f"({w['max_lsb']:.0f} int16 LSB)",
    ]
    return "\n".join(lines)

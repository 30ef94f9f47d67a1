"""The human side of ``snac-stream bench``: rich tables and a one-page PNG."""

from __future__ import annotations

from .bench_e2e import COMPONENTS

COMPONENT_COLORS = {
    "algorithmic": "#4c72b0",
    "capture": "#c7c7c7",
    "encode": "#dd8452",
    "transport": "#55a868",
    "queue": "#8c8c8c",
    "decode": "#c44e52",
}


def _f(v, fmt: str = "{:.1f}", none: str = "-") -> str:
    return none if v is None else fmt.format(v)


def _dev(v) -> str:
    if v is None:
        return "-"
    return "0" if v == 0 else f"{v:.1e}"


def render(result: dict, console) -> None:
    from rich.table import Table

    m, mach, lat, cost = result["model"], result["machine"], result["latency"], result["cost"]
    hop, wire = result["per_hop_ms"], result["wire"]
    e1, en = result["e2e"]["single"], result["e2e"]["concurrent"]

    weights = (
        "SEEDED RANDOM weights: timings and latencies are real, the audio is not"
        if m["random_weights"]
        else ""
    )
    console.print(
        f"[bold]snac-stream bench[/bold]  model [cyan]{m['spec']}[/cyan] ({m['sample_rate']} Hz, "
        f"{m['parameters'] / 1e6:.1f} M params, coarse frame {m['coarse_frame_ms']:.1f} ms, "
        f"attention window {m['attn_window_size'] or 'none'})"
    )
    if weights:
        console.print(f"[yellow]{weights}[/yellow]")
    console.print(
        f"device {mach['device']}{' (' + mach['gpu'] + ')' if mach['gpu'] else ''}, "
        f"{mach['threads']} torch threads, {mach['cpu']} x{mach['cpu_count']}, torch {mach['torch']}; "
        f"load average {mach['loadavg_start']} -> {mach.get('loadavg_end')}"
    )
    console.print(f"allocator: {mach['allocator']['summary']}")
    if mach.get("warnings"):
        for w in mach["warnings"]:
            console.print(f"[yellow]warning: {w}[/yellow]")
    console.print(
        f"audio: {result['signal']['description']}, {cost['audio_seconds']:.1f} s for cost, "
        f"{e1['audio_seconds']:.1f} s for end to end"
    )

    t = Table(title="Latency (exact mode; no lower-latency mode exists yet)", title_justify="left")
    for col in ("", "analytic", "probe", "measured p50", "p95", "p99"):
        t.add_column(col, justify="right" if col else "left")
    sr = m["sample_rate"]
    pr = lat["probe"]
    phases = (
        "all phases"
        if pr["complete"]
        else f"{len(pr['encoder_blocks'])}/{pr['encoder_period_blocks']} phases"
    )
    dphases = "all" if pr["complete"] else f"{len(pr['decoder_ticks'])}/{pr['decoder_period_ticks']}"
    t.add_row(
        "encoder (algorithmic)",
        f"{lat['encoder_algorithmic_ms']:.1f} ms ({lat['encoder_algorithmic_samples']})",
        f"{lat['encoder_probe_ms']:.1f} ms ({phases})",
        "",
        "",
        "",
    )
    t.add_row(
        "decoder (algorithmic)",
        f"{lat['decoder_algorithmic_ms']:.1f} ms ({lat['decoder_algorithmic_samples']})",
        f"{lat['decoder_probe_ms']:.1f} ms ({dphases})",
        "",
        "",
        "",
    )
    t.add_row(
        "codec (algorithmic)",
        f"{lat['e2e_algorithmic_ms']:.1f} ms ({lat['e2e_algorithmic_samples']})",
        "",
        "",
        "",
        "",
    )
    for label, e in (("end to end, 1 stream", e1), (f"end to end, {en['streams']} streams", en)):
        tot = e["total_ms"]
        t.add_row(label, "", "", _f(tot["p50"]) + " ms", _f(tot["p95"]) + " ms", _f(tot["p99"]) + " ms")
    console.print(t)
    for e in (e1, en):
        if e.get("keeps_up_with_real_time") is False:
            console.print(
                f"  [yellow]{e['streams']} stream(s): the senders fell behind real time (capture p99 "
                f"{e['components_ms']['capture']['p99']:.0f} ms): encode + decode of all streams need more "
                "CPU than this machine gave them[/yellow]"
            )
    console.print(
        f"  (samples at {sr} Hz; end to end over loopback WebSocket, {e1['block_ms']:.0f} ms capture blocks)"
    )

    t = Table(title="Where end-to-end latency goes (ms per sample)", title_justify="left")
    t.add_column("component")
    for label in ("1 stream", f"{en['streams']} streams"):
        t.add_column(f"{label} p50", justify="right")
        t.add_column("p99", justify="right")
        t.add_column("mean", justify="right")
    rows = [(c, e1["components_ms"][c], en["components_ms"][c]) for c in COMPONENTS]
    rows += [("= total", e1["total_ms"], en["total_ms"])]
    for name, a, b in rows:
        t.add_row(name, _f(a["p50"]), _f(a["p99"]), _f(a["mean"]), _f(b["p50"]), _f(b["p99"]), _f(b["mean"]))
    console.print(t)

    t = Table(title=f"Cost and exactness ({cost['audio_seconds']:.1f} s of audio)", title_justify="left")
    for col in (
        "op",
        "method",
        "hop",
        "RTF",
        "x offline",
        "first output ms",
        "max |dev| noise off",
        "seeded",
        "note",
    ):
        t.add_column(col, justify="left" if col in ("op", "method", "hop", "note") else "right")
    offline = {r["op"]: r["rtf"] for r in cost["methods"] if r["name"] == "offline"}
    for r in cost["methods"]:
        notes = []
        if r["truncated"]:
            notes.append(f"budget: {r['audio_s']:.1f} s done")
        if r["op"] == "encode" and r["name"] == "ours":
            notes.append(f"{r['code_mismatches']}/{r['codes_compared']} codes differ")
        if r["name"] == "sliding window":
            a, b = r["covered_samples"]
            fs = m["coarse_frame_samples"]
            notes.append(f"outputs samples [{a}, {b}): never frame 0 nor the last 2 (frames of {fs})")
        ttfa = "-"
        if r["ttfa_ms"] is not None:
            ttfa = f"{r['ttfa_ms']:.0f} ({r['ttfa_wait_ms']:.0f}+{r['ttfa_compute_ms']:.0f})"
        rel = r["rtf"] / offline[r["op"]] if r["rtf"] is not None and offline.get(r["op"]) else None
        t.add_row(
            r["op"],
            r["name"],
            r["hop"] + (f" {r['hop_ms']:.0f} ms" if r["hop_ms"] else ""),
            _f(r["rtf"], "{:.3f}"),
            _f(rel, "{:.2f}x"),
            ttfa,
            _dev(r.get("max_abs_noise_off")) if r["op"] == "decode" else "",
            _dev(r.get("max_abs_seeded")) if "max_abs_seeded" in r else "",
            "; ".join(notes),
        )
    console.print(t)
    console.print(
        "  RTF = compute s / audio s. first output = wait for input in real time + compute (ms). "
        "Deviation vs offline decode, noise off (same weights);"
        " 'seeded' = ours with noise vs offline with the same seed."
    )
    ra = cost["ratios"]

    def verdict(ok):
        return "" if ok is None else ("[green]meets[/green]" if ok else "[red]misses[/red]")

    console.print(
        f"[bold]streaming / offline cost[/bold] (hop 1 coarse frame): encode "
        f"{_f(ra['stream_over_offline_encode'], '{:.2f}x')} {verdict(ra['encode_meets_target'])}, decode "
        f"{_f(ra['stream_over_offline_decode'], '{:.2f}x')} {verdict(ra['decode_meets_target'])} "
        f"the <= {ra['target']}x target; sliding window costs "
        f"{_f(ra['sliding_window_over_stream_decode'], '{:.2f}x')} ours "
        f"({_f(ra['sliding_window_over_offline_decode'], '{:.2f}x')} offline)"
    )

    t = Table(
        title=f"Compute per hop (1 coarse frame = {hop['hop_ms']:.1f} ms of audio)", title_justify="left"
    )
    for col in ("step", "p50 ms", "p95 ms", "p99 ms", "max ms", "p99 / hop"):
        t.add_column(col, justify="left" if col == "step" else "right")
    for name, d in (("encode push", hop["encode"]), ("decode push", hop["decode"]), ("encode + decode", hop)):
        t.add_row(
            name,
            _f(d["p50"]),
            _f(d["p95"]),
            _f(d["p99"]),
            _f(d["max"]),
            _f(None if d["p99"] is None else d["p99"] / hop["hop_ms"], "{:.2f}"),
        )
    console.print(t)

    t = Table(
        title=f"Wire (1 stream, one CODES packet per encoder push: {wire['frames_per_packet_mean']:.2f} "
        "coarse frames per packet on average)",
        title_justify="left",
    )
    for col in ("", "bits/s", "x nominal"):
        t.add_column(col, justify="left" if not col else "right")
    nominal = wire["nominal_bps"]
    for name, v in (
        ("nominal codec bitrate", nominal),
        ("packets (our headers)", wire["payload_bps"]),
        ("on the wire, publisher -> relay", wire["measured_bps"]),
        ("on the wire, relay -> listener", wire["listener_bps"]),
        ("predicted (packets.wire_overhead)", wire["predicted_bps"]),
    ):
        t.add_row(name, f"{v:,.0f}", f"{v / nominal:.2f}x")
    console.print(t)
    e_ex = e1["exactness"]
    console.print(
        "  end-to-end output vs offline decode (seed 0): max |dev| "
        f"{_dev(e_ex['max_abs_vs_offline_seeded'])}, "
        f"{e_ex['code_mismatches_vs_offline']} code mismatches; total bench time {result['elapsed_s']:.0f} s"
    )


# ----------------------------------------------------------------------------- plot


def plot(result: dict, path: str) -> None:
    """One page, four panels: latency breakdown, cost per method, exactness, compute per hop."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    m, lat, cost, ex, hop = (result[k] for k in ("model", "latency", "cost", "exactness", "per_hop_ms"))
    mach = result["machine"]
    e1, en = result["e2e"]["single"], result["e2e"]["concurrent"]
    fig, axes = plt.subplots(2, 2, figsize=(16, 10.5), layout="constrained")
    fig.suptitle(
        f"snac-stream bench: {m['spec']} ({m['sample_rate']} Hz"
        f"{', seeded random weights' if m['random_weights'] else ''}) on {mach['device']}, "
        f"{mach['threads']} torch thread(s), {mach['cpu']} x{mach['cpu_count']}, torch {mach['torch']}",
        fontsize=12,
        fontweight="bold",
    )
    small = {"fontsize": 8, "clip_on": True}

    # (a) latency breakdown ------------------------------------------------------------
    ax = axes[0, 0]
    e2e_a = lat["e2e_algorithmic_ms"]
    rows = [(f"{en['streams']} streams", en), ("1 stream", e1)]
    xmax = 1.45 * max(e1["total_ms"]["p99"] or 0.0, e2e_a)
    if (en["total_ms"]["p99"] or 0.0) * 1.1 <= xmax * 1.6:  # no need to clip: show everything
        xmax = 1.1 * max(xmax / 1.45, en["total_ms"]["p99"] or 0.0)
    for i, (_, e) in enumerate(rows):
        left = 0.0
        for c in COMPONENTS:
            w = e["components_ms"][c]["mean"] or 0.0
            ax.barh(i, w, left=left, color=COMPONENT_COLORS[c], label=c if i == 0 else None, height=0.55)
            shown = min(left + w, xmax) - min(left, xmax)
            if shown > 0.06 * xmax:
                ax.text(left + shown / 2, i, f"{w:.0f}", ha="center", va="center", color="white", **small)
            left += w
        tot = e["total_ms"]
        for q, mk in (("p50", "|"), ("p95", "x"), ("p99", "*")):
            if tot[q] is not None and tot[q] <= xmax:
                ax.plot(tot[q], i, marker=mk, color="black", markersize=10, linestyle="none")
        label = f"total p50 {tot['p50']:.0f} / p95 {tot['p95']:.0f} / p99 {tot['p99']:.0f} ms"
        if left > xmax:
            label += f" (bar clipped at {xmax:.0f})"
        if e.get("keeps_up_with_real_time") is False:
            label += ": senders fell behind real time (too little CPU)"
        ax.text(xmax * 0.01, i + 0.4, label, va="center", **small)
    i = len(rows)
    ax.barh(i, e2e_a, color=COMPONENT_COLORS["algorithmic"], height=0.55, alpha=0.5)
    ax.text(
        xmax * 0.01,
        i + 0.4,
        f"analytic worst case {e2e_a:.0f} ms (encoder {lat['encoder_algorithmic_ms']:.0f} + decoder "
        f"{lat['decoder_algorithmic_ms']:.0f}; probes {lat['encoder_probe_ms']:.0f} / "
        f"{lat['decoder_probe_ms']:.0f})",
        va="center",
        **small,
    )
    ax.set_yticks(
        np.arange(len(rows) + 1),
        [f"measured\n{r[0]}" for r in rows] + ["algorithmic\n(lookahead)"],
        fontsize=9,
    )
    ax.set_ylim(-0.5, len(rows) + 1.35)
    ax.set_xlim(0, xmax)
    ax.set_xlabel("ms per sample: bars = mean of each part; markers = total p50 |  p95 x  p99 *")
    ax.set_title(f"End-to-end latency over loopback WebSocket ({e1['block_ms']:.0f} ms capture blocks)")
    ax.legend(loc="upper center", fontsize=8, ncol=len(COMPONENTS), framealpha=0.95)
    ax.grid(axis="x", alpha=0.3)

    # (b) cost per method ---------------------------------------------------------------
    ax = axes[0, 1]
    methods = cost["methods"]
    labels = [f"{r['op']}: {r['name']}" + ("" if r["hop"] == "whole" else f" ({r['hop']})") for r in methods]
    rtfs = [r["rtf"] or 0.0 for r in methods]
    palette = {"offline": "#8c8c8c", "ours encode": "#4c72b0", "ours decode": "#55a868"}
    colors = [palette.get(r["name"], palette.get(f"{r['name']} {r['op']}", "#c44e52")) for r in methods]
    yy = np.arange(len(methods))[::-1]
    xmax_b = max(rtfs + [1.0]) * 1.3
    bars = ax.barh(yy, rtfs, color=colors, height=0.65)
    for b, r, v in zip(bars, methods, rtfs, strict=True):
        if r["truncated"]:
            b.set_hatch("//")
        note = f" {v:.2f}" + (f" (first {r['audio_s']:.1f} s, budget)" if r["truncated"] else "")
        ax.text(v, b.get_y() + b.get_height() / 2, note, va="center", **small)
    ax.axvline(1.0, color="black", linestyle="--", linewidth=1, label="real time (RTF 1)")
    ax.set_yticks(yy, labels, fontsize=8)
    ax.set_xlim(0, xmax_b)
    ax.set_xlabel("real-time factor = compute s / audio s (lower is better)")
    ra = cost["ratios"]
    enc_r, dec_r = ra["stream_over_offline_encode"], ra["stream_over_offline_decode"]
    ax.set_title(
        f"Cost per method ({cost['audio_seconds']:.0f} s of audio)\nours (hop 1 frame) / offline: encode "
        f"{_f(enc_r, '{:.2f}x')}, decode {_f(dec_r, '{:.2f}x')} (target <= {ra['target']}x); "
        f"sliding window / ours: {_f(ra['sliding_window_over_stream_decode'], '{:.2f}x')}",
        fontsize=10,
    )
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="x", alpha=0.3)

    # (c) exactness and first audio of the decoders -----------------------------------
    ax = axes[1, 0]
    dec = [
        r
        for r in methods
        if r["op"] == "decode" and r["name"] != "offline" and r["hop"] in ("frame", "window")
    ]
    names = [f"{r['name']}\n(hop {r['hop']})" for r in dec]
    x = np.arange(len(dec))
    vals = [r["max_abs_noise_off"] for r in dec]
    bars = ax.bar(
        x, [max(v, 1e-9) for v in vals], color=[palette.get(f"{r['name']} decode", "#c44e52") for r in dec]
    )
    ax.set_yscale("log")
    ax.set_ylim(1e-9, 30)
    for b, r, v in zip(bars, dec, vals, strict=True):
        ttfa = "" if r["ttfa_ms"] is None else f"\nfirst audio {r['ttfa_ms']:.0f} ms"
        ax.text(b.get_x() + b.get_width() / 2, max(v, 1e-9) * 2, f"{v:.1e}{ttfa}", ha="center", **small)
    ax.axhline(ex["reference_rms"], color="gray", linestyle=":", linewidth=1, label="RMS of the exact output")
    ax.set_xticks(x, names, fontsize=9)
    ax.set_ylabel("max |output - exact offline output|")
    ax.set_title(
        "Exactness: same codes, same weights, noise off (ours with noise and seed 0: "
        + _dev(ex["stream_decode_seeded_max_abs"])
        + ")",
        fontsize=10,
    )
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(axis="y", alpha=0.3)

    # (d) compute per hop ---------------------------------------------------------------
    ax = axes[1, 1]
    keys = [("encode push", hop["encode"]), ("decode push", hop["decode"]), ("encode + decode", hop)]
    x = np.arange(len(keys))
    width = 0.26
    for j, (q, col) in enumerate((("p50", "#4c72b0"), ("p95", "#dd8452"), ("p99", "#c44e52"))):
        vals = [d[q] or 0.0 for _, d in keys]
        bs = ax.bar(x + (j - 1) * width, vals, width, color=col, label=q)
        for b, v in zip(bs, vals, strict=True):
            ax.text(b.get_x() + b.get_width() / 2, v, f"{v:.0f}", ha="center", va="bottom", **small)
    ax.axhline(
        hop["hop_ms"], color="black", linestyle="--", linewidth=1, label=f"hop = {hop['hop_ms']:.1f} ms audio"
    )
    top = max([hop["hop_ms"]] + [d[q] or 0.0 for _, d in keys for q in ("p99",)])
    ax.set_ylim(0, top * 1.2)
    ax.set_xticks(x, [k for k, _ in keys])
    ax.set_ylabel("ms of compute per coarse frame")
    ax.set_title("Compute latency per hop (one streaming step of 1 coarse frame)")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(axis="y", alpha=0.3)

    w = result["wire"]
    fig.get_layout_engine().set(h_pad=0.15)
    fig.text(
        0.5,
        -0.01,
        f"wire: nominal {w['nominal_bps']:.0f} b/s, packets {w['payload_bps']:.0f} b/s, on the wire "
        f"{w['measured_bps']:.0f} b/s ({w['measured_bps'] / w['nominal_bps']:.2f}x nominal).   "
        f"allocator: {mach['allocator']['summary']}.   load average {mach['loadavg_start']}",
        ha="center",
        fontsize=8,
    )
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)

"""``snac-stream info [MODEL] [--json]``: the numbers a user picks a codec by.

Sample rate, hop, frame rate of every level, codes per coarse frame and its duration,
bitrate, algorithmic streaming latency, parameter count, attention window and the model
fingerprint. MODEL is a local checkpoint directory, a hub id or ``random:24khz`` /
``random:32khz`` / ``random:44khz``; without MODEL the published 24 kHz model is used, or
(offline) its seeded random stand-in with a loud warning.
"""

from __future__ import annotations

import argparse
import json
import sys

from snac_stream.runtime import HUGE_PAGES_ENV, huge_pages_enabled

HELP = "print a model's rates, bitrate, latency and size"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model",
        nargs="?",
        default=None,
        metavar="MODEL",
        help="checkpoint directory, hub id or random:24khz|random:32khz|random:44khz[:SEED] "
        "(default: the published 24 kHz model; its seeded random stand-in, with a warning, when offline)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def model_info(model, spec: str) -> dict:
    """Everything ``info`` prints, as JSON-able values (rates in Hz, bitrate in bits/s)."""
    from snac_stream.engine.latency import decoder_latency, encoder_latency, end_to_end_latency

    info = {"model": spec, **model.describe()}
    info["latency_ms"] = {
        "encoder": encoder_latency(model).ms,
        "decoder": decoder_latency(model).ms,
        "end_to_end": end_to_end_latency(model).ms,
    }
    info.update(
        n_codebooks=model.n_codebooks,
        latent_rate_hz=model.latent_rate,
        decoder_hop=model.decoder_hop,
        pad_multiple=model.pad_multiple,
        bits_per_code=model.bits_per_code,
        bitrate_kbps=model.bitrate / 1000,
        fingerprint=model.fingerprint().hex(),
    )
    from snac_stream import kernels

    chosen = kernels.select(model.device).describe()  # what the streaming engines run here, and why
    info["kernels"] = chosen
    info["native_kernels"] = chosen.get("native_library")
    info["huge_pages"] = huge_pages_enabled()  # weights in huge pages (see snac_stream.runtime)
    return info


def _kernels_line(k: dict) -> str:
    if k["kernels"] == "generic":
        return f"generic torch ops ({k['reason']})"
    parts = [f"GEMMs {k['gemm']} (bf16: {k['gemm_bf16']})", f"Snake {k['snake']}"]
    return f"native: {', '.join(parts)} ({k['reason']})"


def format_table(info: dict) -> str:
    rates = " / ".join(f"{r:g}" for r in info["frame_rates_hz"])
    window = info["attn_window_size"]
    lat = info["latency_ms"]
    rows = [
        ("model", info["model"]),
        ("sample rate", f"{info['sample_rate']} Hz"),
        ("hop", f"{info['hop_length']} samples (latent frame rate {info['latent_rate_hz']:g} Hz)"),
        ("levels", f"{info['n_codebooks']} (vq_strides {info['vq_strides']})"),
        ("frame rates", f"{rates} Hz (coarse to fine)"),
        ("codes per coarse frame", str(info["codes_per_coarse_frame"])),
        (
            "coarse frame",
            f"{info['coarse_frame_samples']} samples = {info['coarse_frame_ms']:.2f} ms",
        ),
        ("codebook", f"{info['codebook_size']} entries ({info['bits_per_code']:g} bits per code)"),
        ("bitrate", f"{info['bitrate_bps']:.1f} bps ({info['bitrate_kbps']:.3f} kbps)"),
        ("attention window", "none" if window is None else f"{window} latent frames"),
        (
            "algorithmic latency",
            f"encoder {lat['encoder']:.0f} ms, decoder {lat['decoder']:.0f} ms, end to end "
            f"{lat['end_to_end']:.0f} ms (exact streaming, worst case over frame phase)",
        ),
        ("parameters", f"{info['parameters'] / 1e6:.1f} M ({info['parameters']:,})"),
        ("fingerprint", info["fingerprint"]),
        ("streaming kernels", _kernels_line(info["kernels"])),
        (
            "huge pages",
            f"on ({HUGE_PAGES_ENV}=1: weights in transparent huge pages)"
            if info["huge_pages"]
            else f"off ({HUGE_PAGES_ENV} is not 1)",
        ),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def run(args: argparse.Namespace) -> int:
    from snac_model import DEFAULT_MODEL, CheckpointError, load_model

    spec = args.model or DEFAULT_MODEL
    try:
        model = load_model(spec, fallback_to_random=args.model is None)
    except (CheckpointError, ValueError) as e:
        print(f"snac-stream info: error: {e}", file=sys.stderr)
        return 2
    info = model_info(model, spec)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(format_table(info))
    return 0

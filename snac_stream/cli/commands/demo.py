"""``snac-stream demo``: the main job end to end on this machine — a relay server on
loopback, a sender (the microphone if there is one, else an embedded sample) streaming
codes in real time, a listener decoding them (speaker if there is one, and a WAV file),
and the measured end-to-end latency, algorithmic latency, compute per hop and bitrate."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from .common import add_model_argument, load_model

HELP = "end to end on this machine: server, sender, listener, measured latency"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser, fallback=True)
    parser.add_argument("--seconds", type=float, default=6.0, help="audio to stream (default 6)")
    parser.add_argument(
        "--input", metavar="FILE", help="stream this file instead of the mic / embedded sample"
    )
    parser.add_argument("--no-mic", action="store_true", help="use the embedded sample even if a mic exists")
    parser.add_argument("--no-speaker", action="store_true", help="do not play the result")
    parser.add_argument("--output", default="snac_demo.wav", help="WAV file for the result ('-' for none)")
    parser.add_argument("--frames-per-packet", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="decoder noise seed")
    parser.add_argument("--json", metavar="FILE", help="also write the numbers as JSON")


def run(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from snac_stream.cli.demo import DemoOptions, format_report, run_demo

    model = load_model(args.model, fallback=True)
    options = DemoOptions(
        seconds=args.seconds,
        input=args.input,
        use_mic=False if args.no_mic else None,
        use_speaker=False if args.no_speaker else None,
        output=None if args.output in ("", "-") else args.output,
        frames_per_packet=args.frames_per_packet,
        seed=args.seed,
    )
    print(f"snac-stream demo: streaming {args.seconds:.1f} s through a loopback relay ...", file=sys.stderr)
    result = asyncio.run(run_demo(model, options))
    print(format_report(args.model, model, result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, **asdict(result)}, f, indent=2)
    return 0

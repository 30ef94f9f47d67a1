"""``snac-stream mic``: live mic-to-codes — watch the tokens of each level appear at their
own rates, with input level, bitrate and latency. ``--input FILE`` stands in for the mic."""

from __future__ import annotations

import argparse
import sys

from .common import add_model_argument, load_model

HELP = "live view of the multi-scale codes of the microphone (or a file)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser)
    parser.add_argument(
        "--input", metavar="FILE", help="a file instead of the microphone (played in real time)"
    )
    parser.add_argument("--fast", action="store_true", help="with --input: as fast as possible")
    parser.add_argument("--seconds", type=float, default=None, help="stop after this much audio")


def run(args: argparse.Namespace) -> int:
    from snac_stream.cli.live_view import file_source, mic_source, run_view

    model = load_model(args.model)
    if args.input:
        from snac_stream.audio.files import read_audio

        audio = read_audio(args.input, model.sample_rate)
        if args.seconds is not None:
            audio = audio[: int(args.seconds * model.sample_rate)]
        run_view(model, file_source(audio, model.sample_rate, realtime=not args.fast))
        return 0
    from snac_stream.audio.devices import AudioUnavailableError, Microphone

    try:
        with Microphone(model.sample_rate) as mic:
            mic.start()
            run_view(model, mic_source(mic, args.seconds))
    except AudioUnavailableError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0

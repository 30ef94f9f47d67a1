"""``snac-stream decode INPUT... -o OUTPUT``: ``.snac`` / ``.npz`` code files, or directories of
them, back to audio: WAV (32-bit float), or FLAC (24-bit) for an OUTPUT ending in ``.flac`` or
with ``--audio-format flac``, at the model's sample rate, trimmed to the encoded length exactly as
offline ``forward`` trims. A file made with another model is refused (naming the differing
fields). ``--seed`` keys the decoder noise, so a decode equals ``model.decode(codes, seed=S)``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..file_jobs import add_file_arguments, run_files

HELP = "decode code files (.snac, .npz) or directories to WAV/FLAC"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_file_arguments(parser, "decode", ".snac/.npz")
    parser.add_argument("--seed", type=int, default=0, help="decoder noise seed (default 0)")
    parser.add_argument(
        "--audio-format",
        choices=["wav", "flac"],
        default=None,
        help="output audio format (default: flac for an OUTPUT ending in .flac, else wav)",
    )


def run(args: argparse.Namespace) -> int:
    from snac_stream.files import ContainerError, decode_files, plan_jobs
    from snac_stream.files.formats import CodeSource
    from snac_stream.files.plan import CODE_SUFFIXES

    output = Path(args.output)
    suffix = f".{args.audio_format or ('flac' if output.suffix.lower() == '.flac' else 'wav')}"

    def plan():
        return plan_jobs(args.inputs, output, suffix, CODE_SUFFIXES, skip_existing=args.skip_existing)

    def seconds(job) -> float:
        try:
            source = CodeSource(job.source)
        except (ContainerError, OSError):
            return 0.0
        source.close()
        return source.header.samples / source.header.info.sample_rate

    def work(jobs, model, others, progress):
        return decode_files(
            jobs,
            model,
            seed=args.seed,
            audio_format=args.audio_format,
            batch=args.jobs,
            workers=args.workers,
            others=others,
            progress=progress,
        )

    return run_files(args, "decode", plan, seconds, work)

"""``snac-stream encode INPUT... -o OUTPUT``: audio files, or directories of them (recursed; the
output mirrors their layout), to codes, any length in bounded memory.

Formats (``--format``, default by OUTPUT's suffix, else ``snac``): ``snac``, the versioned container
of docs/files.md; ``npz``, one int array per level; ``tokens``, JSON Lines with the tick-ordered
tokens and LM ids per stream (one ``.jsonl`` per input, or all in one when OUTPUT ends in
``.jsonl``). Other sample rates are resampled (soxr), stereo is mixed to mono (``--channels each``:
one stream per channel). A bad file is reported and the others go on; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..file_jobs import add_file_arguments, run_files

HELP = "encode audio files or directories to codes (.snac, .npz, token JSON Lines), any length"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from snac_stream.engine.tokens import ORPHEUS_AUDIO_OFFSET

    add_file_arguments(parser, "encode", "audio")
    parser.add_argument(
        "--format",
        choices=["snac", "npz", "tokens"],
        default=None,
        help="code format (default: by OUTPUT's suffix .snac/.npz/.jsonl, else snac)",
    )
    parser.add_argument(
        "--channels",
        choices=["mix", "each"],
        default="mix",
        help="mix: channels averaged to one stream (default); each: one stream per channel",
    )
    parser.add_argument(
        "--lm-offset",
        type=int,
        default=ORPHEUS_AUDIO_OFFSET,
        help=f"tokens: LM id of code 0 at frame position 0 (default {ORPHEUS_AUDIO_OFFSET}, Orpheus)",
    )


def run(args: argparse.Namespace) -> int:
    from snac_stream.audio.files import AUDIO_SUFFIXES, AudioFileError, audio_info
    from snac_stream.files import FORMATS, encode_files, plan_jobs
    from snac_stream.files.formats import JsonlCollector

    output = Path(args.output)
    fmt = args.format or next((f for f, s in FORMATS.items() if output.suffix.lower() == s), "snac")
    combined = fmt == "tokens" and output.suffix.lower() == ".jsonl"  # one file for every input
    if combined and args.skip_existing and output.exists():
        print(f"{output} exists; nothing to do (--skip-existing)", file=sys.stderr)
        return 0

    def plan():
        return plan_jobs(
            args.inputs,
            output,
            FORMATS[fmt],
            AUDIO_SUFFIXES,
            combined=combined,
            skip_existing=args.skip_existing,
        )

    def seconds(job) -> float:
        try:
            return audio_info(job.source).seconds
        except AudioFileError:
            return 0.0

    def work(jobs, model, others, progress):
        collector = JsonlCollector(output) if combined and jobs else None
        try:
            summary = encode_files(
                jobs,
                model,
                format=fmt,
                channels=args.channels,
                lm_offset=args.lm_offset,
                batch=args.jobs,
                workers=args.workers,
                collector=collector,
                others=others,
                progress=progress,
            )
        except BaseException:
            if collector is not None:
                collector.discard()
            raise
        if collector is not None:
            collector.commit() if summary.done else collector.discard()
        return summary

    return run_files(args, "encode", plan, seconds, work)

"""The ``snac-stream`` command: one subcommand per module in :mod:`snac_stream.cli.commands`.

Each command module defines ``add_arguments(parser)`` and ``run(args) -> int``. ``main`` sets
the process-wide runtime (:func:`snac_stream.runtime.configure`: one intra-op thread, tuned
allocator, huge pages) before anything loads torch; ``bench`` runs the repository's benchmark
script, which sets its own.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from snac_stream import runtime

COMMANDS = {
    "info": "print a model's rates, bitrate, latency and size",
    "bench": "measure latency, cost, exactness and wire rate (streaming vs offline vs sliding window)",
    "serve": "run the WebSocket server (relay rooms; /encode and /decode with --model)",
    "send": "encode a file or the microphone and publish the codes to a room",
    "listen": "receive codes from a room and decode them to a file or the speaker",
    "mic": "live view of the multi-scale codes of the microphone (or a file)",
    "demo": "end to end on this machine: server, sender, listener, measured latency",
    "encode": "encode audio files or directories to codes (.snac, .npz, token JSON Lines), any length",
    "decode": "decode code files (.snac, .npz) or directories to WAV/FLAC",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="snac-stream", description="Exact streaming engine for SNAC (Multi-Scale Neural Audio Codec)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text in COMMANDS.items():
        module = importlib.import_module(f"snac_stream.cli.commands.{name}")
        p = sub.add_parser(name, help=help_text, description=getattr(module, "__doc__", None) or help_text)
        p.set_defaults(_module=f"snac_stream.cli.commands.{name}")
        module.add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # its arguments are the benchmark's own, passed through as they are
        from snac_stream.cli.commands.bench import forward

        return forward(argv[1:])
    runtime.configure()
    args = build_parser().parse_args(argv)
    module = importlib.import_module(args._module)
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""The ``snac-stream`` command: one subcommand per module in :mod:`snac_stream.commands`.

Each command module defines ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int``; modules are imported only when their subcommand runs.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# torch reads this once, when it loads: buffers of 2 MiB and more (the weights) then live in
# transparent huge pages (fewer TLB misses streaming the 24 kHz decoder's 52 MB of weights every
# hop). Measured, 24 kHz decode with the other core busy, 11 runs each: p99 median 24.5 -> 18.6
# ms, worst 32.1 -> 22.8 ms; p50 unchanged.
HUGE_PAGES_ENV = "THP_MEM_ALLOC_ENABLE"

COMMANDS = {
    "info": "print a model's rates, bitrate, latency and size",
    "bench": "measure latency, cost, exactness and wire rate (streaming vs offline vs sliding window)",
    "serve": "run the WebSocket server (relay rooms; /encode and /decode with --model)",
    "send": "encode a file or the microphone and publish the codes to a room",
    "listen": "receive codes from a room and decode them to a file or the speaker",
    "mic": "live view of the multi-scale codes of the microphone (or a file)",
    "demo": "end to end on this machine: server, sender, listener, measured latency",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="snac-stream", description="Exact streaming engine for SNAC (Multi-Scale Neural Audio Codec)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text in COMMANDS.items():
        module = importlib.import_module(f"snac_stream.commands.{name}")
        p = sub.add_parser(name, help=help_text, description=getattr(module, "__doc__", None) or help_text)
        p.set_defaults(_module=f"snac_stream.commands.{name}")
        module.add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault(HUGE_PAGES_ENV, "1")  # before the command modules load torch
    args = build_parser().parse_args(argv)
    module = importlib.import_module(args._module)
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

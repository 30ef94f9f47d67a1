"""``snac-stream serve``: the relay server (rooms), optionally with model endpoints."""

from __future__ import annotations

import argparse

HELP = "run the WebSocket server: code relay rooms, plus /encode and /decode with --model"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from snac_stream.server import add_serve_arguments

    add_serve_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from snac_stream.server import run_serve

    return run_serve(args)

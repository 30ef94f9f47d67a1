"""``snac-stream serve``: the WebSocket server — relay rooms at ``/rooms/NAME`` (no model
needed), ``/health``, the browser page at ``/``, and with ``--model`` the ``/encode`` and
``/decode`` endpoints and the page's listen/talk routes that run the streaming model
server-side for thin clients (see docs/protocol.md, docs/browser.md)."""

from __future__ import annotations

import argparse

HELP = "run the WebSocket server (relay rooms; /encode and /decode with --model)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from snac_stream.net.server import add_serve_arguments

    add_serve_arguments(parser)
    parser.add_argument(
        "--model",
        default=None,
        help="also serve /encode, /decode and the page's listen/talk (at /) with this model spec",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="decoder noise seed of /decode and the page's rooms (default 0)"
    )


def run(args: argparse.Namespace) -> int:
    from snac_stream.net.browser import add_browser
    from snac_stream.net.server import run_serve

    model = None
    if args.model:
        from .common import load_model

        model = load_model(args.model)

    def setup(server) -> None:
        endpoints = None
        if model is not None:
            from snac_stream.net.endpoints import add_model_endpoints

            endpoints = add_model_endpoints(server, model, seed=args.seed)
        add_browser(server, endpoints)  # the page at /; listen/talk need the model

    return run_serve(args, setup)

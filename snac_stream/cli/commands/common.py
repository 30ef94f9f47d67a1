"""Options and helpers shared by the CLI commands."""

from __future__ import annotations

import argparse
import os
import sys
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

TOKEN_ENV = "SNAC_STREAM_TOKEN"


def add_model_argument(parser: argparse.ArgumentParser, fallback: bool = False) -> None:
    from snac_model import DEFAULT_MODEL

    note = "; falls back to random:24khz, loudly, when the hub is unreachable" if fallback else ""
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"hub id, local checkpoint directory, or random:24khz|32khz|44khz "
        f"(default {DEFAULT_MODEL}{note})",
    )


def add_client_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", required=True, help="room URL, ws://HOST:PORT/rooms/NAME")
    parser.add_argument("--token", default=None, help=f"shared token of the server (default: ${TOKEN_ENV})")
    add_model_argument(parser)


def load_model(spec: str, *, fallback: bool = False):
    """The model for a CLI command, weight norm folded, eval mode. Only ``demo``, ``bench`` and
    ``info`` pass ``fallback=True`` (the embedded default, loudly, when the hub is unreachable):
    a server or client started with a model it cannot load exits with an error instead."""
    from snac_model import load_model as resolve

    try:
        model = resolve(spec, fallback_to_random=fallback)
    except Exception as e:  # CheckpointError, ValueError: say it plainly and stop
        print(f"error: cannot load model {spec!r}: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    return model.fold_weight_norm().eval()


def with_role(url: str, role: str) -> str:
    """``ws://HOST:PORT/rooms/NAME`` -> the same URL with ``?role=ROLE`` (kept if present)."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.path.startswith("/rooms/"):
        raise SystemExit(f"error: --url must look like ws://HOST:PORT/rooms/NAME, got {url!r}")
    query = dict(parse_qsl(parts.query))
    query.setdefault("role", role)
    return urlunsplit(parts._replace(query=urlencode(query)))


def token_from(args: argparse.Namespace) -> str | None:
    return args.token or os.environ.get(TOKEN_ENV) or None

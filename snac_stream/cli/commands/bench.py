"""``snac-stream bench [NAME] ARGS``: a benchmark of the repository, ``python -m benchmarks.NAME ARGS``.

The benchmarks are scripts of the repository, not part of the installed package: this command
finds the checkout (the working directory, or the one the package was installed from in
editable mode) and runs the benchmark there in a fresh interpreter with its own arguments.
``NAME`` is a module of ``benchmarks/`` (``fastpath``, ...); without one it is ``bench``, the
overall benchmark (``snac-stream bench --help`` lists its arguments).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HELP = "measure latency, cost, exactness and wire rate of streaming vs offline / sliding window"


def checkout() -> Path | None:
    """The repository checkout holding ``benchmarks/bench.py``, or None."""
    package_root = Path(__file__).resolve().parents[3]
    for root in (Path.cwd(), package_root):
        if (root / "benchmarks" / "bench.py").is_file():
            return root
    return None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "args", nargs=argparse.REMAINDER, help="[NAME] arguments of python -m benchmarks.NAME"
    )


def forward(argv: list[str]) -> int:
    """Run ``python -m benchmarks.NAME ARGS`` (``argv = [NAME, *ARGS]`` or ``ARGS``) in the
    checkout; its exit status."""
    root = checkout()
    if root is None:
        print(
            "snac-stream bench: error: the benchmarks are scripts of the snac-stream repository; run this "
            "command inside a checkout (or an editable install of one)",
            file=sys.stderr,
        )
        return 2
    name = "bench"
    if argv and not argv[0].startswith("-"):
        if not (root / "benchmarks" / f"{argv[0]}.py").is_file() or argv[0].startswith("_"):
            names = sorted(p.stem for p in (root / "benchmarks").glob("*.py") if not p.stem.startswith("_"))
            print(
                f"snac-stream bench: error: no benchmark {argv[0]!r}; one of {', '.join(names)}",
                file=sys.stderr,
            )
            return 2
        name, argv = argv[0], argv[1:]
    return subprocess.run([sys.executable, "-m", f"benchmarks.{name}", *argv], cwd=root).returncode


def run(args: argparse.Namespace) -> int:
    return forward(args.args)

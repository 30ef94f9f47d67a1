"""What the file commands (``encode``, ``decode``) share: options, progress bars, the run, the summary.

:class:`FileProgress` shows two bars on stderr, files done and seconds of audio processed (the
audio of long files moves while the file count stands still), with ``rich`` (extra ``ui``) when
stderr is a terminal; otherwise nothing until the summary. Safe to call from worker threads.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from snac_stream.files.plan import FileResult, Summary


class FileProgress:
    """``start(files, seconds)``, ``advance(seconds)``, ``done(result)``, ``close()``."""

    def __init__(self, verb: str, enabled: bool = True):
        self.verb = verb
        self._bar = None
        if enabled and sys.stderr.isatty():
            try:
                from rich.console import Console
                from rich.progress import (
                    BarColumn,
                    MofNCompleteColumn,
                    Progress,
                    TextColumn,
                    TimeRemainingColumn,
                )
            except ImportError:
                return
            self._bar = Progress(
                TextColumn("{task.description:>6}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=True,
            )

    @property
    def active(self) -> bool:
        """Whether bars are shown (callers skip work only the bars need)."""
        return self._bar is not None

    def start(self, files: int, seconds: float | None) -> None:
        if self._bar is None:
            return
        self._bar.start()
        self._files = self._bar.add_task("files", total=files)
        self._audio = self._bar.add_task("audio s", total=round(seconds) if seconds else None)

    def advance(self, seconds: float) -> None:
        if self._bar is not None:
            self._bar.advance(self._audio, seconds)

    def done(self, result: FileResult) -> None:
        if self._bar is None:
            return
        self._bar.advance(self._files)
        if result.error is not None:
            self._bar.console.print(f"[red]error[/red]: {result.error}", markup=True, highlight=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def summary_lines(summary: Summary, verb: str, per_file_notes: int = 10) -> list[str]:
    """The end-of-run report: files, audio seconds, codes, real-time factor, conversions, errors."""
    lines = []
    for r in summary.done[:per_file_notes] if len(summary.done) <= per_file_notes else []:
        if r.notes:
            lines.append(f"{r.name}: {', '.join(r.notes)}")
    rtf = summary.rtf
    speed = f", real-time factor {rtf:.3f} ({1 / rtf:.1f}x real time)" if rtf else ""
    lines.append(
        f"{verb} {len(summary.done)} file{'s' * (len(summary.done) != 1)}, {summary.seconds:.1f} s of audio, "
        f"{summary.codes:,} codes in {summary.wall_s:.1f} s{speed}"
    )
    conversions = summary.conversions()
    if conversions:
        lines.append("converted: " + "; ".join(f"{n} x {what}" for what, n in sorted(conversions.items())))
    if summary.skipped:
        lines.append(f"skipped {len(summary.skipped)} (output exists)")
    if summary.failed:
        lines.append(f"{len(summary.failed)} error{'s' * (len(summary.failed) != 1)}:")
        lines += [f"  {r.error}" for r in summary.failed]
    elif not summary.results:
        lines.append("nothing to do")
    return lines


def report(summary: Summary, verb: str, json_out: bool = False) -> int:
    """Print the summary (stderr; JSON on stdout with ``json_out``); the exit status."""
    for line in summary_lines(summary, verb):
        print(line, file=sys.stderr)
    if json_out:
        import json

        print(json.dumps(summary.to_json(), indent=2))
    return summary.exit_status


def add_file_arguments(parser, what: str, inputs: str) -> None:
    """INPUT..., -o OUTPUT, --model, and --jobs, --workers, --skip-existing, --quiet, --json."""
    from .commands.common import add_model_argument

    parser.add_argument("inputs", nargs="+", metavar="INPUT", help=f"{inputs} file or directory")
    parser.add_argument(
        "-o", "--output", required=True, metavar="OUTPUT", help="output file (one input) or directory"
    )
    add_model_argument(parser)
    parser.add_argument(
        "--jobs",
        type=int,
        default=8,
        metavar="N",
        help=f"{what} N files at once, stepped together as batches by the multi-stream engine "
        "(default 8; 1 = one by one)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="W",
        help="worker threads sharing the N files, one core each (default: one per core)",
    )
    parser.add_argument("--skip-existing", action="store_true", help="leave inputs whose output exists")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--json", action="store_true", help="also print the summary as JSON on stdout")


def run_files(args, command: str, plan, seconds, work) -> int:
    """The body of a file command: check the options, ``plan()`` -> (jobs, others), load the model,
    show progress (``seconds(job)``: audio seconds, for the bar), ``work(jobs, model, others,
    progress)`` -> :class:`Summary`, print the summary; the exit status."""
    from snac_stream.files import PlanError

    from .commands.common import load_model

    for name in ("jobs", "workers"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            print(
                f"snac-stream {command}: error: --{name} must be >= 1, got {getattr(args, name)}",
                file=sys.stderr,
            )
            return 2
    try:
        jobs, others = plan()
    except PlanError as e:
        print(f"snac-stream {command}: error: {e}", file=sys.stderr)
        return 2
    model = load_model(args.model) if jobs else None
    progress = FileProgress(command, enabled=not args.quiet)
    progress.start(len(jobs) + len(others), sum(map(seconds, jobs)) if progress.active else None)
    try:
        summary = work(jobs, model, others, progress)
    finally:
        progress.close()
    return report(summary, f"{command}d", args.json)

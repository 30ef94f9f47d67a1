"""Which input goes where: INPUT... and OUTPUT -> jobs, and the results of a run."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .formats import PARTIAL

CODE_SUFFIXES = (".snac", ".npz")


class PlanError(ValueError):
    """Inputs and output that cannot be mapped onto each other (nothing was started)."""


@dataclass(frozen=True)
class Job:
    """One input file and where its output goes; ``name`` is the input relative to its root."""

    source: Path
    output: Path
    name: str


@dataclass
class FileResult:
    """How one input went: ``error`` is None on success; ``seconds`` of audio (source duration),
    ``codes`` written or read (all streams), ``notes`` on what was converted."""

    name: str
    output: Path | None
    error: str | None = None
    skipped: bool = False
    seconds: float = 0.0
    codes: int = 0
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.error is None and not self.skipped


@dataclass
class Summary:
    """All results of a run (those that never started first, then the jobs in order), its wall
    and CPU time (all threads of the process), and ``batches``: engine forwards by batch size."""

    results: list[FileResult] = field(default_factory=list)
    wall_s: float = 0.0
    cpu_s: float = 0.0
    batches: Counter = field(default_factory=Counter)

    @property
    def done(self) -> list[FileResult]:
        return [r for r in self.results if r.ok]

    @property
    def failed(self) -> list[FileResult]:
        return [r for r in self.results if r.error is not None]

    @property
    def skipped(self) -> list[FileResult]:
        return [r for r in self.results if r.skipped]

    @property
    def seconds(self) -> float:
        return sum(r.seconds for r in self.done)

    @property
    def codes(self) -> int:
        return sum(r.codes for r in self.done)

    @property
    def rtf(self) -> float | None:
        """Wall seconds per second of audio processed (< 1: faster than real time)."""
        return self.wall_s / self.seconds if self.seconds else None

    @property
    def exit_status(self) -> int:
        return 1 if self.failed or not self.results else 0

    def conversions(self) -> Counter:
        return Counter(n for r in self.done for n in r.notes)

    def to_json(self) -> dict:
        return {
            "files": len(self.done),
            "failed": len(self.failed),
            "skipped": len(self.skipped),
            "audio_seconds": self.seconds,
            "codes": self.codes,
            "wall_seconds": self.wall_s,
            "cpu_seconds": self.cpu_s,
            "rtf": self.rtf,
            "conversions": dict(self.conversions()),
            "forwards_by_batch_size": {str(k): v for k, v in sorted(self.batches.items())},
            "errors": [{"input": r.name, "error": r.error} for r in self.failed],
        }


# ----------------------------------------------------------------------------- planning


def _scan(root: Path, suffixes: Sequence[str]) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [
            Path(dirpath) / f
            for f in sorted(filenames)
            if not f.startswith(".") and PARTIAL not in f and Path(f).suffix.lower() in suffixes
        ]
    return found


def plan_jobs(
    inputs: Sequence[str | Path],
    output: str | Path,
    suffix: str,
    scan: Sequence[str],
    *,
    combined: bool = False,
    skip_existing: bool = False,
) -> tuple[list[Job], list[FileResult]]:
    """Map INPUT... onto OUTPUT: (jobs, results of inputs that will not run).

    One input file: OUTPUT is the output file (or a directory, if it is one or ends with ``/``).
    One input directory: OUTPUT is a directory mirroring it (files with a ``scan`` suffix, the
    output suffix replacing theirs). Several inputs: each goes under OUTPUT by its own name.
    ``combined``: every job writes to the one file OUTPUT. Missing inputs, empty directories, two
    inputs mapping to one output, and (``skip_existing``) outputs that exist come back as results.
    """
    if not inputs:
        raise PlanError("no INPUT given")
    out_is_dir = Path(output).is_dir() or str(output).endswith(("/", os.sep))
    output = Path(output)
    several = len(inputs) > 1 or Path(inputs[0]).is_dir()
    if several and not combined and output.exists() and not output.is_dir():
        raise PlanError(f"{output} is a file: several inputs (or a directory) need an output directory")
    jobs, others = [], []
    for raw in inputs:
        path = Path(raw)
        if not path.exists():
            others.append(FileResult(str(raw), None, error=f"{raw}: no such file or directory"))
            continue
        if path.is_dir():
            files = _scan(path, scan)
            if not files:
                others.append(
                    FileResult(
                        str(raw), None, error=f"{raw}: no files ending in {', '.join(scan)} in this directory"
                    )
                )
            root = path if len(inputs) == 1 else path.parent
            pairs = [(f, f.relative_to(root)) for f in files]
        else:
            pairs = [(path, Path(path.name))]
        for f, rel in pairs:
            if combined:
                out = output
            elif not several and not out_is_dir:
                out = output
            else:
                out = output / rel.with_suffix(suffix)
            jobs.append(Job(f, out, str(rel) if several else str(raw)))
    kept, seen = [], {}
    for job in jobs:
        key = None if combined else os.path.abspath(job.output)
        if key is not None and key in seen:
            others.append(
                FileResult(
                    job.name, None, error=f"{job.source} and {seen[key]} would both write {job.output}"
                )
            )
        elif skip_existing and job.output.exists():
            others.append(FileResult(job.name, job.output, skipped=True))
        else:
            seen[key] = job.source
            kept.append(job)
    return kept, others


# ----------------------------------------------------------------------------- running

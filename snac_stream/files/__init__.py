"""Files and datasets: audio files <-> codes (``.snac``, ``.npz``, token JSON Lines), any length in
bounded memory, many files batched. The ``snac-stream encode`` / ``decode`` commands run on it.

- one file: :func:`encode_file` (-> codes), :func:`iter_codes` (codes block by block),
  :func:`decode_file` (-> audio), :func:`iter_audio`;
- code files: :func:`write_snac`, :func:`read_snac`, :func:`write_npz`, :func:`read_npz`,
  :func:`read_codes`, :func:`token_records`;
- many files: :func:`plan_jobs`, then :func:`encode_files` / :func:`decode_files` (a
  :class:`Summary` of the run).

Its layer is beside ``net``: it imports ``engine``, ``protocol`` and ``audio``; ``cli`` imports it.
The file format is :mod:`snac_stream.protocol.container` (docs/files.md).
"""

from __future__ import annotations

from snac_stream.protocol.container import (
    ContainerError,
    CorruptContainer,
    SnacHeader,
    SnacReader,
    SnacWriter,
    UnsupportedContainerVersion,
)

from .codec import decode_file, encode_file, iter_audio, iter_codes
from .formats import FORMATS, read_codes, read_npz, read_snac, token_records, write_npz, write_snac
from .jobs import decode_files, encode_files
from .plan import FileResult, Job, PlanError, Summary, plan_jobs
from .tasks import ModelMismatchError

__all__ = [
    "ContainerError",
    "CorruptContainer",
    "UnsupportedContainerVersion",
    "ModelMismatchError",
    "PlanError",
    "SnacHeader",
    "SnacReader",
    "SnacWriter",
    "FORMATS",
    "encode_file",
    "iter_codes",
    "decode_file",
    "iter_audio",
    "write_snac",
    "read_snac",
    "write_npz",
    "read_npz",
    "read_codes",
    "token_records",
    "plan_jobs",
    "encode_files",
    "decode_files",
    "Job",
    "FileResult",
    "Summary",
]

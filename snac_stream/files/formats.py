"""Code file formats on disk: ``.snac`` (:mod:`snac_stream.protocol.container`), ``.npz`` (one int
array per level) and ``tokens`` (JSON Lines of tick-ordered tokens and LM ids), written through a
temporary name and renamed at the end, so no output is ever half-written.

Codes are per level ``[streams, T_i]`` LongTensors (as ``model.encode`` returns them, one row
per stream). The sinks take them block by block (``write``), then ``finish(samples)``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import threading
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from snac_stream.engine.tokens import ORPHEUS_AUDIO_OFFSET, codes_to_tokens, to_lm_ids
from snac_stream.protocol.container import (
    ContainerError,
    CorruptContainer,
    SnacHeader,
    SnacReader,
    SnacWriter,
    frames_to_levels,
    levels_to_frames,
)
from snac_stream.protocol.packets import ModelInfo

FORMATS = {"snac": ".snac", "npz": ".npz", "tokens": ".jsonl"}
PARTIAL = ".partial"  # marks temporary outputs (hidden names: ``.NAME.<random>.partial.EXT``)


def model_info(model_or_info) -> ModelInfo:
    return model_or_info if isinstance(model_or_info, ModelInfo) else ModelInfo.from_model(model_or_info)


def temporary_name(path: Path) -> Path:
    """A hidden name beside ``path`` (its parents created) with the same suffix (soundfile picks the
    format by it). Raises ``OSError`` naming ``path`` and why it cannot be written there."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), path.parent)
        raise NotADirectoryError(f"cannot write {path}: {blocker} is a file, not a directory") from None
    except OSError as e:
        raise OSError(f"cannot write {path}: {e.strerror or e}") from None
    if path.is_dir():
        raise IsADirectoryError(f"cannot write {path}: it is a directory")
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}{PARTIAL}{path.suffix}")


def _create(tmp: Path, path: Path, mode: str):
    try:
        return open(tmp, mode)  # noqa: SIM115
    except OSError as e:
        raise OSError(f"cannot write {path}: {e.strerror or e}") from None


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` when the block succeeds,
    delete it when it raises. Parent directories are created."""
    path = Path(path)
    tmp = temporary_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# ----------------------------------------------------------------------------- whole files


def write_snac(
    path: str | Path,
    codes: Sequence[torch.Tensor],
    model,
    *,
    sample_rate: int | None = None,
    channels: int | None = None,
    length: int | None = None,
    samples: int | None = None,
    notes: Sequence[str] = (),
) -> SnacHeader:
    """Write codes (per level ``[streams, T_i]`` or ``[T_i]``, whole coarse frames) of ``model`` (or
    a ``ModelInfo``) to a ``.snac``. Defaults: the source was mono/``streams`` channels at the model's
    rate, ``samples`` = ``length`` = frames * frame_size."""
    info = model_info(model)
    codes = [torch.as_tensor(c).reshape(1, -1) if torch.as_tensor(c).ndim == 1 else c for c in codes]
    streams = codes[0].shape[0] if codes else 1
    full = codes[0].shape[-1] * info.frame_size if codes else 0
    samples = full if samples is None else samples
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        writer = SnacWriter(
            f,
            info,
            sample_rate=sample_rate or info.sample_rate,
            channels=channels or streams,
            length=samples if length is None else length,
            streams=streams,
            notes=notes,
        )
        writer.write(codes)
        return writer.finish(samples)


def read_snac(path: str | Path) -> tuple[SnacHeader, list[torch.Tensor]]:
    """(header, codes per level ``[streams, T_i]``) of a ``.snac``; :class:`ContainerError` if bad."""
    with SnacReader(path) as reader:
        return reader.header, reader.read_all()


def write_npz(path: str | Path, header: SnacHeader, codes: Sequence[torch.Tensor]) -> None:
    """``.npz``: ``codes_0 .. codes_{n-1}`` int32 ``[streams, T_i]`` and ``header`` (the JSON of a
    ``.snac`` header, as a string). Loads with ``np.load(path)`` (no pickle)."""
    arrays = {f"codes_{i}": torch.as_tensor(c).to(torch.int32).numpy() for i, c in enumerate(codes)}
    levels_to_frames(codes, header.info, header.streams)  # validates shapes and ranges
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, header=np.array(json.dumps(header.to_json())), **arrays)


def read_npz(path: str | Path) -> tuple[SnacHeader, list[torch.Tensor]]:
    """(header, codes) of an ``.npz`` written by :func:`write_npz`; :class:`ContainerError` if bad."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if "header" not in z.files:
                raise CorruptContainer("no 'header' array: not an .npz written by snac-stream")
            header = SnacHeader.from_json(json.loads(str(z["header"])))
            n = header.info.n_levels
            missing = [f"codes_{i}" for i in range(n) if f"codes_{i}" not in z.files]
            if missing:
                raise CorruptContainer(f"missing arrays {missing}")
            arrays = [z[f"codes_{i}"] for i in range(n)]
    except ContainerError as e:
        raise type(e)(f"{path}: {e}") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:  # bad zip/array/JSON, CRC error
        raise CorruptContainer(f"{path}: not a readable .npz of codes ({e})") from None
    if any(not np.issubdtype(a.dtype, np.integer) for a in arrays):
        raise CorruptContainer(f"{path}: code arrays must be integers")
    codes = [torch.from_numpy(a.astype(np.int64)) for a in arrays]
    try:
        frames = levels_to_frames(codes, header.info, header.streams)
    except ContainerError as e:
        raise CorruptContainer(f"{path}: {e}") from None
    if frames.shape[0] != header.frames:
        raise CorruptContainer(f"{path}: {frames.shape[0]} frames of codes, the header says {header.frames}")
    return header, codes


def code_header(path: str | Path) -> SnacHeader:
    """The header of a ``.snac`` or ``.npz`` without reading (or checking) its codes."""
    if _is_npz(path):
        with np.load(path, allow_pickle=False) as z:
            return SnacHeader.from_json(json.loads(str(z["header"])))
    with SnacReader(path, verify=False) as reader:
        return reader.header


def _is_npz(path: str | Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def read_codes(path: str | Path) -> tuple[SnacHeader, list[torch.Tensor]]:
    """A ``.snac`` or ``.npz`` (by its first bytes), whole."""
    return read_npz(path) if _is_npz(path) else read_snac(path)


class CodeSource:
    """Blocks of codes from a ``.snac`` (read block by block) or an ``.npz`` (loaded whole):
    ``header`` and ``blocks(frames)`` -> per level ``[streams, k * r_i]``."""

    def __init__(self, path: str | Path):
        path = Path(path)
        if not path.exists():
            raise ContainerError(f"{path}: no such file")
        if path.is_dir():
            raise ContainerError(f"{path}: is a directory, not a code file")
        self._reader: SnacReader | None = None
        if _is_npz(path):
            self.header, self._codes = read_npz(path)
        else:
            self._reader = SnacReader(path)
            self.header = self._reader.header

    def blocks(self, frames: int) -> Iterator[list[torch.Tensor]]:
        if self._reader is not None:
            yield from self._reader.blocks(frames)
            return
        per = self.header.info.codes_per_level
        for j in range(0, self.header.frames, frames):
            yield [c[:, j * r : (j + frames) * r] for c, r in zip(self._codes, per, strict=True)]

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()


# ----------------------------------------------------------------------------- sinks


def token_records(
    header: SnacHeader, codes: Sequence[torch.Tensor], source: str, lm_offset: int = ORPHEUS_AUDIO_OFFSET
) -> list[dict]:
    """One JSON-able record per stream: the header fields, the tick-ordered ``tokens`` and the
    ``lm_ids`` (``lm_offset + position_in_frame * codebook_size + code``)."""
    info = header.info
    flat = codes_to_tokens([torch.as_tensor(c) for c in codes], info.vq_strides)
    ids = to_lm_ids(flat, info.vq_strides, info.codebook_size, offset=lm_offset)
    meta = header.to_json()
    meta.pop("crc32")
    return [
        {
            "source": source,
            "stream": s,
            **meta,
            "lm_offset": lm_offset,
            "tokens": flat[s].tolist(),
            "lm_ids": ids[s].tolist(),
        }
        for s in range(flat.shape[0])
    ]


class SnacSink:
    """Streams codes into a ``.snac`` at ``path`` (through a temporary name)."""

    def __init__(self, path: Path, info: ModelInfo, **meta):
        self.path, self.tmp = path, temporary_name(path)
        self._file = _create(self.tmp, path, "wb")
        try:
            self._writer = SnacWriter(self._file, info, **meta)
        except BaseException:
            self.abort()
            raise

    def write(self, codes: Sequence[torch.Tensor]) -> None:
        self._writer.write(codes)

    def finish(self, samples: int) -> SnacHeader:
        header = self._writer.finish(samples)
        self._file.close()
        os.replace(self.tmp, self.path)
        return header

    def abort(self) -> None:
        self._file.close()
        self.tmp.unlink(missing_ok=True)


class _CollectingSink:
    """Keeps the codes (a few KB per minute of audio) and writes them all at ``finish``."""

    def __init__(self, path: Path, info: ModelInfo, **meta):
        self.path, self.info, self.meta = path, info, meta
        self.parts: list[np.ndarray] = []  # [k, streams, cpf] blocks
        self.frames = 0

    def write(self, codes: Sequence[torch.Tensor]) -> None:
        block = levels_to_frames(codes, self.info, self.meta["streams"]).astype(np.int32)
        self.parts.append(block)
        self.frames += block.shape[0]

    def _all(self, samples: int) -> tuple[SnacHeader, list[torch.Tensor]]:
        header = SnacHeader(self.info, samples=samples, frames=self.frames, **self.meta)
        cpf = self.info.codes_per_frame
        frames = np.concatenate(self.parts) if self.parts else np.zeros((0, header.streams, cpf), np.int32)
        return header, [c.to(torch.int64) for c in frames_to_levels(frames, self.info)]

    def abort(self) -> None:
        self.parts = []


class NpzSink(_CollectingSink):
    def finish(self, samples: int) -> SnacHeader:
        header, codes = self._all(samples)
        write_npz(self.path, header, codes)
        return header


class TokensSink(_CollectingSink):
    """Token records of one input; written to ``path`` (one ``.jsonl`` per input) or, with
    ``collector``, appended to a shared JSON Lines file."""

    def __init__(self, path: Path, info: ModelInfo, *, source: str, lm_offset: int, collector=None, **meta):
        super().__init__(path, info, **meta)
        self.source, self.lm_offset, self.collector = source, lm_offset, collector

    def finish(self, samples: int) -> SnacHeader:
        header, codes = self._all(samples)
        lines = "".join(
            json.dumps(r, separators=(",", ":")) + "\n"
            for r in token_records(header, codes, self.source, self.lm_offset)
        )
        if self.collector is not None:
            self.collector.append(lines)
        else:
            with atomic_output(self.path) as tmp:
                tmp.write_text(lines)
        return header


class JsonlCollector:
    """One JSON Lines file for many inputs: lines are appended to a temporary file as inputs
    finish (from any worker thread); ``commit`` renames it to ``path`` (``discard`` deletes it)."""

    def __init__(self, path: Path):
        self.path, self.tmp = path, temporary_name(path)
        self._file = _create(self.tmp, path, "w")
        self._lock = threading.Lock()
        self.lines = 0

    def append(self, lines: str) -> None:
        with self._lock:
            self._file.write(lines)
            self._file.flush()
            self.lines += lines.count("\n")

    def commit(self) -> None:
        self._file.close()
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        self._file.close()
        self.tmp.unlink(missing_ok=True)


def make_sink(
    fmt: str, path: Path, info: ModelInfo, *, source: str = "", lm_offset: int = 0, collector=None, **meta
):
    """The sink for one input in format ``fmt`` (``snac``, ``npz``, ``tokens``)."""
    if fmt == "snac":
        return SnacSink(path, info, **meta)
    if fmt == "npz":
        return NpzSink(path, info, **meta)
    if fmt == "tokens":
        return TokensSink(path, info, source=source, lm_offset=lm_offset, collector=collector, **meta)
    raise ValueError(f"unknown format {fmt!r}; one of {sorted(FORMATS)}")

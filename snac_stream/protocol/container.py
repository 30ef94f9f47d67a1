"""The ``.snac`` file: the codes of one recording, for storage and datasets (docs/files.md).

A small versioned container in the style of encodec's ``binary.py`` (integers little-endian)::

    magic     4 bytes   b"SNAC"
    version   1 byte    CONTAINER_VERSION
    length    4 bytes   u32: bytes of the JSON header
    header    JSON, UTF-8 (:class:`SnacHeader`): the model (ModelInfo with fingerprint), the source
              audio (sample rate, channels, length in samples), streams, samples, frames, crc32
    codes     frames x streams x codes_per_frame codes, bit-packed at bits_per_code bits
              (LSB first, as the wire format packs them), zero-padded to a whole byte

Within a frame the codes are level-major (24 kHz: c0[j], c1[2j], c1[2j+1], c2[4j..4j+3]), the
order of the CODES packets. :class:`SnacWriter` takes codes block by block and keeps the packed
codes in a spooled temporary file (memory up to 8 MiB, then disk) until ``finish`` knows the
totals; :class:`SnacReader` checks magic, version, header, size and CRC before it returns any
code, then reads blocks of frames. Neither needs a model.
"""

from __future__ import annotations

import json
import math
import shutil
import struct
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from .packets import ModelInfo, PacketError, pack_codes, unpack_codes

MAGIC = b"SNAC"
CONTAINER_VERSION = 1
MAX_HEADER_BYTES = 1 << 20
U32_MAX = 0xFFFFFFFF
_PREFIX = struct.Struct("<4sBI")  # magic, version, header length
_SPOOL_BYTES = 8 << 20
_CHUNK = 1 << 20


class ContainerError(ValueError):
    """A ``.snac`` file that cannot be read (or codes that cannot be written): names the problem."""


class UnsupportedContainerVersion(ContainerError):
    """The version byte is not one this reader knows."""


class CorruptContainer(ContainerError):
    """Bad magic, header, size or checksum."""


def _int(d: dict, key: str, lo: int = 0, hi: int = (1 << 63) - 1) -> int:
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise CorruptContainer(f"header field {key!r} is {v!r}, expected an integer in {lo}..{hi}")
    return v


@dataclass(frozen=True)
class SnacHeader:
    """What a ``.snac`` file says besides its codes.

    ``sample_rate``, ``channels``, ``length``: the source audio (Hz, channels, samples per channel);
    ``streams``: code streams (1: channels mixed to mono; ``channels``: one per channel);
    ``samples``: samples per stream at the model's rate that were encoded (decoding trims to it);
    ``frames``: coarse frames per stream; ``crc32`` of the packed codes; ``notes``: what was converted.
    """

    info: ModelInfo
    sample_rate: int
    channels: int
    length: int
    streams: int
    samples: int
    frames: int
    crc32: int = 0
    notes: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "notes", tuple(str(n) for n in self.notes))
        if self.streams not in (1, self.channels):
            raise ContainerError(f"streams={self.streams}: must be 1 (mixed) or channels={self.channels}")
        if self.samples > self.frames * self.info.frame_size:
            raise ContainerError(
                f"samples={self.samples} > frames*frame_size={self.frames}*{self.info.frame_size}"
            )

    @property
    def payload_bytes(self) -> int:
        """Bytes of the packed codes."""
        return (self.frames * self.streams * self.info.codes_per_frame * self.info.bits_per_code + 7) // 8

    def to_json(self) -> dict:
        i = self.info
        return {
            "model": {
                "sample_rate": i.sample_rate,
                "hop_length": i.hop_length,
                "vq_strides": list(i.vq_strides),
                "codebook_size": i.codebook_size,
                "fingerprint": i.fingerprint.hex(),
            },
            "sample_rate": self.sample_rate,
            "channels": self.channels,
            "length": self.length,
            "streams": self.streams,
            "samples": self.samples,
            "frames": self.frames,
            "crc32": self.crc32,
            "notes": list(self.notes),
        }

    @classmethod
    def from_json(cls, d) -> SnacHeader:
        """Validate a decoded JSON header; :class:`CorruptContainer` names the first bad field."""
        if not isinstance(d, dict) or not isinstance(d.get("model"), dict):
            raise CorruptContainer("header is not an object with a 'model' object")
        m = d["model"]
        strides, fp = m.get("vq_strides"), m.get("fingerprint")
        if not isinstance(strides, list) or not all(
            isinstance(s, int) and not isinstance(s, bool) for s in strides
        ):
            raise CorruptContainer(f"header field 'vq_strides' is {strides!r}, expected a list of integers")
        try:
            fingerprint = bytes.fromhex(fp) if isinstance(fp, str) else None
        except ValueError:
            fingerprint = None
        if fingerprint is None:
            raise CorruptContainer(f"header field 'fingerprint' is {fp!r}, expected 16 hex digits")
        notes = d.get("notes", [])
        if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
            raise CorruptContainer("header field 'notes' is not a list of strings")
        try:
            info = ModelInfo(
                _int(m, "sample_rate", 1, U32_MAX),
                _int(m, "hop_length", 1, U32_MAX),
                tuple(strides),
                _int(m, "codebook_size", 2),
                fingerprint,
            )
            return cls(
                info,
                sample_rate=_int(d, "sample_rate", 1, U32_MAX),
                channels=_int(d, "channels", 1, 0xFFFF),
                length=_int(d, "length"),
                streams=_int(d, "streams", 1, 0xFFFF),
                samples=_int(d, "samples"),
                frames=_int(d, "frames", 0, U32_MAX),
                crc32=_int(d, "crc32", 0, 0xFFFFFFFF),
                notes=tuple(notes),
            )
        except CorruptContainer:
            raise
        except ValueError as e:  # ModelInfo / SnacHeader consistency
            raise CorruptContainer(f"bad header: {e}") from None


# ----------------------------------------------------------------------------- frames <-> levels


def levels_to_frames(codes: Sequence[torch.Tensor], info: ModelInfo, streams: int) -> np.ndarray:
    """Per-level codes ``[streams, k * r_i]`` (whole coarse frames) -> ``[k, streams, codes_per_frame]``."""
    if len(codes) != info.n_levels:
        raise ContainerError(f"{len(codes)} levels of codes, the model has {info.n_levels}")
    per = info.codes_per_level
    arrays = [torch.as_tensor(c).detach().to("cpu", torch.int64).numpy() for c in codes]
    k = arrays[0].shape[-1] if arrays[0].ndim == 2 else -1
    for i, (a, r) in enumerate(zip(arrays, per, strict=True)):
        if a.ndim != 2 or a.shape != (streams, k * r):
            raise ContainerError(
                f"level {i}: codes of shape {a.shape}, expected ({streams}, {k}*{r}) for whole coarse frames"
            )
        if a.size and (a.min() < 0 or a.max() >= info.codebook_size):
            raise ContainerError(f"level {i}: codes must be in [0, {info.codebook_size})")
    frames = np.concatenate([a.reshape(streams, k, r) for a, r in zip(arrays, per, strict=True)], axis=2)
    return frames.transpose(1, 0, 2)


def frames_to_levels(frames: np.ndarray, info: ModelInfo) -> list[torch.Tensor]:
    """Inverse of :func:`levels_to_frames`: ``[k, streams, cpf]`` -> per level ``[streams, k * r_i]``."""
    k, streams, _ = frames.shape
    bounds = np.cumsum((0,) + info.codes_per_level)
    by_stream = frames.transpose(1, 0, 2)
    return [
        torch.from_numpy(np.ascontiguousarray(by_stream[:, :, a:b]).reshape(streams, -1))
        for a, b in zip(bounds[:-1], bounds[1:], strict=True)
    ]


def _aligned_frames(info: ModelInfo, streams: int) -> int:
    """Frames whose packed codes fill whole bytes (blocks of them concatenate without padding)."""
    bits = streams * info.codes_per_frame * info.bits_per_code
    return 8 // math.gcd(bits, 8)


# ----------------------------------------------------------------------------- writing


class SnacWriter:
    """Writes one ``.snac`` to the binary file object ``file``: ``write(codes)`` as blocks of whole
    coarse frames arrive (per level ``[streams, k * r_i]``), then ``finish(samples)``."""

    def __init__(
        self,
        file: BinaryIO,
        info: ModelInfo,
        *,
        sample_rate: int,
        channels: int,
        length: int,
        streams: int = 1,
        notes: Sequence[str] = (),
    ):
        self.file, self.info, self.streams = file, info, streams
        self._meta = dict(sample_rate=sample_rate, channels=channels, length=length, notes=tuple(notes))
        SnacHeader(info, streams=streams, samples=0, frames=0, **self._meta)  # validate now
        self._spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES)
        self._align = _aligned_frames(info, streams)
        self._pending = np.zeros((0, streams, info.codes_per_frame), np.int64)
        self._crc = 0
        self.frames = 0

    def _emit(self, frames: np.ndarray) -> None:
        data = pack_codes(frames.reshape(-1), self.info.bits_per_code)
        self._crc = zlib.crc32(data, self._crc)
        self._spool.write(data)

    def write(self, codes: Sequence[torch.Tensor]) -> None:
        """Append whole coarse frames (per level ``[streams, k * r_i]``; ``k`` may be 0)."""
        frames = levels_to_frames(codes, self.info, self.streams)
        self.frames += frames.shape[0]
        pending = np.concatenate((self._pending, frames)) if self._pending.shape[0] else frames
        cut = pending.shape[0] - pending.shape[0] % self._align
        if cut:
            self._emit(pending[:cut])
        self._pending = pending[cut:]

    def finish(self, samples: int) -> SnacHeader:
        """Write header and codes to ``file``; ``samples`` per stream at the model rate were encoded."""
        if self._pending.shape[0]:
            self._emit(self._pending)
            self._pending = self._pending[:0]
        header = SnacHeader(
            self.info,
            streams=self.streams,
            samples=samples,
            frames=self.frames,
            crc32=self._crc,
            **self._meta,
        )
        body = json.dumps(header.to_json(), separators=(",", ":")).encode()
        self.file.write(_PREFIX.pack(MAGIC, CONTAINER_VERSION, len(body)) + body)
        self._spool.seek(0)
        shutil.copyfileobj(self._spool, self.file, _CHUNK)
        self._spool.close()
        return header


# ----------------------------------------------------------------------------- reading


class SnacReader:
    """Reads a ``.snac`` (a path or a binary file object). The constructor validates everything
    (magic, version, header, exact size, CRC of the codes) and raises :class:`ContainerError`
    (:class:`UnsupportedContainerVersion`, :class:`CorruptContainer`) with the file's name."""

    def __init__(self, source: str | Path | BinaryIO, *, verify: bool = True):
        self._own = isinstance(source, str | Path)
        self.name = str(source) if self._own else getattr(source, "name", "<.snac data>")
        self.file: BinaryIO = open(source, "rb") if self._own else source  # noqa: SIM115
        try:
            self.header = self._read_header()
            if verify:  # verify=False: only the header (a quick look; do not read codes then)
                self._verify()
        except ContainerError as e:
            self.close()
            raise type(e)(f"{self.name}: {e}") from None
        except BaseException:
            self.close()
            raise

    def _read_header(self) -> SnacHeader:
        f = self.file
        prefix = f.read(_PREFIX.size)
        if len(prefix) < _PREFIX.size or prefix[:4] != MAGIC:
            raise CorruptContainer("not a .snac file (no SNAC magic at the start)")
        _, version, n = _PREFIX.unpack(prefix)
        if version != CONTAINER_VERSION:
            raise UnsupportedContainerVersion(
                f".snac container version {version}; this snac-stream reads version {CONTAINER_VERSION}"
                + (" (upgrade snac-stream)" if version > CONTAINER_VERSION else "")
            )
        if n > MAX_HEADER_BYTES:
            raise CorruptContainer(f"header of {n} bytes (limit {MAX_HEADER_BYTES}): the file is corrupt")
        body = f.read(n)
        if len(body) < n:
            raise CorruptContainer(f"truncated: the header needs {n} bytes, the file has {len(body)}")
        try:
            d = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CorruptContainer(f"header is not valid JSON ({e})") from None
        self.offset = _PREFIX.size + n
        return SnacHeader.from_json(d)

    def _verify(self) -> None:
        f, h = self.file, self.header
        size = f.seek(0, 2)
        have, want = size - self.offset, h.payload_bytes
        if have < want:
            raise CorruptContainer(f"truncated: {want} bytes of codes expected, the file has {have}")
        if have > want:
            raise CorruptContainer(f"{have - want} unexpected bytes after the codes")
        f.seek(self.offset)
        crc = 0
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            crc = zlib.crc32(chunk, crc)
        if crc != h.crc32:
            raise CorruptContainer(
                f"the codes do not match their checksum (crc32 {crc:08x} != {h.crc32:08x})"
            )

    def blocks(self, frames_per_block: int) -> Iterator[list[torch.Tensor]]:
        """Codes per level ``[streams, k * r_i]`` for consecutive blocks of ``k`` coarse frames
        (``frames_per_block`` rounded up to whole bytes; the last block shorter)."""
        h, info = self.header, self.header.info
        align = _aligned_frames(info, h.streams)
        k = max(align, -(-frames_per_block // align) * align)
        per_frame = h.streams * info.codes_per_frame
        self.file.seek(self.offset)
        for start in range(0, h.frames, k):
            n = min(k, h.frames - start)
            data = self.file.read((n * per_frame * info.bits_per_code + 7) // 8)
            try:
                flat = unpack_codes(data, n * per_frame, info.bits_per_code)
            except PacketError as e:
                raise CorruptContainer(f"{self.name}: {e}") from None
            if flat.size and flat.max() >= info.codebook_size:
                raise CorruptContainer(
                    f"{self.name}: code {int(flat.max())} >= codebook_size {info.codebook_size}"
                )
            yield frames_to_levels(flat.reshape(n, h.streams, info.codes_per_frame), info)

    def read_all(self) -> list[torch.Tensor]:
        """All codes, per level ``[streams, frames * r_i]``."""
        parts = list(self.blocks(max(self.header.frames, 1)))
        if not parts:
            return [
                torch.zeros(self.header.streams, 0, dtype=torch.int64) for _ in self.header.info.vq_strides
            ]
        return parts[0] if len(parts) == 1 else [torch.cat(p, dim=-1) for p in zip(*parts, strict=True)]

    def close(self) -> None:
        if self._own:
            self.file.close()

    def __enter__(self) -> SnacReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = [
    "MAGIC",
    "CONTAINER_VERSION",
    "ContainerError",
    "UnsupportedContainerVersion",
    "CorruptContainer",
    "SnacHeader",
    "SnacWriter",
    "SnacReader",
    "levels_to_frames",
    "frames_to_levels",
]

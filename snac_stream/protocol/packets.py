"""Binary code packets: the wire format for SNAC code streams (see docs/protocol.md).

One packet per WebSocket binary message. Every packet starts with a 2-byte header
(version, kind); all integers are little-endian. Kinds: HELLO (the model), CODES
(bit-packed codes of whole coarse frames, frame-major), END (stream totals) and ERROR.

Nothing here needs a model: :class:`ModelInfo` carries the few numbers the format
depends on, and :meth:`ModelInfo.from_model` reads them off any object that has them.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "PROTOCOL_VERSION",
    "DEFAULT_MAX_PACKET",
    "MAX_LEVELS",
    "MAX_CODEBOOK_SIZE",
    "Kind",
    "EndReason",
    "CloseCode",
    "ModelInfo",
    "Hello",
    "CodePacket",
    "End",
    "ErrorPacket",
    "Packet",
    "PacketHeader",
    "PacketError",
    "encode_packet",
    "decode_packet",
    "decode_header",
    "decode_body",
    "pack_codes",
    "unpack_codes",
    "split_codes",
    "stream_packets",
    "WireOverhead",
    "ws_frame_overhead",
    "wire_overhead",
]

PROTOCOL_VERSION = 1
DEFAULT_MAX_PACKET = 1 << 20  # bytes
MAX_LEVELS = 16
MAX_CODEBOOK_SIZE = 1 << 16  # codes are at most 16 bits wide
MAX_ERROR_MESSAGE = 0xFFFF  # bytes of UTF-8
U32_MAX = 0xFFFFFFFF


class Kind(enum.IntEnum):
    """Packet kind (byte 1 of every packet)."""

    HELLO = 1
    CODES = 2
    END = 3
    ERROR = 4


class EndReason(enum.IntEnum):
    """Why a stream ended (last byte of an END packet)."""

    COMPLETE = 0  #: the publisher finished; total_samples is the original audio length
    PUBLISHER_LOST = 1  #: the relay lost the publisher mid-stream; total_samples is untrimmed
    SHUTDOWN = 2  #: the relay is shutting down mid-stream; total_samples is untrimmed
    BROKER_LOST = 3  #: the relay lost the broker that carried a remote publisher's stream; untrimmed


class CloseCode(enum.IntEnum):
    """WebSocket close codes of the protocol (4000-4999), also used as ERROR packet codes."""

    PROTOCOL_ERROR = 4000  #: any other packet error
    TRUNCATED = 4001  #: packet shorter than its fields say
    OVERSIZED = 4002  #: packet larger than the receiver's limit
    UNSUPPORTED_VERSION = 4003  #: unknown protocol version byte
    UNKNOWN_KIND = 4004  #: unknown kind byte
    MALFORMED = 4005  #: bad lengths, bad field values, trailing bytes, nonzero padding
    CODE_OUT_OF_RANGE = 4006  #: a code >= codebook_size
    MODEL_MISMATCH = 4007  #: HELLO states a model the receiver cannot use
    UNEXPECTED_PACKET = 4008  #: packet not valid in this state (sequence, frame index, order)
    TEXT_FRAME = 4010  #: a text frame on a binary endpoint
    UNAUTHORIZED = 4011  #: missing or wrong token
    PUBLISHER_EXISTS = 4012  #: the room already has a publisher
    ROOM_FULL = 4013  #: the room has max_listeners listeners
    SERVER_FULL = 4014  #: the server has max_connections connections
    TOO_MANY_ROOMS = 4015  #: the server has max_rooms rooms
    SLOW_CONSUMER = 4016  #: a listener fell behind and was dropped
    IDLE_TIMEOUT = 4017  #: a publisher sent nothing for idle_timeout seconds
    BAD_REQUEST = 4018  #: bad room name, role or query parameter
    INTERNAL_ERROR = 4019  #: unexpected server-side failure in a handler
    UNSUPPORTED_FORMAT = 4020  #: /encode: unknown PCM ``format``
    RATE_MISMATCH = 4021  #: /encode: ``rate`` is not the model's sample rate
    BAD_PCM = 4022  #: /encode: message length not a multiple of the sample size, or NaN/inf samples
    RATE_LIMITED = 4023  #: /encode, /decode: more audio than the per-connection budget allows
    SERVER_BUSY = 4024  #: /encode, /decode: ``max_model_sessions`` model sessions are running
    UNKNOWN_ROOM = 4025  #: /browser/listen: nobody is in that room (``wait=1`` waits for a publisher)


# --------------------------------------------------------------------------- errors


class PacketError(ValueError):
    """A bad packet or request: ``code`` (a :class:`CloseCode`) is the close code that reports it.

    ``PacketError(message, CloseCode.TRUNCATED)``; the message is the close reason.
    """

    def __init__(self, message: str, code: int = CloseCode.PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.code = code


# --------------------------------------------------------------------------- model info


@dataclass(frozen=True)
class ModelInfo:
    """What a receiver must know about the model to read a code stream.

    ``sample_rate`` in Hz, ``hop_length`` in samples per latent frame, ``vq_strides`` in
    latent frames per code of each level (each divides ``vq_strides[0]``),
    ``codebook_size`` codes per level, ``fingerprint`` 8 bytes identifying the weights.
    """

    sample_rate: int
    hop_length: int
    vq_strides: tuple[int, ...]
    codebook_size: int
    fingerprint: bytes

    def __post_init__(self) -> None:
        object.__setattr__(self, "vq_strides", tuple(int(s) for s in self.vq_strides))
        object.__setattr__(self, "fingerprint", bytes(self.fingerprint))
        problems = []
        if not 0 < self.sample_rate <= U32_MAX:
            problems.append(f"sample_rate={self.sample_rate} not in 1..{U32_MAX}")
        if not 0 < self.hop_length <= U32_MAX:
            problems.append(f"hop_length={self.hop_length} not in 1..{U32_MAX}")
        if not 2 <= self.codebook_size <= MAX_CODEBOOK_SIZE:
            problems.append(f"codebook_size={self.codebook_size} not in 2..{MAX_CODEBOOK_SIZE}")
        if len(self.fingerprint) != 8:
            problems.append(f"fingerprint has {len(self.fingerprint)} bytes, not 8")
        strides = self.vq_strides
        if not 1 <= len(strides) <= MAX_LEVELS:
            problems.append(f"{len(strides)} levels, not 1..{MAX_LEVELS}")
        elif any(not 1 <= s <= 0xFFFF for s in strides):
            problems.append(f"vq_strides={strides} not all in 1..65535")
        elif any(strides[0] % s for s in strides):
            problems.append(f"vq_strides={strides}: not every stride divides the first")
        elif self.hop_length * strides[0] > U32_MAX:
            problems.append("frame_size does not fit in 32 bits")
        if problems:
            raise ValueError("invalid ModelInfo: " + "; ".join(problems))

    @classmethod
    def from_model(cls, model) -> ModelInfo:
        """Read sample_rate, hop_length, vq_strides, codebook_size, fingerprint() off ``model``."""
        return cls(
            sample_rate=int(model.sample_rate),
            hop_length=int(model.hop_length),
            vq_strides=tuple(int(s) for s in model.vq_strides),
            codebook_size=int(model.codebook_size),
            fingerprint=bytes(model.fingerprint()),
        )

    @property
    def n_levels(self) -> int:
        return len(self.vq_strides)

    @property
    def frame_size(self) -> int:
        """Samples per coarse frame (hop_length * vq_strides[0])."""
        return self.hop_length * self.vq_strides[0]

    @property
    def codes_per_level(self) -> tuple[int, ...]:
        """Codes of each level in one coarse frame (vq_strides[0] // vq_strides[i])."""
        return tuple(self.vq_strides[0] // s for s in self.vq_strides)

    @property
    def codes_per_frame(self) -> int:
        """Codes of all levels in one coarse frame."""
        return sum(self.codes_per_level)

    @property
    def bits_per_code(self) -> int:
        """ceil(log2(codebook_size)) bits (12 for 4096)."""
        return (self.codebook_size - 1).bit_length()

    @property
    def frame_rate(self) -> float:
        """Coarse frames per second."""
        return self.sample_rate / self.frame_size

    @property
    def nominal_bps(self) -> float:
        """Bits per second of the packed codes alone (0.98 kbps for the 24 kHz model)."""
        return self.codes_per_frame * self.bits_per_code * self.frame_rate

    def payload_bytes(self, n_frames: int) -> int:
        """Bytes of packed codes for ``n_frames`` coarse frames (padded to a byte)."""
        return (n_frames * self.codes_per_frame * self.bits_per_code + 7) // 8

    def check_compatible(self, other: ModelInfo) -> None:
        """Raise :class:`PacketError` (``MODEL_MISMATCH``) naming every field where ``other`` differs."""
        diffs = [
            f"{name}: {getattr(self, name)!r} != {getattr(other, name)!r}"
            for name in ("sample_rate", "hop_length", "vq_strides", "codebook_size", "fingerprint")
            if getattr(self, name) != getattr(other, name)
        ]
        if diffs:
            raise PacketError("model mismatch: " + "; ".join(diffs), CloseCode.MODEL_MISMATCH)


# --------------------------------------------------------------------------- packets


@dataclass
class Hello:
    """Starts a stream: states the model and the stream id."""

    info: ModelInfo
    stream_id: int


@dataclass
class CodePacket:
    """Codes of ``n_frames`` whole coarse frames starting at coarse frame ``first_frame``.

    ``codes[i]`` is a 1-D int64 tensor of ``n_frames * vq_strides[0] // vq_strides[i]`` codes.
    """

    stream_id: int
    seq: int
    first_frame: int
    codes: list[torch.Tensor]

    @property
    def n_frames(self) -> int:
        return int(self.codes[0].numel()) if self.codes else 0

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CodePacket):
            return NotImplemented
        return (
            (self.stream_id, self.seq, self.first_frame) == (other.stream_id, other.seq, other.first_frame)
            and len(self.codes) == len(other.codes)
            and all(torch.equal(a.long(), b.long()) for a, b in zip(self.codes, other.codes, strict=True))
        )


@dataclass
class End:
    """Ends a stream. ``seq`` is the sequence number after the last CODES packet.

    ``total_samples`` is the original audio length (receivers trim to it, as offline
    decoding does); ``reason`` says whether the stream completed or was cut off.
    """

    stream_id: int
    seq: int
    total_frames: int
    total_samples: int
    reason: EndReason = EndReason.COMPLETE


@dataclass
class ErrorPacket:
    """An error report: ``code`` (see :class:`CloseCode`) and a UTF-8 message."""

    code: int
    message: str


Packet = Hello | CodePacket | End | ErrorPacket


# --------------------------------------------------------------------------- layouts

_HEAD = struct.Struct("<BB")  # version, kind
_HELLO = struct.Struct("<BBIIII8sB")  # ..., stream_id, sample_rate, hop, codebook_size, fp, n_levels
_CODES = struct.Struct("<BBIIIH")  # ..., stream_id, seq, first_frame, n_frames
_END = struct.Struct("<BBIIIQB")  # ..., stream_id, seq, total_frames, total_samples, reason
_ERROR = struct.Struct("<BBHH")  # ..., code, message length
MAX_FRAMES_PER_PACKET = 0xFFFF


@dataclass(frozen=True)
class PacketHeader:
    """The fixed fields of a packet, read without unpacking any codes (what a relay needs)."""

    version: int
    kind: Kind
    size: int  #: bytes of the whole packet
    stream_id: int = 0
    seq: int = 0
    first_frame: int = 0
    n_frames: int = 0  #: CODES: coarse frames in the packet
    total_frames: int = 0  #: END
    total_samples: int = 0  #: END
    reason: int = 0  #: END
    code: int = 0  #: ERROR


def _u32(name: str, value: int) -> int:
    if not 0 <= value <= U32_MAX:
        raise ValueError(f"{name}={value} does not fit in an unsigned 32-bit field")
    return value


# --------------------------------------------------------------------------- bit packing


def pack_codes(codes: np.ndarray, bits: int) -> bytes:
    """Pack non-negative ints (< 2**bits) LSB-first: code k holds bits [k*bits, (k+1)*bits).

    The bit string is read as a little-endian integer; the last byte is zero-padded.
    """
    codes = np.ascontiguousarray(codes, dtype=np.int64).reshape(-1)
    if codes.size == 0:
        return b""
    bit_idx = np.arange(bits, dtype=np.int64)
    bit_matrix = ((codes[:, None] >> bit_idx) & 1).astype(np.uint8)
    return np.packbits(bit_matrix.reshape(-1), bitorder="little").tobytes()


def unpack_codes(data: bytes | memoryview, count: int, bits: int) -> np.ndarray:
    """Inverse of :func:`pack_codes`; raises :class:`PacketError` (``MALFORMED``) on nonzero padding."""
    raw = np.frombuffer(data, dtype=np.uint8)
    bit_stream = np.unpackbits(raw, bitorder="little")
    used = count * bits
    if bit_stream[used:].any():
        raise PacketError("nonzero padding bits after the last code", CloseCode.MALFORMED)
    weights = np.left_shift(np.int64(1), np.arange(bits, dtype=np.int64))
    return bit_stream[:used].reshape(count, bits).astype(np.int64) @ weights


# --------------------------------------------------------------------------- encode


def _frame_major(codes: Sequence[torch.Tensor], info: ModelInfo) -> tuple[np.ndarray, int]:
    """Per-level code tensors -> (frame-major flat array, n_frames); validates lengths/range."""
    if len(codes) != info.n_levels:
        raise ValueError(f"{len(codes)} levels of codes, model has {info.n_levels}")
    per = info.codes_per_level
    arrays = [torch.as_tensor(c).detach().reshape(-1).to("cpu", torch.int64).numpy() for c in codes]
    n_frames = arrays[0].size
    for i, (a, r) in enumerate(zip(arrays, per, strict=True)):
        if a.size != n_frames * r:
            raise ValueError(f"level {i} has {a.size} codes, expected {n_frames}*{r}")
        if a.size and (a.min() < 0 or a.max() >= info.codebook_size):
            raise PacketError(
                f"level {i}: codes must be in [0, {info.codebook_size})", CloseCode.CODE_OUT_OF_RANGE
            )
    if n_frames == 0:
        return np.zeros(0, dtype=np.int64), 0
    flat = np.concatenate([a.reshape(n_frames, r) for a, r in zip(arrays, per, strict=True)], axis=1)
    return flat.reshape(-1), n_frames


def encode_packet(packet: Packet, info: ModelInfo | None = None) -> bytes:
    """Serialise ``packet``; CODES need ``info`` (bit width, levels)."""
    v = PROTOCOL_VERSION
    if isinstance(packet, Hello):
        mi = packet.info
        head = _HELLO.pack(
            v,
            Kind.HELLO,
            _u32("stream_id", packet.stream_id),
            mi.sample_rate,
            mi.hop_length,
            mi.codebook_size,
            mi.fingerprint,
            mi.n_levels,
        )
        return head + struct.pack(f"<{mi.n_levels}H", *mi.vq_strides)
    if isinstance(packet, CodePacket):
        if info is None:
            raise ValueError("encoding a CODES packet needs the ModelInfo")
        flat, n_frames = _frame_major(packet.codes, info)
        if not 1 <= n_frames <= MAX_FRAMES_PER_PACKET:
            raise ValueError(f"n_frames={n_frames} not in 1..{MAX_FRAMES_PER_PACKET}")
        _u32("first_frame + n_frames", packet.first_frame + n_frames)
        head = _CODES.pack(
            v,
            Kind.CODES,
            _u32("stream_id", packet.stream_id),
            _u32("seq", packet.seq),
            _u32("first_frame", packet.first_frame),
            n_frames,
        )
        return head + pack_codes(flat, info.bits_per_code)
    if isinstance(packet, End):
        if not 0 <= packet.total_samples < 1 << 64:
            raise ValueError("total_samples does not fit in 64 bits")
        return _END.pack(
            v,
            Kind.END,
            _u32("stream_id", packet.stream_id),
            _u32("seq", packet.seq),
            _u32("total_frames", packet.total_frames),
            packet.total_samples,
            EndReason(packet.reason),
        )
    if isinstance(packet, ErrorPacket):
        msg = packet.message.encode("utf-8")
        if len(msg) > MAX_ERROR_MESSAGE:
            raise ValueError(f"error message is {len(msg)} bytes, max {MAX_ERROR_MESSAGE}")
        if not 0 <= packet.code <= 0xFFFF:
            raise ValueError(f"error code {packet.code} does not fit in 16 bits")
        return _ERROR.pack(v, Kind.ERROR, packet.code, len(msg)) + msg
    raise TypeError(f"not a packet: {type(packet).__name__}")


# --------------------------------------------------------------------------- decode


def _exact(data: bytes | memoryview, size: int, what: str) -> None:
    if len(data) < size:
        raise PacketError(f"{what} packet is {len(data)} bytes, needs {size}", CloseCode.TRUNCATED)
    if len(data) > size:
        raise PacketError(f"{what} packet has {len(data) - size} trailing bytes", CloseCode.MALFORMED)


def decode_header(
    data: bytes | memoryview, info: ModelInfo | None = None, max_size: int = DEFAULT_MAX_PACKET
) -> PacketHeader:
    """Validate and read the fixed fields of a packet without unpacking codes.

    Checks size limit, version, kind, fixed lengths and (for CODES, when ``info`` is
    given) the exact payload length. HELLO field values are checked by
    :func:`decode_body`. Raises :class:`PacketError`.
    """
    n = len(data)
    if n > max_size:
        raise PacketError(f"packet is {n} bytes, limit {max_size}", CloseCode.OVERSIZED)
    if n < _HEAD.size:
        raise PacketError(f"packet is {n} bytes, the header needs {_HEAD.size}", CloseCode.TRUNCATED)
    version, kind_byte = _HEAD.unpack_from(data)
    if version != PROTOCOL_VERSION:
        raise PacketError(
            f"protocol version {version}, this side speaks {PROTOCOL_VERSION}", CloseCode.UNSUPPORTED_VERSION
        )
    try:
        kind = Kind(kind_byte)
    except ValueError:
        raise PacketError(f"unknown packet kind {kind_byte}", CloseCode.UNKNOWN_KIND) from None

    if kind is Kind.HELLO:
        if n < _HELLO.size:
            raise PacketError(f"HELLO packet is {n} bytes, needs at least {_HELLO.size}", CloseCode.TRUNCATED)
        fields = _HELLO.unpack_from(data)
        n_levels = fields[-1]
        if not 1 <= n_levels <= MAX_LEVELS:
            raise PacketError(f"HELLO states {n_levels} levels, not 1..{MAX_LEVELS}", CloseCode.MALFORMED)
        _exact(data, _HELLO.size + 2 * n_levels, "HELLO")
        return PacketHeader(version, kind, n, stream_id=fields[2])
    if kind is Kind.CODES:
        if n < _CODES.size:
            raise PacketError(f"CODES packet is {n} bytes, needs at least {_CODES.size}", CloseCode.TRUNCATED)
        _, _, stream_id, seq, first_frame, n_frames = _CODES.unpack_from(data)
        if n_frames == 0:
            raise PacketError("CODES packet with 0 frames", CloseCode.MALFORMED)
        if first_frame + n_frames > U32_MAX:
            raise PacketError("first_frame + n_frames overflows 32 bits", CloseCode.MALFORMED)
        if info is not None:
            _exact(data, _CODES.size + info.payload_bytes(n_frames), "CODES")
        return PacketHeader(
            version, kind, n, stream_id=stream_id, seq=seq, first_frame=first_frame, n_frames=n_frames
        )
    if kind is Kind.END:
        _exact(data, _END.size, "END")
        _, _, stream_id, seq, total_frames, total_samples, reason = _END.unpack_from(data)
        try:
            EndReason(reason)
        except ValueError:
            raise PacketError(f"unknown END reason {reason}", CloseCode.MALFORMED) from None
        if info is not None and total_samples > total_frames * info.frame_size:
            raise PacketError(
                f"END: total_samples={total_samples} > total_frames*frame_size="
                f"{total_frames * info.frame_size}",
                CloseCode.MALFORMED,
            )
        return PacketHeader(
            version,
            kind,
            n,
            stream_id=stream_id,
            seq=seq,
            total_frames=total_frames,
            total_samples=total_samples,
            reason=reason,
        )
    # ERROR
    if n < _ERROR.size:
        raise PacketError(f"ERROR packet is {n} bytes, needs at least {_ERROR.size}", CloseCode.TRUNCATED)
    _, _, code, length = _ERROR.unpack_from(data)
    _exact(data, _ERROR.size + length, "ERROR")
    return PacketHeader(version, kind, n, code=code)


def decode_packet(
    data: bytes | bytearray | memoryview, info: ModelInfo | None = None, max_size: int = DEFAULT_MAX_PACKET
) -> Packet:
    """Parse one packet. CODES need ``info`` (from the stream's HELLO) to split levels.

    Raises only :class:`PacketError` for bad input.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"expected bytes, got {type(data).__name__}")
    return decode_body(data, decode_header(data, info, max_size), info)


def decode_body(data: bytes | bytearray | memoryview, head: PacketHeader, info: ModelInfo | None) -> Packet:
    """The packet whose header :func:`decode_header` already read as ``head``: the rest of
    :func:`decode_packet` (HELLO values, codes, ERROR message), without reading the header again.
    """
    if head.kind is Kind.HELLO:
        _, _, stream_id, sr, hop, cb, fp, n_levels = _HELLO.unpack_from(data)
        strides = struct.unpack_from(f"<{n_levels}H", data, _HELLO.size)
        try:
            mi = ModelInfo(sr, hop, strides, cb, fp)
        except ValueError as e:
            raise PacketError(f"HELLO: {e}", CloseCode.MALFORMED) from None
        return Hello(mi, stream_id)
    if head.kind is Kind.CODES:
        if info is None:
            raise PacketError(
                "CODES packet without model info (no HELLO received yet)", CloseCode.UNEXPECTED_PACKET
            )
        _exact(data, _CODES.size + info.payload_bytes(head.n_frames), "CODES")
        per = info.codes_per_level
        count = head.n_frames * info.codes_per_frame
        flat = unpack_codes(memoryview(data)[_CODES.size :], count, info.bits_per_code)
        if count and flat.max() >= info.codebook_size:
            raise PacketError(
                f"code {int(flat.max())} >= codebook_size {info.codebook_size}", CloseCode.CODE_OUT_OF_RANGE
            )
        frames = flat.reshape(head.n_frames, info.codes_per_frame)
        bounds = np.cumsum((0,) + per)
        codes = [
            torch.from_numpy(np.ascontiguousarray(frames[:, a:b]).reshape(-1))
            for a, b in zip(bounds[:-1], bounds[1:], strict=True)
        ]
        return CodePacket(head.stream_id, head.seq, head.first_frame, codes)
    if head.kind is Kind.END:
        return End(head.stream_id, head.seq, head.total_frames, head.total_samples, EndReason(head.reason))
    try:
        message = bytes(memoryview(data)[_ERROR.size :]).decode("utf-8")
    except UnicodeDecodeError:
        raise PacketError("ERROR message is not valid UTF-8", CloseCode.MALFORMED) from None
    return ErrorPacket(head.code, message)


# --------------------------------------------------------------------------- helpers


def _level_arrays(codes: Sequence[torch.Tensor], info: ModelInfo) -> list[torch.Tensor]:
    out = []
    for i, c in enumerate(codes):
        c = torch.as_tensor(c)
        if c.dim() == 2:
            if c.shape[0] != 1:
                raise ValueError(f"level {i}: batch of {c.shape[0]}, only B=1 can be packetised")
            c = c[0]
        if c.dim() != 1:
            raise ValueError(f"level {i}: expected (T,) or (1, T) codes, got {tuple(c.shape)}")
        out.append(c.to(torch.int64))
    if len(out) != info.n_levels:
        raise ValueError(f"{len(out)} levels of codes, model has {info.n_levels}")
    return out


def split_codes(
    codes: Sequence[torch.Tensor],
    info: ModelInfo,
    frames_per_packet: int,
    *,
    stream_id: int = 0,
    first_seq: int = 0,
    first_frame: int = 0,
) -> list[CodePacket]:
    """Split B=1 codes (per level, shape (T_i,) or (1, T_i)) into CODES packets.

    Every packet has ``frames_per_packet`` coarse frames except possibly the last.
    """
    if frames_per_packet < 1:
        raise ValueError("frames_per_packet must be >= 1")
    levels = _level_arrays(codes, info)
    per = info.codes_per_level
    n_frames = levels[0].numel()
    for i, (c, r) in enumerate(zip(levels, per, strict=True)):
        if c.numel() != n_frames * r:
            raise ValueError(f"level {i} has {c.numel()} codes, expected {n_frames}*{r}")
    packets = []
    for k, start in enumerate(range(0, n_frames, frames_per_packet)):
        stop = min(start + frames_per_packet, n_frames)
        chunk = [c[start * r : stop * r].clone() for c, r in zip(levels, per, strict=True)]
        packets.append(CodePacket(stream_id, first_seq + k, first_frame + start, chunk))
    return packets


def stream_packets(
    codes: Sequence[torch.Tensor],
    info: ModelInfo,
    total_samples: int,
    frames_per_packet: int = 1,
    *,
    stream_id: int = 0,
) -> list[Packet]:
    """A whole stream for B=1 codes: HELLO, CODES..., END(total_samples)."""
    body = split_codes(codes, info, frames_per_packet, stream_id=stream_id)
    n_frames = sum(p.n_frames for p in body)
    if total_samples > n_frames * info.frame_size:
        raise ValueError(f"total_samples={total_samples} > {n_frames} frames * {info.frame_size}")
    return [Hello(info, stream_id), *body, End(stream_id, len(body), n_frames, total_samples)]


def ws_frame_overhead(payload_len: int, masked: bool) -> int:
    """Bytes a WebSocket frame adds to ``payload_len`` bytes (RFC 6455 section 5.2).

    2 bytes for payloads up to 125 bytes, 4 up to 65535, 10 beyond; plus 4 mask bytes on
    frames from client to server. No extensions (compression off), one frame per message.
    """
    header = 2 if payload_len <= 125 else 4 if payload_len <= 0xFFFF else 10
    return header + (4 if masked else 0)


@dataclass(frozen=True)
class WireOverhead:
    """Steady-state bitrates of a CODES stream (HELLO/END amortise to zero)."""

    frames_per_packet: int
    packet_bytes: int  #: one CODES packet (header + packed codes)
    frame_bytes: int  #: its WebSocket framing
    nominal_bps: float  #: packed codes only
    packet_bps: float  #: packets (our headers included)
    wire_bps: float  #: packets + WebSocket framing (+ ``extra_per_message``)
    latency_s: float  #: audio duration of one packet (packetisation delay)

    @property
    def overhead(self) -> float:
        """wire_bps / nominal_bps - 1."""
        return self.wire_bps / self.nominal_bps - 1.0


def wire_overhead(
    info: ModelInfo, frames_per_packet: int, *, client_to_server: bool = True, extra_per_message: int = 0
) -> WireOverhead:
    """Bytes per second on the wire vs the nominal bitrate for packets of N full frames.

    Counts our packet header and the WebSocket frame header (+4 mask bytes when
    ``client_to_server``). TCP/IP/TLS bytes are not counted; pass them as
    ``extra_per_message`` (e.g. 52 for TCP/IPv4 with timestamps, one segment per message).
    """
    if frames_per_packet < 1:
        raise ValueError("frames_per_packet must be >= 1")
    packet = _CODES.size + info.payload_bytes(frames_per_packet)
    framing = ws_frame_overhead(packet, client_to_server)
    packets_per_s = info.frame_rate / frames_per_packet
    return WireOverhead(
        frames_per_packet=frames_per_packet,
        packet_bytes=packet,
        frame_bytes=framing,
        nominal_bps=info.nominal_bps,
        packet_bps=8.0 * packet * packets_per_s,
        wire_bps=8.0 * (packet + framing + extra_per_message) * packets_per_s,
        latency_s=frames_per_packet / info.frame_rate,
    )

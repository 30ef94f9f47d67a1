"""Receiving side: a code stream (packets) in, audio out, robust to lost and late packets.

::

    HELLO ─► check the model (MODEL_MISMATCH) ─► new stream (or resume: same stream_id)
    CODES ─► in order ──────────► DecodeSession.push ─► hold-back ─► audio out
          ─► gap (frames lost) ─► DecodeSession.flush, silence for the missing frames,
                                  DecodeSession.reset, then push          (counted)
          ─► late / duplicate ──► discarded                             (counted)
    END   ─► flush, silence for a lost tail, trim to total_samples ─► audio out
    ERROR ─► the stream is aborted: flush, untrimmed

:class:`CodeReceiver` keeps the output on the sender's timeline: sample ``t`` of a stream
is at offset ``t - start`` of its output (``start`` is 0, or the first frame received
times the frame size for a late joiner), whatever was lost on the way. With no loss its
output equals ``model.decode(codes, seed=seed)[..., :total_samples]``; after a gap it
equals the offline decode of the frames before the gap, silence for the lost frames,
then the offline decode of the frames after it (as a fresh stream: the decoder's noise
positions restart).

**Exact end.** A stream's length (END ``total_samples``) is known only at its end, and
a stream from ``encode``/``StreamingEncoder`` has ``total_samples > total_frames *
frame_size - pad_multiple``. With ``exact_end`` (default) the receiver therefore holds
back the last ``pad_multiple - 1`` samples of what it has received, so it never releases a
sample past the end. For the 24 kHz model this costs nothing (the decoder's own lookahead,
5268 samples, exceeds 2047); pass ``exact_end=False`` to release everything at once and
accept up to ``pad_multiple - 1`` extra samples of padding at the end.

:class:`DecodeSession` is the only place the decoder model runs (swap it for a batched
multi-stream engine via ``session_factory``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from snac_stream.engine.conceal import conceal_gap
from snac_stream.engine.decoder import StreamingDecoder
from snac_stream.protocol.packets import (
    DEFAULT_MAX_PACKET,
    CloseCode,
    CodePacket,
    End,
    EndReason,
    ErrorPacket,
    Hello,
    ModelInfo,
    Packet,
    PacketError,
    decode_packet,
)

from .ledger import LossLedger, StreamCounts

__all__ = ["DecodeSession", "ReceiverStats", "CodeReceiver"]

_EMPTY = np.zeros(0, dtype=np.float32)


class DecodeSession:
    """One stream's decoder: ``push(codes)`` / ``flush()`` -> float32 samples, ``reset()``.

    ``codes`` are per-level 1-D (or ``[1, T]``) integer tensors of whole coarse frames.
    Blocking (runs the model): call it off the event loop.
    """

    def __init__(self, model, seed: int | None = 0) -> None:
        self.decoder = StreamingDecoder(model, seed=seed)

    @staticmethod
    def _numpy(audio: torch.Tensor) -> np.ndarray:
        return audio.reshape(-1).to("cpu", torch.float32).numpy()

    def push(self, codes: Sequence[torch.Tensor]) -> np.ndarray:
        return self._numpy(self.decoder.push([c.reshape(1, -1) for c in codes]))

    def flush(self) -> np.ndarray:
        return self._numpy(self.decoder.flush())

    def reset(self) -> None:
        self.decoder.reset()


@dataclass
class ReceiverStats(StreamCounts):
    """What a :class:`CodeReceiver` got, concealed (``frames_lost``: with silence) and discarded
    (all cumulative; the stream and frame counters are kept by its :class:`LossLedger`)."""

    packets: int = 0
    gaps: int = 0  #: concealment events (each flushes and resets the decoder)
    samples_out: int = 0  #: samples returned (concealment included)
    samples_concealed: int = 0  #: silence samples returned for lost frames
    samples_overrun: int = 0  #: released samples past an END's total_samples (see exact_end)
    errors: list[ErrorPacket] = field(default_factory=list)


@dataclass
class _Stream:
    """The open stream's audio; its frame and seq position are in the :class:`LossLedger`."""

    start: int = 0  #: absolute sample index of the stream's first output sample
    pos: int = 0  #: absolute sample index of the first held sample (= start + released so far)
    held: list[np.ndarray] = field(default_factory=list)
    held_len: int = 0


class CodeReceiver:
    """Decode a code stream packet by packet: ``on_packet(packet) -> float32 audio``.

    ``model`` is the decoder's model (a HELLO for another model raises ``MODEL_MISMATCH``);
    ``seed`` keys the decoder noise (as ``model.decode(codes, seed=seed)``).
    ``live_join=True``: a stream's output starts at its first CODES received (a late
    joiner does not get silence for what it missed); ``False``: at frame 0 (frames missing
    before the first CODES are concealed with silence and counted as lost).
    ``exact_end``: see the module doc. ``session_factory(model, seed)`` makes the decoder
    session (default :class:`DecodeSession`).

    ``on_packet`` takes a :class:`~snac_stream.protocol.packets.Packet` or its bytes and returns the
    samples that became final (possibly none). It raises :class:`PacketError` for a bad
    packet (bytes that do not parse), ``MODEL_MISMATCH``, or ``UNEXPECTED_PACKET`` (CODES or
    END without a HELLO or for another stream_id, END with fewer frames than received); the
    receiver's state is unchanged then, so a caller may log it and go on. ``close()`` ends
    an open stream without END (the connection is gone) and returns its held samples.
    Blocking (runs the model).
    """

    def __init__(
        self,
        model,
        seed: int | None = 0,
        *,
        live_join: bool = True,
        exact_end: bool = True,
        max_packet: int = DEFAULT_MAX_PACKET,
        session_factory: Callable[..., DecodeSession] | None = None,
    ) -> None:
        self.model = model
        self.info = ModelInfo.from_model(model)
        self.frame_out = int(model.vq_strides[0] * model.decoder_hop)  #: output samples per coarse frame
        self.holdback = int(model.pad_multiple) - 1 if exact_end else 0
        self.live_join = live_join
        self.max_packet = max_packet
        self.session = (session_factory or DecodeSession)(model, seed)
        self.stats = ReceiverStats()
        self.ledger = LossLedger(self.stats, live_join)
        self.stream: _Stream | None = None
        self.last_end: End | None = None  #: the END of the last finished stream
        self._pushed = False  # the decoder has state: flush before reuse
        self._needs_reset = False  # the decoder was flushed: reset before the next push

    # -- state --------------------------------------------------------------------------

    @property
    def stream_open(self) -> bool:
        return self.stream is not None

    @property
    def stream_id(self) -> int | None:
        return None if self.ledger.stream is None else self.ledger.stream[0]

    @property
    def next_frame(self) -> int:
        """Absolute index of the next coarse frame the open stream expects (0 if none)."""
        return 0 if self.stream is None else self.ledger.next_frame

    # -- packets ------------------------------------------------------------------------

    def on_packet(self, packet: Packet | bytes | bytearray | memoryview) -> np.ndarray:
        if isinstance(packet, bytes | bytearray | memoryview):
            packet = decode_packet(packet, self.info, self.max_packet)
        if isinstance(packet, Hello):
            out = self._hello(packet)
        elif isinstance(packet, CodePacket):
            out = self._codes(packet)
        elif isinstance(packet, End):
            out = self._end(packet)
        elif isinstance(packet, ErrorPacket):
            self.stats.errors.append(packet)
            self.ledger.abort()
            out = self._drain()
        else:
            raise TypeError(f"not a packet: {type(packet).__name__}")
        self.stats.packets += 1
        self.stats.samples_out += out.size
        return out

    def close(self) -> np.ndarray:
        """The stream ends without END (connection lost): return the held samples, untrimmed."""
        self.ledger.abort()
        out = self._drain()
        self.stats.samples_out += out.size
        return out

    def _hello(self, hello: Hello) -> np.ndarray:
        self.info.check_compatible(hello.info)  # MODEL_MISMATCH
        if self.ledger.hello(hello.stream_id, hello.info):
            return _EMPTY  # the relay repeats the HELLO to a reconnected listener
        out = self._drain()
        self.stream = _Stream()
        return out

    def _check(self, packet: CodePacket | End) -> _Stream:
        s, open_id = self.stream, self.stream_id
        name = "CODES" if isinstance(packet, CodePacket) else "END"
        if s is None:
            raise PacketError(f"{name} packet without an open stream (no HELLO)", CloseCode.UNEXPECTED_PACKET)
        if packet.stream_id != open_id:
            raise PacketError(
                f"{name} for stream {packet.stream_id}, the open stream is {open_id}",
                CloseCode.UNEXPECTED_PACKET,
            )
        return s

    def _codes(self, p: CodePacket) -> np.ndarray:
        s = self._check(p)
        levels = list(p.codes)
        if len(levels) != self.info.n_levels:
            raise PacketError(
                f"CODES with {len(levels)} levels, the model has {self.info.n_levels}", CloseCode.MALFORMED
            )
        n = p.n_frames
        for i, (c, r) in enumerate(zip(levels, self.info.codes_per_level, strict=True)):
            if c.numel() != n * r:
                raise PacketError(
                    f"CODES level {i} has {c.numel()} codes, expected {n}*{r}", CloseCode.MALFORMED
                )
        if not self.ledger.joined:  # a live joiner's output starts here
            s.pos = s.start = p.first_frame * self.frame_out
        gap = self.ledger.codes(p.seq, p.first_frame, n)
        if gap is None:  # empty, or already decoded or concealed: too late
            return _EMPTY
        if gap:
            self._conceal(s, gap)
        if self._needs_reset:
            self.session.reset()
            self._needs_reset = False
        self._hold(s, self.session.push(levels))
        self._pushed = True
        return self._release(s, self.ledger.next_frame * self.frame_out - self.holdback)

    def _end(self, e: End) -> np.ndarray:
        s = self._check(e)
        received = self.ledger.next_frame
        if e.total_frames < received:
            raise PacketError(
                f"END total_frames {e.total_frames}, frames up to {received} received",
                CloseCode.UNEXPECTED_PACKET,
            )
        untrimmed = e.total_frames * self.frame_out
        if e.total_samples > untrimmed:
            raise PacketError(
                f"END total_samples {e.total_samples} > {e.total_frames} frames", CloseCode.MALFORMED
            )
        end = e.total_samples if e.reason == EndReason.COMPLETE else untrimmed
        joined = self.ledger.joined
        tail = self.ledger.end(e.seq, e.total_frames, e.reason == EndReason.COMPLETE)
        if not joined:  # joined after the last CODES
            s.pos = s.start = untrimmed
        elif tail:
            self._conceal(s, tail)
        else:
            self._hold(s, self._flush())
        out = self._release(s, end)
        self.stats.samples_overrun += max(s.pos - max(end, s.start), 0)
        self.stream = None
        self.last_end = e
        return out

    def _drain(self) -> np.ndarray:
        """Forget the open stream (the ledger already closed it): its held samples, untrimmed."""
        s = self.stream
        if s is None:
            return _EMPTY
        self._hold(s, self._flush())
        out = self._release(s, s.pos + s.held_len)
        self.stream = None
        return out

    # -- audio --------------------------------------------------------------------------

    def _flush(self) -> np.ndarray:
        if not self._pushed:
            return _EMPTY
        self._pushed = False
        self._needs_reset = True
        return self.session.flush()

    def _conceal(self, s: _Stream, n_frames: int) -> None:
        """``n_frames`` frames were lost (counted by the ledger): end the decoder's segment, add silence."""
        silence = n_frames * self.frame_out
        self._hold(s, conceal_gap(self._flush(), n_frames, self.frame_out))
        self.stats.gaps += 1
        self.stats.samples_concealed += silence

    @staticmethod
    def _hold(s: _Stream, audio: np.ndarray) -> None:
        if audio.size:
            s.held.append(audio)
            s.held_len += audio.size

    @staticmethod
    def _release(s: _Stream, limit: int) -> np.ndarray:
        """Return the held samples before absolute position ``limit``; drop held ones past the
        stream's end (callers pass the end as ``limit`` and forget the stream)."""
        n = min(max(limit - s.pos, 0), s.held_len)
        if n == 0:
            return _EMPTY
        held = s.held[0] if len(s.held) == 1 else np.concatenate(s.held)
        out, rest = held[:n], held[n:]
        s.held = [rest] if rest.size else []
        s.held_len = rest.size
        s.pos += n
        return out

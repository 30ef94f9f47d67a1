"""Async clients: :func:`publish` a code stream, :func:`listen` to a room (the relay), and
:func:`remote_encode` / :func:`remote_decode` (the model endpoints).

``listen`` counts what it did not receive: after a stream's END,
``frames_received + frames_lost + frames_missed_at_join == END.total_frames``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from snac_stream.audio.pcm import to_s16le
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
    encode_packet,
)

from .ledger import LossLedger, StreamCounts

__all__ = [
    "room_url",
    "RelayError",
    "PublishStats",
    "ListenStats",
    "ListenStream",
    "publish",
    "listen",
    "RETRYABLE",
    "PUBLISH_RETRYABLE",
    "endpoint_url",
    "remote_encode",
    "remote_decode",
]

log = logging.getLogger("snac_stream.net.client")

#: Close codes after which a reconnecting listener tries again (1006: no close frame).
RETRYABLE = frozenset(
    {
        1001,
        1006,
        1011,
        1012,
        1013,
        CloseCode.ROOM_FULL,
        CloseCode.SERVER_FULL,
        CloseCode.TOO_MANY_ROOMS,
        CloseCode.SLOW_CONSUMER,
        CloseCode.INTERNAL_ERROR,
        CloseCode.SERVER_BUSY,
    }
)


class RelayError(Exception):
    """The relay closed the connection with a code other than 1000/1001."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"relay closed the connection: {code} {reason}".rstrip())
        self.code = code
        self.reason = reason


def room_url(server_url: str, room: str, role: str) -> str:
    """``ws://HOST:PORT`` + room + role -> ``ws://HOST:PORT/rooms/ROOM?role=ROLE``."""
    if role not in ("publish", "listen"):
        raise ValueError("role must be 'publish' or 'listen'")
    return f"{server_url.rstrip('/')}/rooms/{quote(room, safe='')}?role={role}"


def _headers(token: str | None) -> dict[str, str] | None:
    return {"Authorization": f"Bearer {token}"} if token else None


def _closed_code(exc: ConnectionClosed) -> tuple[int, str]:
    if exc.rcvd is not None:
        return exc.rcvd.code, exc.rcvd.reason
    return 1006, "connection lost"


# ------------------------------------------------------------------------------ publish


@dataclass
class PublishStats:
    packets: int = 0
    bytes: int = 0  #: packet bytes (without WebSocket framing)
    frames: int = 0  #: coarse frames in CODES packets
    connections: int = 0
    reconnects: int = 0
    streams: int = 0  #: HELLOs sent (restarted streams included)
    streams_restarted: int = 0  #: streams re-started under a new stream_id after a reconnect
    close_code: int | None = None  #: why the last lost connection closed
    close_reason: str = ""


async def _aiter(packets: AsyncIterable[Any] | Iterable[Any]) -> AsyncIterator[Any]:
    if isinstance(packets, AsyncIterable):
        async for p in packets:
            yield p
    else:
        for p in packets:
            yield p


#: Close codes after which a reconnecting publisher tries again.
PUBLISH_RETRYABLE = frozenset(
    {1001, 1006, 1011, 1012, 1013, CloseCode.SERVER_FULL, CloseCode.TOO_MANY_ROOMS, CloseCode.INTERNAL_ERROR}
)


class _Restarter:
    """Renumbers a publisher's packets when its connection was lost mid-stream.

    The new connection carries a new stream (stream_id + number of restarts) starting with
    a HELLO; CODES continue with seq and first_frame counted from the restart, and END's
    totals are shifted to match (total_samples clamped to the frames of the new stream).
    """

    def __init__(self) -> None:
        self.hello: Hello | None = None  # the source's open stream
        self.restarts = 0
        self.need_hello = False
        self.base_seq = self.base_frame = 0
        self.next_seq = self.next_frame = 0  # source numbering after the last packet sent

    def restart(self) -> None:
        if self.hello is not None:
            self.restarts += 1
            self.need_hello = True
            self.base_seq, self.base_frame = self.next_seq, self.next_frame

    def map(self, packet: Packet) -> tuple[list[Packet], int]:
        """(packets to send for ``packet``, synthetic HELLOs among them)."""
        if isinstance(packet, Hello):
            self.hello, self.restarts, self.need_hello = packet, 0, False
            self.base_seq = self.base_frame = self.next_seq = self.next_frame = 0
            return [packet], 0
        if isinstance(packet, ErrorPacket) or self.hello is None or self.restarts == 0:
            return [packet], 0
        sid = (self.hello.stream_id + self.restarts) & 0xFFFFFFFF
        out: list[Packet] = []
        if self.need_hello:
            out.append(Hello(self.hello.info, sid))
        if isinstance(packet, CodePacket):
            seq, first = packet.seq - self.base_seq, packet.first_frame - self.base_frame
            out.append(CodePacket(sid, seq, first, packet.codes))
        elif isinstance(packet, End):
            frames = packet.total_frames - self.base_frame
            fs = self.hello.info.frame_size
            samples = min(max(packet.total_samples - self.base_frame * fs, 0), frames * fs)
            out.append(End(sid, packet.seq - self.base_seq, frames, samples, packet.reason))
        return out, len(out) - 1

    def sent(self, packet: Packet) -> None:
        self.need_hello = False
        if isinstance(packet, CodePacket):
            self.next_seq, self.next_frame = packet.seq + 1, packet.first_frame + packet.n_frames
        elif isinstance(packet, End | ErrorPacket):
            self.hello = None


async def publish(
    url: str,
    packets: AsyncIterable[Packet | bytes] | Iterable[Packet | bytes],
    token: str | None = None,
    *,
    info: ModelInfo | None = None,
    max_size: int = 2 * DEFAULT_MAX_PACKET,
    reconnect: bool = False,
    max_retries: int | None = None,
    backoff_initial: float = 0.25,
    backoff_max: float = 10.0,
    stats: PublishStats | None = None,
    **connect_kwargs: Any,
) -> PublishStats:
    """Send ``packets`` (objects or encoded bytes) to ``url`` (``.../rooms/NAME?role=publish``).

    CODES objects are encoded with ``info`` or the ModelInfo of the last HELLO sent.
    Returns when everything was sent and the connection closed; raises :class:`RelayError`
    if the relay closed it with an error code.

    ``reconnect=True``: when the connection is lost (close codes in
    :data:`PUBLISH_RETRYABLE`, e.g. a server restart: 1001, or refused connections), wait
    ``backoff_initial * 2**n`` seconds (capped at ``backoff_max``, jittered ×0.5-1) and
    reconnect, up to ``max_retries`` times in a row; the packets iterable is not read
    meanwhile. A stream cut off this way goes on as a **new stream** (stream_id + 1, a new
    HELLO, seq and first_frame from 0, END totals shifted) starting with the packet whose
    send failed; packets sent into the dying connection are lost. ``stats`` (also returned)
    reports ``reconnects`` and ``streams_restarted``; pass your own to watch it live.
    """
    stats = stats if stats is not None else PublishStats()
    backoff = _Backoff("publisher", backoff_initial, backoff_max, max_retries) if reconnect else None
    publisher = _Publisher(url, _connect_options(token, max_size, connect_kwargs), stats, info, backoff)
    try:
        await publisher.connection()
        async for packet in _aiter(packets):
            await publisher.send(packet)
        await publisher.close()
    finally:
        await publisher.abort()
    return stats


class _Backoff:
    """Waits ``initial * 2**n`` seconds (capped at ``maximum``, jittered ×0.5-1) before the n-th
    reconnect in a row; past ``max_retries`` it raises :class:`RelayError` instead."""

    def __init__(self, who: str, initial: float, maximum: float, max_retries: int | None) -> None:
        self.who, self.initial, self.maximum, self.max_retries = who, initial, maximum, max_retries
        self.attempt = 0

    async def wait(self, code: int, reason: str) -> None:
        if self.max_retries is not None and self.attempt >= self.max_retries:
            raise RelayError(code, reason)
        delay = min(self.maximum, self.initial * 2**self.attempt)
        self.attempt += 1
        log.info("%s: %d %s; reconnecting in %.2f s", self.who, code, reason, delay)
        await asyncio.sleep(delay * random.uniform(0.5, 1.0))


def _connect_retryable(e: Exception) -> bool:
    """A failed connect worth retrying: refused/timed out, or HTTP 503 (a server shutting down)."""
    return not isinstance(e, InvalidHandshake) or (
        isinstance(e, InvalidStatus) and e.response.status_code == 503
    )


def _connect_options(token: str | None, max_size: int, connect_kwargs: dict[str, Any]) -> dict[str, Any]:
    return dict(additional_headers=_headers(token), compression=None, max_size=max_size, **connect_kwargs)


class _Publisher:
    """The one publish loop, a packet at a time: encodes and sends packets (objects, or bytes
    sent as they are) and counts them in ``stats``. With a ``backoff`` it reconnects after a lost
    connection and renumbers the rest of the stream (:class:`_Restarter`); without, a lost
    connection raises :class:`RelayError`."""

    def __init__(
        self,
        url: str,
        options: dict[str, Any],
        stats: PublishStats,
        info: ModelInfo | None,
        backoff: _Backoff | None = None,
    ) -> None:
        self.url, self.options, self.stats, self.info, self.backoff = url, options, stats, info, backoff
        self.ws: ClientConnection | None = None
        self.restarter = _Restarter()

    async def connection(self) -> ClientConnection:
        """The open connection, connecting (with backoff, if reconnecting) when there is none."""
        while self.ws is None:
            try:
                self.ws = await connect(self.url, **self.options)
            except (OSError, TimeoutError, InvalidHandshake) as e:
                if self.backoff is None or not _connect_retryable(e):
                    raise
                await self.backoff.wait(1006, f"cannot connect: {e}")
                continue
            self.stats.connections += 1
            self.stats.reconnects = self.stats.connections - 1
        return self.ws

    async def send(self, packet: Packet | bytes) -> None:
        """Send one packet of the source (after a reconnect: renumbered, maybe after a new HELLO)."""
        if self.backoff is not None and isinstance(packet, bytes | bytearray | memoryview):
            packet = decode_packet(packet, self.info, self.options["max_size"])  # to renumber it
        if isinstance(packet, Hello):
            self.info = packet.info
        while True:
            ws = await self.connection()
            to_send, restarted = self.restarter.map(packet)
            try:
                for p in to_send:
                    await self._send_one(ws, p)
            except ConnectionClosed as e:
                code, reason = _closed_code(e)
                self.stats.close_code, self.stats.close_reason = code, reason
                if self.backoff is None or code not in PUBLISH_RETRYABLE:
                    raise RelayError(code, reason) from None
                self.ws = None
                self.restarter.restart()
                if isinstance(packet, End):  # the stream was over: nothing to resume
                    self.restarter.sent(packet)
                    return
                await self.backoff.wait(code, reason)
                continue
            self.stats.streams_restarted += restarted
            self.restarter.sent(packet)
            if self.backoff is not None:
                self.backoff.attempt = 0
            return

    async def _send_one(self, ws: ClientConnection, packet: Packet | bytes) -> None:
        raw = isinstance(packet, bytes | bytearray | memoryview)
        data = packet if raw else encode_packet(packet, self.info)
        await ws.send(data)
        s = self.stats
        s.packets += 1
        s.bytes += len(data)
        if isinstance(packet, Hello):
            s.streams += 1
        elif isinstance(packet, CodePacket):
            s.frames += packet.n_frames
        elif raw and data[1:2] == b"\x02" and len(data) >= 16:
            s.frames += int.from_bytes(data[14:16], "little")  # CODES n_frames

    async def close(self) -> None:
        """Close the connection; :class:`RelayError` if the other side closed it with an error code."""
        ws, self.ws = self.ws, None
        if ws is not None:
            await ws.close()
            received = ws.protocol.close_rcvd
            if received is not None and received.code not in (1000, 1001):
                raise RelayError(received.code, received.reason)

    async def abort(self) -> None:
        """Close the connection, if still open, without checking how."""
        ws, self.ws = self.ws, None
        if ws is not None:
            await ws.close()


# ------------------------------------------------------------------------------ endpoints


def endpoint_url(server_url: str, path: str, **query: Any) -> str:
    """``ws://HOST:PORT`` + ``/encode`` + query (``None`` values left out)."""
    q = urlencode({k: v for k, v in query.items() if v is not None})
    return f"{server_url.rstrip('/')}/{path.lstrip('/')}" + (f"?{q}" if q else "")


def _pcm_bytes(pcm: np.ndarray, fmt: str) -> bytes:
    a = np.asarray(pcm).reshape(-1)
    if fmt == "f32le":
        return a.astype("<f4").tobytes()
    if fmt == "s16le":
        return to_s16le(a)
    raise ValueError(f"unknown PCM format {fmt!r}")


def _check_close(ws: ClientConnection) -> None:
    received = ws.protocol.close_rcvd
    if received is None:
        raise RelayError(1006, "connection lost")
    if received.code != 1000:
        raise RelayError(received.code, received.reason)


async def _read_all(ws: ClientConnection) -> list[bytes]:
    out: list[bytes] = []
    try:
        async for message in ws:
            if isinstance(message, str):
                raise PacketError("text frame from the server", CloseCode.MALFORMED)
            out.append(message)
    except ConnectionClosed:
        pass
    return out


async def _exchange(
    url: str,
    messages: AsyncIterable[Packet | bytes] | Iterable[Packet | bytes],
    info: ModelInfo | None,
    options: dict[str, Any],
) -> list[bytes]:
    """Send ``messages`` (packets or bytes) to a model endpoint while reading its replies (so long
    streams do not deadlock); returns the replies once it closed with 1000 (else :class:`RelayError`)."""
    publisher = _Publisher(url, options, PublishStats(), info)
    async with await publisher.connection() as ws:
        reader = asyncio.create_task(_read_all(ws))
        try:
            with contextlib.suppress(RelayError):  # the server closed early: checked below
                async for message in _aiter(messages):
                    await publisher.send(message)
            replies = await reader
        finally:
            reader.cancel()
    _check_close(ws)
    return replies


async def remote_encode(
    server_url: str,
    pcm: np.ndarray,
    *,
    sample_rate: int | None = None,
    fmt: str = "f32le",
    chunk_samples: int = 4096,
    token: str | None = None,
    max_size: int = 2 * DEFAULT_MAX_PACKET,
    **connect_kwargs: Any,
) -> list[Packet]:
    """Encode mono ``pcm`` on the server's ``/encode``: returns HELLO, CODES..., END.

    ``pcm`` is float in [-1, 1] (or int16 for ``fmt="s16le"``) at ``sample_rate`` (left out:
    the server assumes its model's rate), sent in messages of ``chunk_samples``. Raises
    :class:`RelayError` if the server closes with another code than 1000.
    """
    data = _pcm_bytes(pcm, fmt)
    step = chunk_samples * (4 if fmt == "f32le" else 2)
    url = endpoint_url(server_url, "/encode", format=fmt, rate=sample_rate)
    chunks = itertools.chain((data[a : a + step] for a in range(0, len(data), step)), [b""])
    messages = await _exchange(url, chunks, None, _connect_options(token, max_size, connect_kwargs))
    out: list[Packet] = []
    info: ModelInfo | None = None
    for m in messages:
        packet = decode_packet(m, info, max_size)
        if isinstance(packet, Hello):
            info = packet.info
        out.append(packet)
    return out


async def remote_decode(
    server_url: str,
    packets: AsyncIterable[Packet | bytes] | Iterable[Packet | bytes],
    *,
    info: ModelInfo | None = None,
    token: str | None = None,
    max_size: int = 2 * DEFAULT_MAX_PACKET,
    **connect_kwargs: Any,
) -> np.ndarray:
    """Decode one stream (HELLO, CODES..., END) on the server's ``/decode``: float32 samples.

    Sends while receiving, so long streams do not deadlock. Raises :class:`RelayError` if
    the server closes with another code than 1000 (e.g. 4007 for another model).
    """
    url = endpoint_url(server_url, "/decode")
    messages = await _exchange(url, packets, info, _connect_options(token, max_size, connect_kwargs))
    return np.frombuffer(b"".join(messages), dtype="<f4").astype(np.float32)


# ------------------------------------------------------------------------------ listen


@dataclass
class ListenStats(StreamCounts):
    """What a listener received and what it can tell it missed (the stream and frame counters
    are kept by its :class:`~snac_stream.net.ledger.LossLedger`)."""

    packets: int = 0
    bytes: int = 0
    errors: list[ErrorPacket] = field(default_factory=list)
    connections: int = 0
    reconnects: int = 0
    close_code: int | None = None
    close_reason: str = ""


class ListenStream:
    """Async iterator of decoded packets from a room; see :func:`listen`."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        reconnect: bool = False,
        max_retries: int | None = None,
        backoff_initial: float = 0.25,
        backoff_max: float = 10.0,
        max_size: int = 2 * DEFAULT_MAX_PACKET,
        expect_info: ModelInfo | None = None,
        **connect_kwargs: Any,
    ) -> None:
        self.url = url
        self.expect_info = expect_info
        self.token = token
        self.reconnect = reconnect
        self.max_retries = max_retries
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.max_size = max_size
        self.connect_kwargs = connect_kwargs
        self.stats = ListenStats()
        self.ledger = LossLedger(self.stats)
        self.info: ModelInfo | None = None  #: model of the current stream
        self.connection: ClientConnection | None = None
        self._gen = self._run()

    def __aiter__(self) -> ListenStream:
        return self

    async def __anext__(self) -> Packet:
        return await self._gen.__anext__()

    async def aclose(self) -> None:
        await self._gen.aclose()

    async def __aenter__(self) -> ListenStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _account(self, packet: Packet) -> None:
        ledger = self.ledger
        if isinstance(packet, Hello):
            self.info = packet.info
            ledger.hello(packet.stream_id, packet.info)
        elif isinstance(packet, CodePacket):
            ledger.codes(packet.seq, packet.first_frame, packet.n_frames)
        elif isinstance(packet, End):
            ledger.end(packet.seq, packet.total_frames, packet.reason == EndReason.COMPLETE)
        elif isinstance(packet, ErrorPacket):
            self.stats.errors.append(packet)
            ledger.abort()

    # -- connection loop ---------------------------------------------------------------

    async def _run(self) -> AsyncIterator[Packet]:
        backoff = _Backoff("listener", self.backoff_initial, self.backoff_max, self.max_retries)
        options = _connect_options(self.token, self.max_size, self.connect_kwargs)
        while True:
            code, reason = 1000, ""
            try:
                async with connect(self.url, **options) as ws:
                    self.connection = ws
                    self.stats.connections += 1
                    if self.stats.connections > 1:
                        self.stats.reconnects += 1
                    try:
                        async for message in ws:
                            if isinstance(message, str):
                                raise PacketError("text frame from the relay", CloseCode.MALFORMED)
                            packet = decode_packet(message, self.info, self.max_size)
                            if isinstance(packet, Hello) and self.expect_info is not None:
                                self.expect_info.check_compatible(packet.info)  # MODEL_MISMATCH
                            backoff.attempt = 0
                            self.stats.packets += 1
                            self.stats.bytes += len(message)
                            self._account(packet)
                            yield packet
                    except ConnectionClosed as e:
                        code, reason = _closed_code(e)
                    else:
                        received = ws.protocol.close_rcvd
                        if received is not None:
                            code, reason = received.code, received.reason
            except (OSError, TimeoutError, InvalidHandshake) as e:
                if not self.reconnect or not _connect_retryable(e):
                    raise
                code, reason = 1006, f"cannot connect: {e}"
            finally:
                self.connection = None
            self.stats.close_code, self.stats.close_reason = code, reason
            if code != 1000 and not self.reconnect:
                self.ledger.abort()
            if self.reconnect and code in RETRYABLE:
                await backoff.wait(code, reason)
                continue
            if code in (1000, 1001):
                return
            raise RelayError(code, reason)


def listen(url: str, token: str | None = None, **options: Any) -> ListenStream:
    """Listen to ``url`` (``.../rooms/NAME?role=listen``); iterate to get decoded packets.

    Options: ``expect_info`` (raise :class:`~snac_stream.protocol.packets.PacketError`
    ``MODEL_MISMATCH`` on a HELLO for another model), ``reconnect`` (retry on the codes in
    :data:`RETRYABLE` with exponential backoff ``backoff_initial * 2**n`` capped at
    ``backoff_max`` seconds, jittered),
    ``max_retries``, ``max_size``, and keyword arguments for ``websockets`` ``connect``.
    The iterator ends on close codes 1000/1001 and raises :class:`RelayError` on others.
    ``.stats`` is a :class:`ListenStats`.
    """
    return ListenStream(url, token, **options)

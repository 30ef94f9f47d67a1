"""Async clients: :func:`publish` a code stream, :func:`listen` to a room (the relay), and
:func:`remote_encode` / :func:`remote_decode` (the model endpoints).

``listen`` counts what it did not receive: after a stream's END,
``frames_received + frames_lost + frames_missed_at_join == END.total_frames``.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from snac_stream.protocol.packets import (
    DEFAULT_MAX_PACKET,
    CloseCode,
    CodePacket,
    End,
    EndReason,
    ErrorPacket,
    Hello,
    MalformedPacket,
    ModelInfo,
    Packet,
    decode_packet,
    encode_packet,
)

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
    kwargs = dict(additional_headers=_headers(token), compression=None, max_size=max_size, **connect_kwargs)
    if not reconnect:
        async with connect(url, **kwargs) as ws:
            stats.connections += 1
            try:
                async for packet in _aiter(packets):
                    if isinstance(packet, Hello):
                        info = packet.info
                        stats.streams += 1
                    if isinstance(packet, CodePacket):
                        stats.frames += packet.n_frames
                    elif isinstance(packet, bytes) and packet[1:2] == b"\x02" and len(packet) >= 16:
                        stats.frames += int.from_bytes(packet[14:16], "little")  # CODES n_frames
                    data = packet if isinstance(packet, bytes) else encode_packet(packet, info)
                    await ws.send(data)
                    stats.packets += 1
                    stats.bytes += len(data)
                await ws.close()
            except ConnectionClosed as e:
                code, reason = _closed_code(e)
                raise RelayError(code, reason) from None
            received = ws.protocol.close_rcvd
            if received is not None and received.code not in (1000, 1001):
                raise RelayError(received.code, received.reason)
        return stats

    restarter = _Restarter()
    ws: ClientConnection | None = None
    attempt = 0
    source = _aiter(packets)

    async def backoff(code: int, reason: str) -> None:
        nonlocal attempt
        if max_retries is not None and attempt >= max_retries:
            raise RelayError(code, reason)
        delay = min(backoff_max, backoff_initial * 2**attempt)
        attempt += 1
        log.info("publisher: %d %s; reconnecting in %.2f s", code, reason, delay)
        await asyncio.sleep(delay * random.uniform(0.5, 1.0))

    try:
        while True:
            try:
                packet = await source.__anext__()
            except StopAsyncIteration:
                break
            if isinstance(packet, bytes | bytearray | memoryview):
                packet = decode_packet(packet, info, max_size)
            if isinstance(packet, Hello):
                info = packet.info
            while True:
                if ws is None:
                    try:
                        ws = await connect(url, **kwargs)
                    except (OSError, TimeoutError, InvalidHandshake) as e:
                        retry_http = isinstance(e, InvalidStatus) and e.response.status_code == 503
                        if isinstance(e, InvalidHandshake) and not retry_http:
                            raise
                        await backoff(1006, f"cannot connect: {e}")
                        continue
                    stats.connections += 1
                    stats.reconnects = stats.connections - 1
                to_send, restarted = restarter.map(packet)
                try:
                    for p in to_send:
                        data = encode_packet(p, info)
                        await ws.send(data)
                        stats.packets += 1
                        stats.bytes += len(data)
                        if isinstance(p, Hello):
                            stats.streams += 1
                        elif isinstance(p, CodePacket):
                            stats.frames += p.n_frames
                except ConnectionClosed as e:
                    code, reason = _closed_code(e)
                    stats.close_code, stats.close_reason = code, reason
                    ws = None
                    if code not in PUBLISH_RETRYABLE:
                        raise RelayError(code, reason) from None
                    restarter.restart()
                    if isinstance(packet, End):  # the stream was over: nothing to resume
                        restarter.sent(packet)
                        break
                    await backoff(code, reason)
                    continue
                stats.streams_restarted += restarted
                restarter.sent(packet)
                attempt = 0
                break
        if ws is not None:
            await ws.close()
            received = ws.protocol.close_rcvd
            if received is not None and received.code not in (1000, 1001):
                raise RelayError(received.code, received.reason)
    finally:
        if ws is not None:
            await ws.close()
    return stats


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
        if a.dtype.kind in "iu":
            return a.astype("<i2").tobytes()
        return (np.clip(a, -1.0, 32767 / 32768) * 32768.0).round().astype("<i2").tobytes()
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
                raise MalformedPacket("text frame from the server")
            out.append(message)
    except ConnectionClosed:
        pass
    return out


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
    async with connect(
        url, additional_headers=_headers(token), compression=None, max_size=max_size, **connect_kwargs
    ) as ws:
        reader = asyncio.create_task(_read_all(ws))
        try:
            for start in range(0, len(data), step):
                await ws.send(data[start : start + step])
            await ws.send(b"")
        except ConnectionClosed:
            pass
        messages = await reader
    _check_close(ws)
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
    async with connect(
        url, additional_headers=_headers(token), compression=None, max_size=max_size, **connect_kwargs
    ) as ws:
        reader = asyncio.create_task(_read_all(ws))
        try:
            async for packet in _aiter(packets):
                if isinstance(packet, Hello):
                    info = packet.info
                await ws.send(packet if isinstance(packet, bytes) else encode_packet(packet, info))
        except ConnectionClosed:
            pass
        messages = await reader
    _check_close(ws)
    return np.frombuffer(b"".join(messages), dtype="<f4").astype(np.float32)


# ------------------------------------------------------------------------------ listen


@dataclass
class ListenStats:
    """What a listener received and what it can tell it missed."""

    packets: int = 0
    bytes: int = 0
    streams: int = 0  #: HELLOs that started a stream
    streams_completed: int = 0  #: END with reason COMPLETE
    streams_aborted: int = 0  #: END with another reason, ERROR, or connection lost mid-stream
    frames_received: int = 0
    frames_lost: int = 0  #: frames missing between the first CODES received and END
    frames_missed_at_join: int = 0  #: frames sent before this listener joined the stream
    packets_lost: int = 0  #: CODES packets missing (gaps in seq after joining)
    errors: list[ErrorPacket] = field(default_factory=list)
    connections: int = 0
    reconnects: int = 0
    close_code: int | None = None
    close_reason: str = ""


@dataclass
class _StreamState:
    stream_id: int
    info: ModelInfo
    next_seq: int = 0
    next_frame: int = 0
    started: bool = False  #: a CODES packet was received


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
        self.info: ModelInfo | None = None  #: model of the current stream
        self.connection: ClientConnection | None = None
        self._stream: _StreamState | None = None
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

    # -- accounting ------------------------------------------------------------------

    def _account(self, packet: Packet) -> None:
        s, cur = self.stats, self._stream
        if isinstance(packet, Hello):
            self.info = packet.info
            resumed = cur is not None and cur.stream_id == packet.stream_id and cur.info == packet.info
            if not resumed:
                if cur is not None:
                    s.streams_aborted += 1
                self._stream = _StreamState(packet.stream_id, packet.info)
                s.streams += 1
        elif isinstance(packet, CodePacket):
            if cur is None:
                return
            gap_frames = packet.first_frame - cur.next_frame
            gap_packets = packet.seq - cur.next_seq
            if not cur.started and cur.next_frame == 0:
                s.frames_missed_at_join += max(gap_frames, 0)
            else:
                s.frames_lost += max(gap_frames, 0)
                s.packets_lost += max(gap_packets, 0)
            cur.started = True
            cur.next_seq = packet.seq + 1
            cur.next_frame = packet.first_frame + packet.n_frames
            s.frames_received += packet.n_frames
        elif isinstance(packet, End):
            if cur is not None:
                tail = max(packet.total_frames - cur.next_frame, 0)
                if not cur.started and cur.next_frame == 0:
                    s.frames_missed_at_join += tail
                else:
                    s.frames_lost += tail
                    s.packets_lost += max(packet.seq - cur.next_seq, 0)
            if packet.reason == EndReason.COMPLETE:
                s.streams_completed += 1
            else:
                s.streams_aborted += 1
            self._stream = None
        elif isinstance(packet, ErrorPacket):
            s.errors.append(packet)
            if cur is not None:
                s.streams_aborted += 1
            self._stream = None

    # -- connection loop ---------------------------------------------------------------

    async def _run(self) -> AsyncIterator[Packet]:
        attempt = 0
        while True:
            code, reason = 1000, ""
            try:
                async with connect(
                    self.url,
                    additional_headers=_headers(self.token),
                    compression=None,
                    max_size=self.max_size,
                    **self.connect_kwargs,
                ) as ws:
                    self.connection = ws
                    self.stats.connections += 1
                    if self.stats.connections > 1:
                        self.stats.reconnects += 1
                    try:
                        async for message in ws:
                            if isinstance(message, str):
                                raise MalformedPacket("text frame from the relay")
                            packet = decode_packet(message, self.info, self.max_size)
                            if isinstance(packet, Hello) and self.expect_info is not None:
                                self.expect_info.check_compatible(packet.info)  # ModelMismatch
                            attempt = 0
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
                retry_http = isinstance(e, InvalidStatus) and e.response.status_code == 503
                if not self.reconnect or (isinstance(e, InvalidHandshake) and not retry_http):
                    raise
                code, reason = 1006, f"cannot connect: {e}"
            finally:
                self.connection = None
            self.stats.close_code, self.stats.close_reason = code, reason
            if self._stream is not None and code != 1000:
                if not self.reconnect:
                    self.stats.streams_aborted += 1
                    self._stream = None
            if self.reconnect and code in RETRYABLE:
                if self.max_retries is not None and attempt >= self.max_retries:
                    raise RelayError(code, reason)
                delay = min(self.backoff_max, self.backoff_initial * 2**attempt)
                attempt += 1
                log.info("listener: %d %s; reconnecting in %.2f s", code, reason, delay)
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                continue
            if code in (1000, 1001):
                return
            raise RelayError(code, reason)


def listen(url: str, token: str | None = None, **options: Any) -> ListenStream:
    """Listen to ``url`` (``.../rooms/NAME?role=listen``); iterate to get decoded packets.

    Options: ``expect_info`` (raise :class:`~snac_stream.protocol.packets.ModelMismatch` on a
    HELLO for another model), ``reconnect`` (retry on the codes in :data:`RETRYABLE` with exponential
    backoff ``backoff_initial * 2**n`` capped at ``backoff_max`` seconds, jittered),
    ``max_retries``, ``max_size``, and keyword arguments for ``websockets`` ``connect``.
    The iterator ends on close codes 1000/1001 and raises :class:`RelayError` on others.
    ``.stats`` is a :class:`ListenStats`.
    """
    return ListenStream(url, token, **options)

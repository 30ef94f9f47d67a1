"""Async clients for the relay: :func:`publish` a code stream, :func:`listen` to a room.

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
from urllib.parse import quote

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from .packets import (
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
]

log = logging.getLogger("snac_stream.client")

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


async def _aiter(packets: AsyncIterable[Any] | Iterable[Any]) -> AsyncIterator[Any]:
    if isinstance(packets, AsyncIterable):
        async for p in packets:
            yield p
    else:
        for p in packets:
            yield p


async def publish(
    url: str,
    packets: AsyncIterable[Packet | bytes] | Iterable[Packet | bytes],
    token: str | None = None,
    *,
    info: ModelInfo | None = None,
    max_size: int = 2 * DEFAULT_MAX_PACKET,
    **connect_kwargs: Any,
) -> PublishStats:
    """Send ``packets`` (objects or encoded bytes) to ``url`` (``.../rooms/NAME?role=publish``).

    CODES objects are encoded with ``info`` or the ModelInfo of the last HELLO sent.
    Returns when everything was sent and the connection closed; raises :class:`RelayError`
    if the relay closed it with an error code.
    """
    stats = PublishStats()
    async with connect(
        url, additional_headers=_headers(token), compression=None, max_size=max_size, **connect_kwargs
    ) as ws:
        try:
            async for packet in _aiter(packets):
                if isinstance(packet, Hello):
                    info = packet.info
                if isinstance(packet, CodePacket):
                    stats.frames += packet.n_frames
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

    Options: ``expect_info`` (raise :class:`~snac_stream.packets.ModelMismatch` on a
    HELLO for another model), ``reconnect`` (retry on the codes in :data:`RETRYABLE` with exponential
    backoff ``backoff_initial * 2**n`` capped at ``backoff_max`` seconds, jittered),
    ``max_retries``, ``max_size``, and keyword arguments for ``websockets`` ``connect``.
    The iterator ends on close codes 1000/1001 and raises :class:`RelayError` on others.
    ``.stats`` is a :class:`ListenStats`.
    """
    return ListenStream(url, token, **options)

"""Rooms: fan a publisher's code stream out to listeners, without a model.

The relay reads packet headers only (:func:`~snac_stream.protocol.packets.decode_header`) and
checks the stream's order: HELLO, then CODES with consecutive ``seq`` and contiguous
``first_frame``, then END. It forwards the publisher's bytes unchanged. Each listener
has a bounded send queue; the publisher never waits for a listener.

See docs/protocol.md ("Relay") for the behaviour seen by clients.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from snac_stream.protocol.packets import (
    CloseCode,
    End,
    EndReason,
    Hello,
    Kind,
    ModelInfo,
    PacketError,
    decode_body,
    decode_header,
    encode_packet,
)

__all__ = ["RelayConfig", "Relay", "Room", "ListenerSession", "close_reason", "close_draining", "ROOM_NAME"]

log = logging.getLogger("snac_stream.net.relay")

ROOM_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
GOING_AWAY = 1001


async def close_draining(connection: ServerConnection, code: int, reason: str) -> None:
    """Close with ``code``, reading (and discarding) what the client still sends meanwhile.

    Without this, a client that pipelined more than ``recv_queue`` messages stalls the
    closing handshake (incoming data is paused while the queue is full, so its close frame
    is never read) until ``close_timeout``. Only call it when nothing else reads.
    """

    async def drain() -> None:
        try:
            while True:
                await connection.recv()
        except Exception:  # ConnectionClosed, or the connection going away any other way
            pass

    task = asyncio.create_task(drain())
    try:
        await connection.close(code, close_reason(reason))
    finally:
        task.cancel()


def close_reason(text: str) -> str:
    """Shorten ``text`` to fit a WebSocket close reason (at most 123 UTF-8 bytes)."""
    raw = text.encode("utf-8")
    if len(raw) <= 123:
        return text
    return raw[:120].decode("utf-8", "ignore") + "..."


@dataclass
class RelayConfig:
    """Limits of the relay (a subset of ``ServerConfig``)."""

    max_rooms: int = 64
    max_listeners_per_room: int = 32
    listener_queue: int = 64  #: packets buffered per listener
    slow_listener: Literal["drop", "skip"] = "drop"
    idle_timeout: float = 60.0  #: seconds a publisher may stay silent
    max_message_size: int = 64 * 1024  #: bytes per packet
    shutdown_grace: float = 2.0  #: seconds listeners get to receive their last packets


class _CloseItem:
    """Queue item: close the connection after everything queued before it was sent."""

    def __init__(self, code: int, reason: str) -> None:
        self.code, self.reason = code, reason


class ListenerSession:
    """One listener: a bounded send queue drained by its own task."""

    def __init__(self, connection: ServerConnection, room: Room, capacity: int, policy: str) -> None:
        self.connection = connection
        self.room = room
        self.capacity = capacity
        self.policy = policy
        self.queue: collections.deque[tuple[bytes | _CloseItem, int]] = collections.deque()
        self.wakeup = asyncio.Event()
        self.close_request: tuple[int, str] | None = None
        self.closing = False
        self.sender: asyncio.Task[None] | None = None
        self.packets_sent = 0
        self.packets_skipped = 0
        self.frames_skipped = 0
        self.joined_at = time.monotonic()

    # -- producer side (called synchronously by the room) ----------------------------

    def offer(self, data: bytes, kind: Kind, n_frames: int = 0, force: bool = False) -> None:
        """Queue a packet; on overflow skip the oldest CODES packet or drop this listener.

        ``force`` queues it regardless (the final END at shutdown: one item over capacity).
        """
        if self.closing:
            return
        full = len(self.queue) >= self.capacity and not force
        if full and not (self.policy == "skip" and self._skip_oldest_codes()):
            self.room.stats["listeners_dropped"] += 1
            self.kill(CloseCode.SLOW_CONSUMER, f"listener fell behind ({self.capacity} packets queued)")
            return
        self.queue.append((data, n_frames if kind is Kind.CODES else -1))
        self.wakeup.set()

    def _skip_oldest_codes(self) -> bool:
        for i, (_, n_frames) in enumerate(self.queue):
            if n_frames >= 0:
                del self.queue[i]
                self.packets_skipped += 1
                self.frames_skipped += n_frames
                self.room.stats["packets_skipped"] += 1
                self.room.stats["frames_skipped"] += n_frames
                return True
        return False

    def finish(self, code: int, reason: str) -> None:
        """Close after the queued packets are sent (used at shutdown)."""
        if not self.closing:
            self.closing = True
            self.queue.append((_CloseItem(code, reason), -1))
            self.wakeup.set()

    def kill(self, code: int, reason: str) -> None:
        """Close now, discarding the queue."""
        if self.close_request is None:
            self.close_request = (code, reason)
        self.closing = True
        self.queue.clear()
        if self.sender is not None:
            self.sender.cancel()

    # -- connection side ----------------------------------------------------------------

    async def _send_loop(self) -> None:
        while True:
            while not self.queue:
                self.wakeup.clear()
                await self.wakeup.wait()
            item, _ = self.queue.popleft()
            if isinstance(item, _CloseItem):
                self.close_request = (item.code, item.reason)
                return
            await self.connection.send(item)
            self.packets_sent += 1

    async def _recv_loop(self) -> None:
        async for message in self.connection:
            if isinstance(message, str):
                self.kill(CloseCode.TEXT_FRAME, "text frame on a binary endpoint")
            else:
                self.kill(CloseCode.UNEXPECTED_PACKET, "listeners must not send packets")
            return

    async def run(self) -> None:
        """Serve until the client leaves or the session is closed."""
        if self.close_request is None:
            self.sender = asyncio.create_task(self._send_loop())
            receiver = asyncio.create_task(self._recv_loop())
            try:
                await asyncio.wait({self.sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (self.sender, receiver):
                    task.cancel()
                for result in await asyncio.gather(self.sender, receiver, return_exceptions=True):
                    if isinstance(result, Exception) and not isinstance(result, ConnectionClosed):
                        log.error("listener task failed", exc_info=result)
        if self.close_request is not None:
            code, reason = self.close_request
            await close_draining(self.connection, code, reason)


class Room:
    """A named room: at most one publisher, up to ``max_listeners_per_room`` listeners."""

    def __init__(self, name: str, config: RelayConfig) -> None:
        self.name = name
        self.config = config
        self.publisher: ServerConnection | None = None
        self.listeners: set[ListenerSession] = set()
        self.created = time.time()
        # Current stream (open between HELLO and END).
        self.hello: bytes | None = None
        self.info: ModelInfo | None = None
        self.stream_id = 0
        self.next_seq = 0
        self.next_frame = 0
        self.stats: collections.Counter[str] = collections.Counter()
        # Rooms across nodes (net/broker.py): where the open stream comes from ("local": this
        # node's publisher, "remote": the broker), the hook that copies local packets to the
        # broker, and members still being admitted (the room is not released meanwhile).
        self.origin = "local"
        self.mirror: Callable[[Room, bytes, Kind], None] | None = None
        self.joining = 0

    @property
    def stream_open(self) -> bool:
        return self.hello is not None

    @property
    def empty(self) -> bool:
        return self.publisher is None and not self.listeners and not self.joining

    def snapshot(self) -> dict[str, Any]:
        """Per-room stats for /health (JSON-ready)."""
        return {
            "publisher": self.publisher is not None,
            "listeners": len(self.listeners),
            "stream_open": self.stream_open,
            "stream_id": self.stream_id if self.stream_open else None,
            "next_seq": self.next_seq if self.stream_open else None,
            "next_frame": self.next_frame if self.stream_open else None,
            "sample_rate": self.info.sample_rate if self.info and self.stream_open else None,
            "created": self.created,
            **{k: self.stats[k] for k in sorted(self.stats)},
        }

    # -- fan-out ---------------------------------------------------------------------

    def _broadcast(self, data: bytes, kind: Kind, n_frames: int = 0, force: bool = False) -> None:
        for listener in list(self.listeners):
            listener.offer(data, kind, n_frames, force)
        self.stats["packets_out"] += len(self.listeners)
        if self.mirror is not None and self.origin == "local":
            self.mirror(self, data, kind)

    def deliver(self, data: bytes, kind: Kind, n_frames: int = 0) -> None:
        """Fan a packet of a remote stream (``origin == "remote"``, from the broker) out to the
        local listeners."""
        self._broadcast(data, kind, n_frames)

    def add_listener(self, listener: ListenerSession) -> None:
        self.listeners.add(listener)
        self.stats["listeners_joined"] += 1
        if self.hello is not None:
            listener.offer(self.hello, Kind.HELLO)
            if self.next_frame > 0:
                self.stats["late_joins"] += 1

    def end_stream(self, reason: EndReason) -> None:
        """Tell listeners the open stream ended without the publisher's END."""
        if self.info is None or self.hello is None:
            return
        untrimmed = self.next_frame * self.info.frame_size
        end = End(self.stream_id, self.next_seq, self.next_frame, untrimmed, reason)
        self._broadcast(encode_packet(end), Kind.END, force=reason is EndReason.SHUTDOWN)
        self.hello = None
        self.stats["streams_aborted"] += 1

    # -- publisher input -----------------------------------------------------------------

    def publish(self, data: bytes) -> None:
        """Validate one packet from the publisher and forward it (raises PacketError)."""
        head = decode_header(data, self.info if self.stream_open else None, self.config.max_message_size)
        self.stats["packets_in"] += 1
        self.stats["bytes_in"] += len(data)
        if head.kind is Kind.HELLO:
            if self.stream_open:
                raise PacketError(
                    f"HELLO while stream {self.stream_id} is open (send END first)",
                    CloseCode.UNEXPECTED_PACKET,
                )
            hello = decode_body(data, head, None)
            assert isinstance(hello, Hello)
            self.info, self.stream_id = hello.info, hello.stream_id
            self.next_seq = self.next_frame = 0
            self.origin = "local"
            self.hello = data
            self.stats["streams_started"] += 1
            self._broadcast(data, Kind.HELLO)
            return
        if head.kind is Kind.ERROR:
            self._broadcast(data, Kind.ERROR)
            if self.stream_open:
                self.hello = None
                self.stats["streams_aborted"] += 1
            return
        if not self.stream_open:
            raise PacketError(f"{head.kind.name} packet before HELLO", CloseCode.UNEXPECTED_PACKET)
        if head.stream_id != self.stream_id:
            raise PacketError(
                f"stream_id {head.stream_id}, the open stream is {self.stream_id}",
                CloseCode.UNEXPECTED_PACKET,
            )
        if head.seq != self.next_seq:
            raise PacketError(f"seq {head.seq}, expected {self.next_seq}", CloseCode.UNEXPECTED_PACKET)
        if head.kind is Kind.CODES:
            if head.first_frame != self.next_frame:
                raise PacketError(
                    f"first_frame {head.first_frame}, expected {self.next_frame}", CloseCode.UNEXPECTED_PACKET
                )
            self.next_seq += 1
            self.next_frame += head.n_frames
            self.stats["frames_in"] += head.n_frames
            self._broadcast(data, Kind.CODES, head.n_frames)
            return
        # END
        if head.total_frames != self.next_frame:
            raise PacketError(
                f"END total_frames {head.total_frames}, sent {self.next_frame}", CloseCode.UNEXPECTED_PACKET
            )
        self._broadcast(data, Kind.END)
        self.hello = None
        self.stats["streams_completed"] += 1


class Relay:
    """All rooms, plus the WebSocket handler for ``/rooms/NAME?role=publish|listen``."""

    def __init__(self, config: RelayConfig | None = None) -> None:
        self.config = config or RelayConfig()
        self.rooms: dict[str, Room] = {}
        self.stopping = False
        self.sessions: set[asyncio.Task[Any]] = set()
        self.stats: collections.Counter[str] = collections.Counter()
        self.broker: Any = None  #: a :class:`~snac_stream.net.broker.Broker` spanning nodes, or None

    def snapshot(self) -> dict[str, Any]:
        return {name: room.snapshot() for name, room in sorted(self.rooms.items())}

    def _room(self, name: str) -> Room | None:
        room = self.rooms.get(name)
        if room is None and len(self.rooms) < self.config.max_rooms:
            room = self.rooms[name] = Room(name, self.config)
            self.stats["rooms_created"] += 1
            if self.broker is not None:
                self.broker.attach(room)
        return room

    def _release(self, room: Room) -> None:
        if room.empty and self.rooms.get(room.name) is room:
            del self.rooms[room.name]
            if self.broker is not None:
                self.broker.detach(room)

    # -- in-process members (the browser bridge, net/browser.py) -------------------------

    def join(self, name: str) -> Room | None:
        """The room ``name`` (created if there is space; None: ``max_rooms`` reached or shutting
        down) for a member that is not a relay connection; call :meth:`leave` when done."""
        return None if self.stopping else self._room(name)

    def leave(self, room: Room) -> None:
        """Forget ``room`` if nobody is in it any more."""
        self._release(room)

    def release_publisher(self, room: Room, owner: Any) -> None:
        """``owner`` stops publishing: free the slot and END an open stream (PUBLISHER_LOST)."""
        if room.publisher is not owner:
            return
        room.publisher = None
        if room.stream_open and not self.stopping:
            room.end_stream(EndReason.PUBLISHER_LOST)
        if self.broker is not None:
            self.broker.publisher_left(room)

    async def claim_publisher(self, room: Room, owner: Any) -> tuple[int, str] | None:
        """Make ``owner`` the room's publisher (cluster-wide with a broker); None, or the
        (close code, reason) that refuses it."""
        if room.publisher is not None:
            room.stats["publishers_rejected"] += 1
            return CloseCode.PUBLISHER_EXISTS, f"room {room.name} already has a publisher"
        room.publisher = owner
        if self.broker is not None:
            refusal = await self.broker.claim_publisher(room)
            if refusal is not None:
                room.publisher = None
                room.stats["publishers_rejected"] += 1
                return refusal
        room.stats["publishers_joined"] += 1
        return None

    async def handle(self, connection: ServerConnection, request: Any) -> None:
        """Route handler: ``request.subpath`` is the room name, ``request.query['role']`` the role."""
        name = request.subpath
        role = request.query.get("role")
        if not ROOM_NAME.match(name):
            await close_draining(
                connection, CloseCode.BAD_REQUEST, "room name must match [A-Za-z0-9_.-]{1,64}"
            )
            return
        if role not in ("publish", "listen"):
            await close_draining(
                connection, CloseCode.BAD_REQUEST, "query parameter role must be publish or listen"
            )
            return
        if self.stopping:
            await close_draining(connection, GOING_AWAY, "server shutting down")
            return
        room = self._room(name)
        if room is None:
            self.stats["rejected_too_many_rooms"] += 1
            await close_draining(
                connection, CloseCode.TOO_MANY_ROOMS, f"server has {self.config.max_rooms} rooms"
            )
            return
        task = asyncio.current_task()
        assert task is not None
        self.sessions.add(task)
        try:
            if role == "publish":
                await self._publisher(room, connection)
            else:
                await self._listener(room, connection)
        finally:
            self.sessions.discard(task)
            self._release(room)

    async def _publisher(self, room: Room, connection: ServerConnection) -> None:
        refusal = await self.claim_publisher(room, connection)
        if refusal is not None:
            await close_draining(connection, *refusal)
            return
        code, reason = 1000, ""
        try:
            while True:
                try:
                    async with asyncio.timeout(self.config.idle_timeout):
                        message = await connection.recv()
                except TimeoutError:
                    code, reason = CloseCode.IDLE_TIMEOUT, f"no packet for {self.config.idle_timeout:g} s"
                    break
                except ConnectionClosed:
                    break
                if isinstance(message, str):
                    code, reason = CloseCode.TEXT_FRAME, "text frame on a binary endpoint"
                    break
                try:
                    room.publish(message)
                except PacketError as e:
                    room.stats["publisher_errors"] += 1
                    code, reason = e.code, str(e)
                    break
                # recv() does not yield while messages are buffered: let the listeners'
                # senders run between packets, so a burst does not fill their queues.
                await asyncio.sleep(0)
                if self.broker is not None:  # a publisher faster than Redis waits (bounded outbox)
                    await self.broker.writable(room)
        finally:
            self.release_publisher(room, connection)
        if code != 1000:
            log.info("room %s: closing publisher: %d %s", room.name, code, reason)
            await close_draining(connection, code, reason)

    async def _listener(self, room: Room, connection: ServerConnection) -> None:
        if len(room.listeners) >= self.config.max_listeners_per_room:
            room.stats["listeners_rejected"] += 1
            await close_draining(
                connection,
                CloseCode.ROOM_FULL,
                f"room {room.name} has {self.config.max_listeners_per_room} listeners",
            )
            return
        if self.broker is not None:  # the limit holds across the cluster
            room.joining += 1
            try:
                refusal = await self.broker.admit_listener(room)
            finally:
                room.joining -= 1
            if refusal is not None:
                room.stats["listeners_rejected"] += 1
                await close_draining(connection, *refusal)
                return
        session = ListenerSession(connection, room, self.config.listener_queue, self.config.slow_listener)
        room.add_listener(session)
        try:
            await session.run()
        finally:
            room.listeners.discard(session)
            if self.broker is not None:
                self.broker.listener_left(room)

    async def shutdown(self) -> None:
        """END every open stream (reason SHUTDOWN), then close everyone with 1001."""
        self.stopping = True
        closing = []
        for room in list(self.rooms.values()):
            room.end_stream(EndReason.SHUTDOWN)
            for listener in list(room.listeners):
                listener.finish(GOING_AWAY, "server shutting down")
            if room.publisher is not None:
                closing.append(asyncio.create_task(room.publisher.close(GOING_AWAY, "server shutting down")))
        pending = {t for t in self.sessions if not t.done()} | set(closing)
        if not pending:
            return
        _, late = await asyncio.wait(pending, timeout=self.config.shutdown_grace)
        if late:  # listeners that did not take their last packets in time
            for room in list(self.rooms.values()):
                for listener in list(room.listeners):
                    listener.kill(GOING_AWAY, "server shutting down")
            await asyncio.wait(late, timeout=self.config.shutdown_grace)

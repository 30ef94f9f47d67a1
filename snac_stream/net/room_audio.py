"""One decoder per room for browser listeners, fanned out as JSON events and int16 PCM.

::

    relay Room ──(in-process listener: bounded queue, oldest CODES skipped)──► RoomAudio
        └► executor: CodeReceiver.on_packet (batched decoder, once per room)
              └► every BrowserListener of the room: bounded queue (oldest PCM dropped)
                    └► its WebSocket: text = JSON event, binary = PCM_HEADER + int16 samples

A browser listener that joins a room whose stream is already being decoded starts at the
next coarse-frame boundary of the decoded audio. PCM messages carry the absolute sample
position of their first sample, so a page sees every gap (``pos`` jumps) it did not get.
See docs/browser.md.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from snac_stream.protocol.packets import (
    CloseCode,
    CodePacket,
    End,
    ErrorPacket,
    Hello,
    Packet,
    PacketError,
    decode_packet,
)

from .page import BrowserListener, pcm_message
from .receiver import CodeReceiver
from .relay import ListenerSession, Room

__all__ = ["RoomAudio"]

log = logging.getLogger("snac_stream.net.room_audio")

BATCH = 16  #: packets decoded per executor call at most (a backlog after a burst)
_EMPTY = np.zeros(0, dtype=np.float32)


@dataclass
class _Outcome:
    """What decoding one packet did: its samples, or the error to report (None: nothing)."""

    data: bytes
    packet: Packet | None
    audio: np.ndarray = field(default_factory=lambda: _EMPTY)
    frames_lost: int = 0  #: the receiver's count after the packet
    end: int | None = None  #: absolute position after the released samples (a started stream)
    error: PacketError | None = None


class RoomAudio:
    """Decodes one relay room once, whatever the number of browser listeners.

    ``bridge`` is the :class:`~snac_stream.net.browser.BrowserBridge` (model endpoints,
    counters); the room's packets arrive through an in-process relay listener that skips
    the oldest CODES packet when the decoder falls behind (the receiver conceals the gap).
    """

    def __init__(self, bridge: Any, room: Room) -> None:
        self.bridge = bridge
        self.room = room
        self.info = bridge.endpoints.info
        self.listeners: set[BrowserListener] = set()
        c = bridge.server.config
        self.max_packet = c.max_message_size
        self.tap = ListenerSession(None, room, c.listener_queue, "skip")  # type: ignore[arg-type]
        self.receiver: CodeReceiver | None = None
        self.stream_id: int | None = None
        self.stream_started = False
        self.pos = 0  #: absolute sample position of the next decoded sample of the stream
        self.lost_at_hello = 0
        self.ignoring = False  #: after a HELLO for another model, until the next HELLO
        self.task: asyncio.Task[None] | None = None
        self.made: asyncio.Future[CodeReceiver] | None = None  #: the receiver, made in the executor
        self.inflight: asyncio.Future[list[_Outcome]] | None = None  #: the executor call decoding now
        self.ready: asyncio.Future[None] | None = None  #: done once :meth:`attach` returned
        self.attached = False
        room.joining += 1  # the room is not released while the decoder is being admitted
        room.stats["browser_decoders"] += 1

    async def attach(self) -> None:
        """Join the room as one listener (admitted cluster-wide with a broker; its refusal is
        raised as a PacketError) and start decoding."""
        relay = self.bridge.server.relay
        try:
            if relay.broker is not None:
                refusal = await relay.broker.admit_listener(self.room)
                if refusal is not None:
                    raise PacketError(refusal[1], refusal[0])
            self.room.add_listener(self.tap)
            self.attached = True
        finally:
            self.room.joining -= 1
        self.task = asyncio.create_task(self.run())

    # -- listeners --------------------------------------------------------------------

    def add(self, listener: BrowserListener) -> None:
        """Welcome a page: its ``info``, and a mid-stream start at the next frame boundary."""
        if self.stream_started:
            frame = self.info.frame_size
            listener.start_at = -(-self.pos // frame) * frame
        self.listeners.add(listener)
        self.room.stats["browser_listeners_joined"] += 1
        listener.event(
            {
                "type": "info",
                "role": "listen",
                "room": self.room.name,
                "model": self.bridge.model_info,
                "publisher": self.room.publisher is not None,
                "stream": {
                    "open": self.stream_id is not None,
                    "stream_id": self.stream_id,
                    "start": listener.start_at or 0,
                },
                "server_time": time.time(),
            }
        )

    def _event(self, event: dict[str, Any]) -> None:
        text = json.dumps(event, separators=(",", ":"))
        for listener in list(self.listeners):
            listener.event(text)

    def _pcm(self, audio: np.ndarray, position: int) -> None:
        if not audio.size:
            return
        now = time.time()
        message = pcm_message(position, audio, now)
        for listener in list(self.listeners):
            listener.pcm(position, audio, message, now)
        self.bridge.server.counters["browser_samples_decoded"] += audio.size

    # -- decoding ---------------------------------------------------------------------

    async def run(self) -> None:
        """Decode the room's packets until the relay closes the room's listener (its code and
        reason then close the pages, after what they have queued) or :meth:`close`."""
        try:
            code, reason = await self._decode()
        except Exception:
            log.exception("room %s: browser decoder failed", self.room.name)
            code, reason = CloseCode.INTERNAL_ERROR, "internal server error"
        for listener in list(self.listeners):
            listener.finish(code, reason)

    async def _decode(self) -> tuple[int, str]:
        e = self.bridge.endpoints
        self.made = asyncio.ensure_future(
            e.run(
                CodeReceiver,
                e.model,
                e.seed,
                live_join=True,
                exact_end=True,
                max_packet=self.max_packet,
                session_factory=e.decode_session,
            )
        )
        self.receiver = await asyncio.shield(self.made)  # close() releases it even if cancelled here
        tap = self.tap
        while True:
            while not tap.queue and tap.close_request is None:
                tap.wakeup.clear()
                await tap.wakeup.wait()
            batch: list[bytes] = []
            while tap.queue and isinstance(tap.queue[0][0], bytes) and len(batch) < BATCH:
                batch.append(tap.queue.popleft()[0])  # type: ignore[arg-type]
            if batch:  # what queued up while the last batch was decoded: one executor call
                arrived = time.time()
                self.inflight = asyncio.ensure_future(e.run(self._decode_batch, batch))
                for outcome in await asyncio.shield(self.inflight):  # close() waits for it
                    self._emit(outcome, arrived)
                continue
            if not tap.queue:  # killed
                return tap.close_request or (1001, "")
            item = tap.queue.popleft()[0]  # the relay's close item: it shuts down
            return item.code, item.reason  # type: ignore[union-attr]

    def _decode_batch(self, batch: list[bytes]) -> list[_Outcome]:
        """Parse and decode packets in order (in the executor: blocking, runs the model)."""
        receiver = self.receiver
        assert receiver is not None
        out = []
        for data in batch:
            try:
                packet = decode_packet(data, self.info, self.max_packet)
            except PacketError as exc:
                out.append(_Outcome(data, None, error=None if self.ignoring else exc))
                continue
            if self.ignoring and not isinstance(packet, Hello):
                continue  # the rest of a stream for another model
            try:
                audio = receiver.on_packet(packet)
            except PacketError as exc:  # the receiver is unchanged: say so, go on
                self.ignoring = isinstance(packet, Hello)
                out.append(_Outcome(data, packet, error=exc))
                continue
            self.ignoring = False if isinstance(packet, Hello) else self.ignoring
            stream = receiver.stream
            end = stream.pos if stream is not None and isinstance(packet, CodePacket) else None
            out.append(_Outcome(data, packet, audio, receiver.stats.frames_lost, end))
        return out

    def _emit(self, o: _Outcome, arrived: float) -> None:
        """Tell the pages what one packet did (on the loop, in packet order)."""
        packet, audio = o.packet, o.audio
        if o.error is not None:
            self._event({"type": "error", "code": int(o.error.code), "message": str(o.error)})
            return
        if packet is None:
            return
        lost = o.frames_lost - self.lost_at_hello
        if isinstance(packet, Hello):
            self._pcm(audio, self.pos)  # the rest of an aborted stream
            self.stream_id, self.stream_started, self.pos = packet.stream_id, False, 0
            self.lost_at_hello = o.frames_lost
            self._event({"type": "hello", "stream_id": packet.stream_id})
        elif isinstance(packet, CodePacket):
            self.bridge.server.counters["browser_frames_decoded"] += packet.n_frames
            self.room.stats["browser_frames_decoded"] += packet.n_frames
            self._event(
                {
                    "type": "codes",
                    "first_frame": packet.first_frame,
                    "n_frames": packet.n_frames,
                    "levels": [c.tolist() for c in packet.codes],
                    "bytes": len(o.data),
                    "frames_lost": lost,
                    "server_time": arrived,  # when the room's decoder took the packet
                }
            )
            end = o.end if o.end is not None else self.pos + audio.size
            self.stream_started = o.end is not None
            self._pcm(audio, end - audio.size)
            self.pos = end
        else:
            self._pcm(audio, self.pos)
            self.pos += audio.size
            self.stream_id, self.stream_started = None, False
            if isinstance(packet, End):
                event = {
                    "type": "end",
                    "reason": packet.reason.name.lower(),
                    "total_frames": packet.total_frames,
                    "total_samples": packet.total_samples,
                    "frames_lost": lost,
                }
            else:
                assert isinstance(packet, ErrorPacket)
                event = {"type": "error", "code": packet.code, "message": packet.message, "ended": True}
            self._event(event)

    async def close(self) -> None:
        """Leave the room and release the decoder (the last page left)."""
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        if self.inflight is not None:  # the session is not closed under a running decode
            await asyncio.gather(self.inflight, return_exceptions=True)
        if self.attached:
            self.room.listeners.discard(self.tap)
            broker = self.bridge.server.relay.broker
            if broker is not None:
                broker.listener_left(self.room)
        if self.made is not None:
            await asyncio.gather(self.made, return_exceptions=True)
        made = self.made
        receiver = made.result() if made and not made.cancelled() and made.exception() is None else None
        if receiver is not None:
            close = getattr(receiver.session, "close", None)
            if close is not None:
                await self.bridge.endpoints.run(close)

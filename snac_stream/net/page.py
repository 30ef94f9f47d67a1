"""A listening page's WebSocket on the server: a bounded queue of JSON events and PCM messages.

Text messages are JSON events; binary messages are :data:`PCM_HEADER` (the absolute position
of the first sample, the server's send time) followed by int16 samples. The queue holds at most
``max_samples`` of PCM (the oldest PCM message gives way; the page sees the jump in position)
and ``max_messages`` messages (events never give way: the page is closed with 4016). The page
may send ``{"type": "ping", "t": ...}``, answered with a ``pong``. See docs/browser.md.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import struct
import time
from typing import Any

import numpy as np
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from snac_stream.audio.pcm import to_s16le
from snac_stream.protocol.packets import CloseCode

from .relay import close_draining

__all__ = ["PCM_HEADER", "PAGE_QUEUE_S", "pcm_message", "BrowserListener"]

log = logging.getLogger("snac_stream.net.page")

#: Binary message header: absolute position of the first sample (samples since the stream's
#: start, u64) and the server's Unix time when it was sent off (seconds, f64); little-endian.
PCM_HEADER = struct.Struct("<Qd")
MAX_TEXT = 1024  #: bytes of a text message a page may send (pings)
PAGE_QUEUE_S = 1.0  #: seconds of PCM a page may have waiting on the server (more: oldest dropped)


def pcm_message(position: int, samples: np.ndarray, server_time: float) -> bytes:
    """One binary message: :data:`PCM_HEADER` + ``samples`` (float) as int16 LE (x 32768)."""
    return PCM_HEADER.pack(position, server_time) + to_s16le(samples)


class _Close:
    def __init__(self, code: int, reason: str) -> None:
        self.code, self.reason = code, reason


class BrowserListener:
    """One page's WebSocket: a bounded queue drained by its own task.

    At most ``max_samples`` of PCM wait (beyond, the oldest PCM message is dropped, counted in
    ``samples_dropped``; the page sees the jump in position) and at most ``max_messages``
    messages (events are never dropped: a page that lets them pile up is closed with 4016).
    """

    def __init__(self, connection: ServerConnection, max_messages: int, max_samples: int) -> None:
        self.connection = connection
        self.max_messages = max_messages
        self.max_samples = max_samples
        self.queue: collections.deque[tuple[str | bytes | _Close, int]] = collections.deque()
        self.queued_samples = 0
        self.wakeup = asyncio.Event()
        self.start_at: int | None = None  #: first sample position to send (a mid-stream join)
        self.close_request: tuple[int, str] | None = None
        self.samples_sent = 0
        self.samples_dropped = 0

    def event(self, event: dict[str, Any] | str) -> None:
        """Queue a JSON event (a dict, or its JSON text when many pages get the same one)."""
        self._put(event if isinstance(event, str) else json.dumps(event, separators=(",", ":")), -1)

    def pcm(self, position: int, samples: np.ndarray, message: bytes | None, now: float) -> None:
        """Queue decoded samples starting at ``position`` (``message``: them, already framed)."""
        if self.start_at is not None:
            cut = self.start_at - position
            if cut >= samples.size:
                return
            if cut > 0:
                samples, position, message = samples[cut:], position + cut, None
            self.start_at = None
        if samples.size:
            self._put(message or pcm_message(position, samples, now), samples.size)

    def _put(self, item: str | bytes, samples: int) -> None:
        if self.close_request is not None:
            return
        self.queue.append((item, samples))
        self.queued_samples += max(samples, 0)
        while self.queued_samples > self.max_samples or len(self.queue) > self.max_messages:
            last = len(self.queue) - 1
            oldest = next((i for i, (_, n) in enumerate(self.queue) if n >= 0 and i < last), None)
            if oldest is None:
                if len(self.queue) > self.max_messages:
                    self.kill(CloseCode.SLOW_CONSUMER, f"page fell behind ({last + 1} messages queued)")
                    return
                break  # only the newest message is PCM: keep it
            n = self.queue[oldest][1]
            del self.queue[oldest]
            self.queued_samples -= n
            self.samples_dropped += n
        self.wakeup.set()

    def finish(self, code: int, reason: str) -> None:
        """Close after what is queued was sent."""
        self.queue.append((_Close(code, reason), -1))
        self.wakeup.set()

    def kill(self, code: int, reason: str) -> None:
        """Close now, discarding the queue."""
        if self.close_request is None:
            self.close_request = (code, reason)
        self.queue.clear()
        self.wakeup.set()

    async def _send_loop(self) -> None:
        while self.close_request is None:
            if not self.queue:
                self.wakeup.clear()
                await self.wakeup.wait()
                continue
            item, samples = self.queue.popleft()
            self.queued_samples -= max(samples, 0)
            if isinstance(item, _Close):
                self.close_request = (item.code, item.reason)
                return
            await self.connection.send(item)
            self.samples_sent += max(samples, 0)

    async def _recv_loop(self) -> None:
        async for message in self.connection:
            if isinstance(message, bytes):
                self.kill(CloseCode.UNEXPECTED_PACKET, "listeners must not send audio")
            elif len(message) > MAX_TEXT or _json_type(message) != "ping":
                self.kill(CloseCode.BAD_REQUEST, 'a listening page may only send {"type": "ping"}')
            else:
                ping = json.loads(message)
                self.event({"type": "pong", "t": ping.get("t"), "server_time": time.time()})
            if self.close_request is not None:
                return

    async def run(self) -> None:
        """Serve the page until it leaves or the listener is closed."""
        tasks = [asyncio.create_task(self._send_loop()), asyncio.create_task(self._recv_loop())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            for result in await asyncio.gather(*tasks, return_exceptions=True):
                if isinstance(result, Exception) and not isinstance(result, ConnectionClosed):
                    log.error("browser listener task failed", exc_info=result)
        if self.close_request is not None:
            await close_draining(self.connection, *self.close_request)


def _json_type(text: str) -> str | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value.get("type") if isinstance(value, dict) else None

"""The browser page and its WebSocket routes: listen to and talk into relay rooms from a page.

Browsers cannot run the model, so the server does it for them (see docs/browser.md)::

    GET /                          the page (static files of snac_stream/net/web/, /web/*)
    GET /browser/info              {"model": {...} | null, "token_required", "authorized", "rooms"}
    /browser/listen/NAME[?wait=1]  the room decoded once per room (room_audio.RoomAudio);
                                   text = JSON events, binary = position + int16 PCM
    /browser/talk/NAME[?format=s16le&rate=SR]
                                   PCM in -> the batched encoder -> CODES published into the room

Both WebSocket routes need ``--model`` and are limited as ``/encode`` is: the token,
``max_model_sessions`` (a room's decoder and each talking page count as one), and for
talk the ``model_rate``/``model_burst`` token bucket, ``max_message_size`` and
``idle_timeout``. The page's URL parameters: ``room``, ``listen=1``, ``talk=1``, ``token``,
``wait=1``, ``prebuffer`` (ms), ``maxbuffer`` (ms).
"""

from __future__ import annotations

import asyncio
import importlib.resources
import json
import secrets
import time
from typing import Any

import numpy as np
import torch
from websockets.asyncio.server import ServerConnection

from snac_stream.engine.latency import decoder_latency, encoder_latency
from snac_stream.protocol.packets import CloseCode, Hello, PacketError, encode_packet

from .endpoints import CodeStream, TokenBucket
from .page import PAGE_QUEUE_S, BrowserListener
from .relay import ROOM_NAME, Room
from .room_audio import RoomAudio

__all__ = ["WEB_FILES", "BrowserBridge", "add_browser", "static_files"]

#: Content types of the page's files, by suffix.
WEB_FILES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
}


def static_files() -> dict[str, tuple[str, bytes]]:
    """URL path -> (content type, bytes) of the page: ``/`` and ``/web/NAME`` for every file."""
    root = importlib.resources.files("snac_stream.net") / "web"
    files: dict[str, tuple[str, bytes]] = {}
    for entry in root.iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        if entry.is_file() and suffix in WEB_FILES:
            files[f"/web/{entry.name}"] = (WEB_FILES[suffix], entry.read_bytes())
    files["/"] = files["/web/index.html"]
    return files


def model_json(model) -> dict[str, Any]:
    """What the page shows of the model (rates in Hz, sizes in samples)."""
    return {
        **model.describe(),
        "frame_size": int(model.frame_size),
        "codes_per_level": [int(model.vq_strides[0] // s) for s in model.vq_strides],
        "fingerprint": model.fingerprint().hex(),
    }


def latency_json(model) -> dict[str, float]:
    """The model's algorithmic latencies in ms (seconds to compute: off the event loop)."""
    return {"encoder_latency_ms": encoder_latency(model).ms, "decoder_latency_ms": decoder_latency(model).ms}


class BrowserBridge:
    """The listen and talk handlers for one server and its model endpoints."""

    def __init__(self, server, endpoints) -> None:
        self.server = server
        self.endpoints = endpoints
        self._model_info = model_json(endpoints.model)
        self._latency = server.executor.submit(latency_json, endpoints.model)
        self.rooms: dict[str, RoomAudio] = {}
        server.on_shutdown(self.shutdown)

    @property
    def model_info(self) -> dict[str, Any]:
        """:func:`model_json`, with :func:`latency_json` once it is computed."""
        if self._latency.done() and not self._latency.cancelled() and self._latency.exception() is None:
            self._model_info.update(self._latency.result())
        return self._model_info

    # -- shared -------------------------------------------------------------------------

    def _room_name(self, request: Any) -> str:
        name = request.subpath
        if not ROOM_NAME.match(name):
            raise PacketError("room name must match [A-Za-z0-9_.-]{1,64}", CloseCode.BAD_REQUEST)
        return name

    def _model_session(self) -> None:
        """Take one of ``max_model_sessions`` (4024 when none is left); release with ``_done``."""
        c = self.server.config
        if self.endpoints.active >= c.max_model_sessions:
            self.server.counters["model_rejected_busy"] += 1
            raise PacketError(f"server runs {c.max_model_sessions} model sessions", CloseCode.SERVER_BUSY)
        self.endpoints.active += 1

    def _done(self) -> None:
        self.endpoints.active -= 1

    def _join(self, name: str) -> Room:
        room = self.server.relay.join(name)
        if room is None:
            self.server.counters["rejected_too_many_rooms"] += 1
            raise PacketError(f"server has {self.server.config.max_rooms} rooms", CloseCode.TOO_MANY_ROOMS)
        return room

    # -- listen -------------------------------------------------------------------------

    async def handle_listen(self, connection: ServerConnection, request: Any) -> None:
        name = self._room_name(request)
        c = self.server.config
        while True:
            audio = self.rooms.get(name)
            if audio is None:
                audio = self._room_audio(name, request.query.get("wait") in ("1", "true"))
            elif len(audio.listeners) >= c.max_listeners_per_room:
                raise PacketError(
                    f"room {name} has {c.max_listeners_per_room} listeners", CloseCode.ROOM_FULL
                )
            await asyncio.shield(audio.ready)  # a refusal (e.g. by the broker) reaches every page waiting
            if self.rooms.get(name) is audio:  # not closed meanwhile by the last page leaving
                break
        listener = BrowserListener(
            connection, 4 * c.listener_queue, int(PAGE_QUEUE_S * audio.info.sample_rate)
        )
        audio.add(listener)
        self.server.counters["browser_listeners"] += 1
        try:
            await listener.run()
        finally:
            audio.listeners.discard(listener)
            self.server.counters["browser_samples_dropped"] += listener.samples_dropped
            if not audio.listeners and self.rooms.get(name) is audio:
                await self._release(audio)

    def _room_audio(self, name: str, wait: bool) -> RoomAudio:
        """Start decoding room ``name`` for its first page (one model session)."""
        relay, c = self.server.relay, self.server.config
        if not wait and relay.broker is None and name not in relay.rooms:
            raise PacketError(
                f"unknown room {name!r}: nobody publishes or listens there (add &wait=1 to wait)",
                CloseCode.UNKNOWN_ROOM,
            )
        room = self._join(name)
        if len(room.listeners) >= c.max_listeners_per_room:
            relay.leave(room)
            raise PacketError(f"room {name} has {c.max_listeners_per_room} listeners", CloseCode.ROOM_FULL)
        try:
            self._model_session()
        except PacketError:
            relay.leave(room)
            raise
        audio = self.rooms[name] = RoomAudio(self, room)
        audio.ready = asyncio.ensure_future(self._attach(audio))
        self.server.counters["browser_room_decoders"] += 1
        return audio

    async def _attach(self, audio: RoomAudio) -> None:
        try:
            await audio.attach()
        except BaseException:
            if self.rooms.get(audio.room.name) is audio:
                del self.rooms[audio.room.name]
            self._done()
            self.server.relay.leave(audio.room)
            raise

    async def _release(self, audio: RoomAudio) -> None:
        """The room's last page left: stop decoding it."""
        del self.rooms[audio.room.name]
        try:
            await audio.close()
        finally:
            self._done()
            self.server.relay.leave(audio.room)

    # -- talk ---------------------------------------------------------------------------

    async def handle_talk(self, connection: ServerConnection, request: Any) -> None:
        name = self._room_name(request)
        dtype = self.endpoints.pcm_dtype(request.query, "s16le")
        relay = self.server.relay
        room = self._join(name)
        try:
            self._model_session()
            try:
                refusal = await relay.claim_publisher(room, connection)
                if refusal is not None:
                    raise PacketError(refusal[1], refusal[0])
                self.server.counters["browser_talkers"] += 1
                try:
                    await self._talk(connection, room, dtype)
                finally:
                    relay.release_publisher(room, connection)
            finally:
                self._done()
        finally:
            relay.leave(room)

    async def _talk(self, connection: ServerConnection, room: Room, dtype: np.dtype) -> None:
        e, c = self.endpoints, self.server.config
        bucket = TokenBucket(c.model_rate, c.model_burst)
        session = await e.run(e.encode_session, e.model)
        try:
            stream = CodeStream(secrets.randbits(32))
            await connection.send(
                json.dumps({"type": "info", "role": "talk", "room": room.name, "model": self.model_info})
            )
            room.publish(encode_packet(Hello(e.info, stream.stream_id)))
            await connection.send(json.dumps({"type": "hello", "stream_id": stream.stream_id}))

            async def publish(codes: list[torch.Tensor], samples: int) -> None:
                """The new frames one per packet (live), and their codes to the page."""
                for packet in stream.packets(codes, e.info, 1):
                    data = encode_packet(packet, e.info)
                    room.publish(data)
                    event = {
                        "type": "codes",
                        "first_frame": packet.first_frame,
                        "n_frames": packet.n_frames,
                        "levels": [c.tolist() for c in packet.codes],
                        "bytes": len(data),
                        "samples_in": samples,
                        "server_time": time.time(),
                    }
                    await connection.send(json.dumps(event, separators=(",", ":")))

            samples = await e.encode_messages(connection, session, dtype, bucket, publish)
            room.publish(encode_packet(stream.end(samples)))
            await connection.send(
                json.dumps({"type": "end", "total_frames": stream.frames, "total_samples": samples})
            )
            await connection.close(1000, "")
        finally:
            close = getattr(session, "close", None)
            if close is not None:
                close()

    # -- lifecycle ----------------------------------------------------------------------

    async def shutdown(self) -> None:
        """Wait (``shutdown_grace``) for the room decoders to pass on the relay's END(SHUTDOWN)."""
        tasks = [a.task for a in self.rooms.values() if a.task is not None and not a.task.done()]
        if tasks:
            await asyncio.wait(tasks, timeout=self.server.config.shutdown_grace)


def add_browser(server, endpoints=None) -> BrowserBridge | None:
    """Serve the page at ``/`` on ``server``; with model ``endpoints`` (from
    :func:`~snac_stream.net.endpoints.add_model_endpoints`) also its listen/talk routes."""
    files = static_files()
    for path, (content_type, data) in files.items():
        server.add_page_route(path, lambda req, ct=content_type, body=data: (200, ct, body))

    def info(req) -> tuple[int, Any]:
        rooms = server.relay.snapshot() if server.authorized(req) else None
        return 200, {
            "model": bridge.model_info if bridge is not None else None,
            "token_required": server.config.token is not None,
            "authorized": server.authorized(req),
            "rooms": rooms,
        }

    bridge = BrowserBridge(server, endpoints) if endpoints is not None else None
    server.add_http_route("/browser/info", info)
    if bridge is not None:
        server.add_route("/browser/listen/", bridge.handle_listen)
        server.add_route("/browser/talk/", bridge.handle_talk)
    return bridge

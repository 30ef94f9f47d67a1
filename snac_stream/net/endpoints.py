"""Model-running WebSocket endpoints: ``/encode`` (PCM in, codes out) and ``/decode``.

For thin clients that cannot run the model: the server runs one streaming state per
connection, in the endpoints' own threads (one per possible session; never on the event
loop), one message at a time per connection (so a connection buffers at most
``recv_queue`` messages, then TCP pushes back). See docs/protocol.md §4.

::

    /encode?format=f32le|s16le&rate=SR
      client ── PCM, PCM, ..., b"" ──►  check size/format, token bucket
                                        └► executor: EncodeSession.push / .flush
      client ◄── HELLO, CODES..., END(total_samples), close 1000

    /decode
      client ── HELLO, CODES..., END ─►  decode_header (limits, order), token bucket
                                        └► executor: decode_body, CodeReceiver.on_packet
                                              └► DecodeSession.push / .flush / .reset
      client ◄── PCM float32 LE ..., (tail trimmed to total_samples), close 1000

:class:`EncodeSession` and :class:`~snac_stream.net.receiver.DecodeSession` are the only places
the model runs; pass other factories to :func:`add_model_endpoints` to swap in a batched
multi-stream engine.

Limits (``ServerConfig``): ``max_model_sessions`` concurrent connections over both
endpoints (more: 4024 SERVER_BUSY), a per-connection token bucket of ``model_rate`` audio
seconds per second with ``model_burst`` seconds of burst (exceeded: 4023 RATE_LIMITED),
``max_message_size`` bytes per message (4002), ``idle_timeout`` (4017), and the server's
``max_connections`` and token.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from websockets.asyncio.server import ServerConnection

from snac_stream.engine.encoder import StreamingEncoder
from snac_stream.protocol.packets import (
    CloseCode,
    CodePacket,
    End,
    Hello,
    Kind,
    ModelInfo,
    PacketError,
    PacketHeader,
    decode_body,
    decode_header,
    encode_packet,
    split_codes,
)

from .receiver import CodeReceiver, DecodeSession
from .server import run_in

__all__ = [
    "PCM_FORMATS",
    "TokenBucket",
    "EncodeSession",
    "ModelEndpoints",
    "add_model_endpoints",
]

log = logging.getLogger("snac_stream.net.endpoints")

#: ``format`` query values of /encode and their sample types.
PCM_FORMATS: dict[str, np.dtype] = {"f32le": np.dtype("<f4"), "s16le": np.dtype("<i2")}


class TokenBucket:
    """``rate`` units per second, at most ``burst`` saved up; starts full."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.clock = float(rate), float(burst), clock
        self.tokens = self.burst
        self.stamp = clock()

    def take(self, amount: float) -> bool:
        """Spend ``amount`` if available (True); otherwise spend nothing (False)."""
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if amount > self.tokens + 1e-9:
            return False
        self.tokens -= amount
        return True


class EncodeSession:
    """One stream's encoder: ``push(samples)`` / ``flush()`` -> per-level 1-D code tensors.

    ``samples`` is a 1-D float32 array at the model's rate. Blocking (runs the model).
    """

    def __init__(self, model) -> None:
        self.model = model
        self.encoder = StreamingEncoder(model)

    def push(self, samples: np.ndarray) -> list[torch.Tensor]:
        audio = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32)).reshape(1, 1, -1)
        return [c[0] for c in self.encoder.push(audio.to(self.model.dtype))]

    def flush(self) -> list[torch.Tensor]:
        return [c[0] for c in self.encoder.flush()]


def pcm_samples(message: bytes, dtype: np.dtype) -> np.ndarray:
    """float32 samples of one PCM message of ``dtype`` (``PCM_FORMATS``; int16 / 32768); 4022
    BAD_PCM for a length that is not a whole number of samples or NaN/inf floats."""
    if len(message) % dtype.itemsize:
        raise PacketError(
            f"message of {len(message)} bytes is not a whole number of {dtype.itemsize}-byte samples",
            CloseCode.BAD_PCM,
        )
    pcm = np.frombuffer(message, dtype=dtype)
    if dtype.kind == "f":
        if not np.isfinite(pcm).all():
            raise PacketError("PCM contains NaN or infinite samples", CloseCode.BAD_PCM)
        return pcm.astype(np.float32)
    return pcm.astype(np.float32) / 32768.0


def query_int(query: Any, name: str, default: int, lo: int, hi: int) -> int:
    """Integer query parameter ``name`` in ``lo..hi`` (4018 otherwise), ``default`` when absent."""
    raw = query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise PacketError(f"query parameter {name} must be an integer", CloseCode.BAD_REQUEST) from None
    if not lo <= value <= hi:
        raise PacketError(f"query parameter {name} must be in {lo}..{hi}", CloseCode.BAD_REQUEST)
    return value


@dataclass
class CodeStream:
    """A stream of CODES packets being written: its id and what was sent so far."""

    stream_id: int
    seq: int = 0  #: packets sent
    frames: int = 0  #: coarse frames sent

    def packets(self, codes: list[torch.Tensor], info: ModelInfo, max_frames: int) -> list[CodePacket]:
        """``codes`` (per level ``[k_i]``) as the next packets of at most ``max_frames`` frames."""
        if not codes or codes[0].numel() == 0:
            return []
        packets = split_codes(
            codes, info, max_frames, stream_id=self.stream_id, first_seq=self.seq, first_frame=self.frames
        )
        self.seq += len(packets)
        self.frames += sum(p.n_frames for p in packets)
        return packets

    def end(self, samples: int) -> End:
        return End(self.stream_id, self.seq, self.frames, samples)


class ModelEndpoints:
    """The /encode and /decode handlers for one model (see :func:`add_model_endpoints`)."""

    def __init__(
        self,
        server,
        model,
        *,
        seed: int | None = 0,
        encode_session: Callable[[Any], EncodeSession] = EncodeSession,
        decode_session: Callable[..., DecodeSession] = DecodeSession,
        pools: Sequence[Any] = (),
    ) -> None:
        self.server = server
        self.model = model
        self.seed = seed
        self.info = ModelInfo.from_model(model)
        self.encode_session = encode_session
        self.decode_session = decode_session
        self.active = 0  #: model sessions running now (both endpoints)
        c = server.config
        # CODES packets of /encode: as many frames as fit in max_message_size.
        bits = self.info.codes_per_frame * self.info.bits_per_code
        self.max_frames_per_packet = max(1, min(0xFFFF, (c.max_message_size - 16) * 8 // bits))
        self.pcm_chunk = max(1, c.max_message_size // 4)  #: samples per PCM message of /decode
        # One thread per possible session: a batched session's call mostly waits for its
        # shard, and must not hold up the other sessions' calls (nor the server's executor).
        self.executor = server.new_executor(c.max_model_sessions, "snac-model-session")
        self.pools = list(pools)  #: batched engines these endpoints own (see :meth:`close`)

    def close(self) -> None:
        """Stop the batched engines' threads; model calls still waiting fail. Blocking."""
        for pool in self.pools:
            pool.close()

    async def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``await fn(*args, **kwargs)`` in this endpoint's session threads."""
        return await run_in(self.executor, fn, *args, **kwargs)

    # -- shared ---------------------------------------------------------------------------

    def _open(self, request: Any, kind: str) -> TokenBucket:
        if request.subpath not in ("", "/"):
            raise PacketError(f"unknown path {request.path}", CloseCode.BAD_REQUEST)
        c = self.server.config
        if self.active >= c.max_model_sessions:
            self.server.counters["model_rejected_busy"] += 1
            raise PacketError(f"server runs {c.max_model_sessions} model sessions", CloseCode.SERVER_BUSY)
        self.server.counters[f"{kind}_sessions"] += 1
        return TokenBucket(c.model_rate, c.model_burst)

    def spend(self, bucket: TokenBucket, samples: int) -> None:
        """Take ``samples`` of audio from the rate limit (4023 when over it)."""
        seconds = samples / self.info.sample_rate
        if not bucket.take(seconds):
            self.server.counters["model_rate_limited"] += 1
            c = self.server.config
            raise PacketError(
                f"over the limit of {c.model_rate:g} s of audio per second (burst {c.model_burst:g} s)",
                CloseCode.RATE_LIMITED,
            )

    async def recv(self, connection: ServerConnection) -> bytes:
        """The next binary message (text: 4010, silence: 4017, too large: 4002)."""
        c = self.server.config
        try:
            async with asyncio.timeout(c.idle_timeout):
                message = await connection.recv()
        except TimeoutError:
            raise PacketError(f"no message for {c.idle_timeout:g} s", CloseCode.IDLE_TIMEOUT) from None
        if isinstance(message, str):
            raise PacketError("text frame on a binary endpoint", CloseCode.TEXT_FRAME)
        if len(message) > c.max_message_size:
            raise PacketError(
                f"message is {len(message)} bytes, limit {c.max_message_size}", CloseCode.OVERSIZED
            )
        return message

    # -- /encode ----------------------------------------------------------------------------

    def pcm_dtype(self, query: Any, default_format: str) -> np.dtype:
        """The PCM sample type a request asks for (``format``; 4019 if unknown), its ``rate``
        checked against the model's (4020)."""
        fmt = query.get("format", default_format)
        dtype = PCM_FORMATS.get(fmt)
        if dtype is None:
            raise PacketError(
                f"format {fmt!r} is not one of {', '.join(PCM_FORMATS)}", CloseCode.UNSUPPORTED_FORMAT
            )
        rate = query_int(query, "rate", self.info.sample_rate, 1, 2**32 - 1)
        if rate != self.info.sample_rate:
            raise PacketError(
                f"rate {rate} Hz: this model takes {self.info.sample_rate} Hz mono PCM (resample first)",
                CloseCode.RATE_MISMATCH,
            )
        return dtype

    async def encode_messages(
        self,
        connection: ServerConnection,
        session,
        dtype: np.dtype,
        bucket: TokenBucket,
        emit: Callable[[list[torch.Tensor], int], Awaitable[None]],
    ) -> int:
        """Encode ``connection``'s PCM messages until an empty one (the end of the audio):
        ``await emit(codes, samples_so_far)`` after each push and after the flush, off the
        event loop. Returns the samples taken."""
        samples = 0
        while True:
            message = await self.recv(connection)
            if not message:
                break
            pcm = pcm_samples(message, dtype)
            self.spend(bucket, pcm.size)
            samples += pcm.size
            self.server.counters["encode_samples_in"] += pcm.size
            await emit(await self.run(session.push, pcm), samples)
        await emit(await self.run(session.flush), samples)
        return samples

    async def handle_encode(self, connection: ServerConnection, request: Any) -> None:
        dtype = self.pcm_dtype(request.query, "f32le")
        stream_id = query_int(request.query, "stream_id", secrets.randbits(32), 0, 2**32 - 1)
        bucket = self._open(request, "encode")
        self.active += 1
        try:
            session = await self.run(self.encode_session, self.model)
            try:
                await self._encode_stream(connection, session, dtype, CodeStream(stream_id), bucket)
            finally:
                _close(session)
        finally:
            self.active -= 1

    async def _encode_stream(
        self, connection: ServerConnection, session, dtype: np.dtype, stream: CodeStream, bucket: TokenBucket
    ) -> None:
        await connection.send(encode_packet(Hello(self.info, stream.stream_id)))

        async def send(codes: list[torch.Tensor], samples: int) -> None:
            for packet in stream.packets(codes, self.info, self.max_frames_per_packet):
                await connection.send(encode_packet(packet, self.info))

        samples = await self.encode_messages(connection, session, dtype, bucket, send)
        await connection.send(encode_packet(stream.end(samples)))
        self.server.counters["encode_streams_completed"] += 1
        await connection.close(1000, "")

    # -- /decode ----------------------------------------------------------------------------

    async def handle_decode(self, connection: ServerConnection, request: Any) -> None:
        bucket = self._open(request, "decode")
        self.active += 1
        try:
            await self._decode(connection, bucket)
        finally:
            self.active -= 1

    async def _decode(self, connection: ServerConnection, bucket: TokenBucket) -> None:
        server, info = self.server, self.info
        limit = server.config.max_message_size
        receiver = await self.run(
            CodeReceiver,
            self.model,
            self.seed,
            live_join=False,
            exact_end=True,
            max_packet=limit,
            session_factory=self.decode_session,
        )
        hello_seen = False
        try:
            while True:
                message = await self.recv(connection)
                head = decode_header(message, info if hello_seen else None, limit)
                if head.kind is Kind.HELLO and hello_seen:
                    raise PacketError(
                        "one stream per /decode connection: HELLO after HELLO", CloseCode.UNEXPECTED_PACKET
                    )
                if head.kind in (Kind.CODES, Kind.END) and not hello_seen:
                    raise PacketError(f"{head.kind.name} packet before HELLO", CloseCode.UNEXPECTED_PACKET)
                if head.kind is Kind.CODES:
                    self.spend(bucket, head.n_frames * info.frame_size)
                    server.counters["decode_frames_in"] += head.n_frames
                audio = await self.run(_receive, receiver, message, head, info)
                hello_seen = hello_seen or head.kind is Kind.HELLO
                await self._send_pcm(connection, audio)
                if head.kind is Kind.END:
                    server.counters["decode_streams_completed"] += 1
                    break
                if head.kind is Kind.ERROR:  # the client gave up on its stream
                    await self._send_pcm(connection, await self.run(receiver.close))
                    break
        finally:
            _close(receiver.session)
            s = receiver.stats
            server.counters["decode_frames_concealed"] += s.frames_lost
            server.counters["decode_packets_late"] += s.packets_late
        await connection.close(1000, "")

    async def _send_pcm(self, connection: ServerConnection, audio: np.ndarray) -> None:
        data = np.ascontiguousarray(audio, dtype="<f4")
        for start in range(0, data.size, self.pcm_chunk):
            await connection.send(data[start : start + self.pcm_chunk].tobytes())


def _receive(receiver: CodeReceiver, message: bytes, head: PacketHeader, info: ModelInfo) -> np.ndarray:
    """The packet whose header the handler read, parsed to the end and decoded (blocking)."""
    return receiver.on_packet(decode_body(message, head, info))


def _close(session) -> None:
    """Release a session's stream in a shared engine (batched sessions); a no-op otherwise."""
    close = getattr(session, "close", None)
    if close is not None:
        close()


def add_model_endpoints(
    server,
    model,
    *,
    seed: int | None = 0,
    encode_path: str = "/encode",
    decode_path: str = "/decode",
    encode_session: Callable[[Any], EncodeSession] | None = None,
    decode_session: Callable[..., DecodeSession] | None = None,
) -> ModelEndpoints:
    """Serve ``/encode`` and ``/decode`` for ``model`` (eval mode) on ``server``.

    ``seed`` keys the decoder noise (``/decode`` output equals ``model.decode(codes,
    seed=seed)``); ``None`` draws fresh noise. ``encode_session(model)`` and
    ``decode_session(model, seed)`` make the per-connection model sessions. Limits come
    from ``server.config`` (``max_model_sessions``, ``model_rate``, ``model_burst``, ...).
    Returns the :class:`ModelEndpoints` (its ``active`` counts running sessions).
    By default the sessions share batched multi-stream engines: concurrent connections in the
    same phase run as one batch, on ``engine_workers`` shards per endpoint (default: one per
    core; see :mod:`snac_stream.engine.batcher`); the server closes them when it stops.
    """
    from snac_stream.engine.batcher import BatchedDecodeSession, BatchedEncodeSession, BatcherPool
    from snac_stream.engine.multistream import MultiStreamDecoder, MultiStreamEncoder

    c = server.config
    pools: list[BatcherPool] = []
    if encode_session is None:
        encoder = BatcherPool(MultiStreamEncoder(model, c.max_model_sessions), c.engine_workers or None)
        pools.append(encoder)
        encode_session = lambda _model: encoder.open(BatchedEncodeSession)  # noqa: E731
    if decode_session is None:
        decoder = BatcherPool(MultiStreamDecoder(model, c.max_model_sessions), c.engine_workers or None)
        pools.append(decoder)
        decode_session = lambda _model, seed: decoder.open(lambda b: BatchedDecodeSession(b, seed))  # noqa: E731
    endpoints = ModelEndpoints(
        server, model, seed=seed, encode_session=encode_session, decode_session=decode_session, pools=pools
    )
    server.add_route(encode_path, endpoints.handle_encode)
    server.add_route(decode_path, endpoints.handle_decode)
    server.on_stopped(endpoints.close)
    return endpoints

"""End to end over a real loopback WebSocket: sender -> relay room -> listener, N at once.

Per stream: a sender thread plays the audio in real time (sleeps to the audio clock,
``block`` samples at a time, like an audio callback), pushes it through a
StreamingEncoder, packs each push's new coarse frames with ``packets.encode_packet`` and
hands the bytes to the event loop, where ``client.publish`` sends them to the relay
(``snac_stream.net.server.Server`` on 127.0.0.1, port 0). ``client.listen`` receives them in
the same loop and queues the codes for a decoder thread (StreamingDecoder, seed 0): no
inference runs on the event loop thread. Every step is timestamped with one clock
(``perf_counter``, after a CUDA sync on GPU).

Per output sample n (captured at ``c(n) = t0 + (n+1)/sr``), released by a decoder push
that started at T4 and ended at T5, with g the coarse frame whose codes it needs last
(from the decoder's ``need``), frame g having been emitted by an encoder push that
started at T1 when the audio up to ``c_trig(g)`` had been captured, ended at T2, and
received by the listener at R::

    algorithmic  = c_trig(g) - c(n)     waiting for future audio (lookahead + block rounding)
    capture      = T1 - c_trig(g)       sender thread late (scheduling, backlog)
    encode       = T2 - T1              encoder compute
    transport    = R - T2               packing, loop hand-off, relay, loopback TCP, parsing
    queue        = T4 - R               waiting for the decoder thread
    decode       = T5 - T4              decoder compute (and the copy to the host)
    total        = T5 - c(n)            = the sum

``buffering`` is capture + queue. Samples released by a flush (the end of the stream)
and past the original length are not counted.
"""

from __future__ import annotations

import asyncio
import math
import queue
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .bench_common import Clock, percentiles

COMPONENTS = ("algorithmic", "capture", "encode", "transport", "queue", "decode")


@dataclass
class SenderLog:
    # per coarse frame
    trig_samples: list[int] = field(default_factory=list)  # samples captured when it was emitted
    t_start: list[float] = field(default_factory=list)  # T1
    t_encoded: list[float] = field(default_factory=list)  # T2
    flushed: list[bool] = field(default_factory=list)
    packets: list[int] = field(default_factory=list)  # bytes of every packet sent (HELLO..END)
    codes_packets: list[int] = field(default_factory=list)  # bytes of CODES packets
    codes: list[list[torch.Tensor]] = field(default_factory=list)
    error: BaseException | None = None


@dataclass
class ListenerLog:
    t_recv: dict[int, float] = field(default_factory=dict)  # frame -> R
    packets: list[int] = field(default_factory=list)
    # decoder pushes: (T4, T5, first sample, n samples, last frame included, is_flush)
    pushes: list[tuple[float, float, int, int, int, bool]] = field(default_factory=list)
    audio: list[torch.Tensor] = field(default_factory=list)
    total_samples: int | None = None
    max_backlog: int = 0
    error: BaseException | None = None


class _Stream:
    def __init__(self, index: int, model, audio: torch.Tensor, block: int, clock: Clock, info):
        from snac_stream import StreamingDecoder, StreamingEncoder

        self.index = index
        self.room = f"bench-{index}"
        self.model = model
        self.audio = audio
        self.block = block
        self.clock = clock
        self.info = info
        self.encoder = StreamingEncoder(model)
        self.decoder = StreamingDecoder(model, seed=0)
        self.send: SenderLog = SenderLog()
        self.recv: ListenerLog = ListenerLog()
        self.out_q: asyncio.Queue | None = None
        self.work_q: queue.Queue = queue.Queue()
        self.t0 = 0.0

    # -- sender thread --------------------------------------------------------------

    def sender(self, loop: asyncio.AbstractEventLoop) -> None:
        from snac_stream.protocol.packets import CodePacket, End, encode_packet

        log, clock, sr = self.send, self.clock, self.model.sample_rate
        seq = frame = 0

        def emit(codes, captured: int, t1: float, t2: float, flushed: bool) -> None:
            nonlocal seq, frame
            k = int(codes[0].shape[-1])
            if k == 0:
                return
            for _ in range(k):
                log.trig_samples.append(captured)
                log.t_start.append(t1)
                log.t_encoded.append(t2)
                log.flushed.append(flushed)
            log.codes.append([c.cpu() for c in codes])
            data = encode_packet(CodePacket(self.index, seq, frame, [c[0] for c in codes]), self.info)
            seq += 1
            frame += k
            log.packets.append(len(data))
            log.codes_packets.append(len(data))
            loop.call_soon_threadsafe(self.out_q.put_nowait, data)

        try:
            length = self.audio.shape[-1]
            for start in range(0, length, self.block):
                stop = min(start + self.block, length)
                delay = self.t0 + stop / sr - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                t1 = clock()
                codes = self.encoder.push(self.audio[..., start:stop])
                emit(codes, stop, t1, clock(), False)
            t1 = clock()
            codes = self.encoder.flush()
            emit(codes, length, t1, clock(), True)
            end = encode_packet(End(self.index, seq, frame, length))
            log.packets.append(len(end))
            loop.call_soon_threadsafe(self.out_q.put_nowait, end)
        except BaseException as e:  # reported by the caller
            log.error = e
        finally:
            loop.call_soon_threadsafe(self.out_q.put_nowait, None)

    async def packets(self):
        from snac_stream.protocol.packets import Hello, encode_packet

        hello = encode_packet(Hello(self.info, self.index))
        self.send.packets.append(len(hello))
        yield hello
        while True:
            data = await self.out_q.get()
            if data is None:
                return
            yield data

    # -- listener ---------------------------------------------------------------------

    async def listen(self, url: str) -> None:
        from snac_stream.net.client import listen, room_url
        from snac_stream.protocol.packets import CodePacket, End, ErrorPacket

        stream = listen(room_url(url, self.room, "listen"), expect_info=self.info)
        seen = 0
        try:
            async for packet in stream:
                t = time.perf_counter()
                self.recv.packets.append(stream.stats.bytes - seen)
                seen = stream.stats.bytes
                if isinstance(packet, CodePacket):
                    for f in range(packet.first_frame, packet.first_frame + packet.n_frames):
                        self.recv.t_recv[f] = t
                    codes = [c.view(1, -1).to(self.model.device) for c in packet.codes]
                    self.work_q.put(("codes", codes, packet.first_frame + packet.n_frames - 1))
                    self.recv.max_backlog = max(self.recv.max_backlog, self.work_q.qsize())
                elif isinstance(packet, End):
                    self.work_q.put(("end", packet.total_samples, None))
                    return
                elif isinstance(packet, ErrorPacket):
                    raise RuntimeError(f"relay error {packet.code}: {packet.message}")
        finally:
            await stream.aclose()

    # -- decoder thread ---------------------------------------------------------------

    def decoder_worker(self) -> None:
        log, clock, dec = self.recv, self.clock, self.decoder
        released = 0
        try:
            while True:
                items = [self.work_q.get()]
                while True:  # decode everything that has arrived in one push
                    try:
                        items.append(self.work_q.get_nowait())
                    except queue.Empty:
                        break
                codes_items = [it for it in items if it[0] == "codes"]
                if codes_items:
                    t4 = clock()
                    codes = [
                        torch.cat(level, dim=-1) for level in zip(*(it[1] for it in codes_items), strict=True)
                    ]
                    audio = dec.push(codes).cpu()
                    t5 = clock()
                    log.pushes.append((t4, t5, released, audio.shape[-1], codes_items[-1][2], False))
                    log.audio.append(audio)
                    released += audio.shape[-1]
                ends = [it for it in items if it[0] == "end"]
                if ends:
                    t4 = clock()
                    audio = dec.flush().cpu()
                    t5 = clock()
                    log.pushes.append((t4, t5, released, audio.shape[-1], -1, True))
                    log.audio.append(audio)
                    log.total_samples = ends[0][1]
                    return
        except BaseException as e:
            log.error = e

    # -- analysis ---------------------------------------------------------------------

    def components(self) -> dict[str, np.ndarray]:
        """Per-sample latency components (seconds), counted samples only."""
        s, r, m = self.send, self.recv, self.model
        sr, s0 = m.sample_rate, m.vq_strides[0]
        total = r.total_samples or 0
        n_frames = len(s.trig_samples)
        trig = np.asarray(s.trig_samples, dtype=np.float64)
        t1, t2 = np.asarray(s.t_start), np.asarray(s.t_encoded)
        flushed = np.asarray(s.flushed, dtype=bool)
        recv = np.asarray([r.t_recv.get(f, np.nan) for f in range(n_frames)])
        out = {k: [] for k in (*COMPONENTS, "total")}
        for t4, t5, first, count, last_frame, is_flush in r.pushes:
            if is_flush or count == 0:
                continue
            n = np.arange(first, min(first + count, total))
            if n.size == 0:
                continue
            ticks = self.decoder.layers.need(n)
            g = np.minimum(np.maximum(-(-ticks // s0) - 1, 0), last_frame)
            keep = ~flushed[g]
            n, g = n[keep], g[keep]
            capture = self.t0 + (n + 1) / sr
            trig_t = self.t0 + trig[g] / sr
            out["algorithmic"].append(trig_t - capture)
            out["capture"].append(t1[g] - trig_t)
            out["encode"].append(t2[g] - t1[g])
            out["transport"].append(recv[g] - t2[g])
            out["queue"].append(t4 - recv[g])
            out["decode"].append(np.full(n.size, t5 - t4))
            out["total"].append(t5 - capture)
        return {k: np.concatenate(v) if v else np.zeros(0) for k, v in out.items()}


async def _run(model, audio: torch.Tensor, n_streams: int, block: int, device: str, timeout: float) -> dict:
    from snac_stream.net.client import publish, room_url
    from snac_stream.net.server import Server, ServerConfig
    from snac_stream.protocol.packets import ModelInfo

    clock = Clock(device)
    info = ModelInfo.from_model(model)
    loop = asyncio.get_running_loop()
    streams = [_Stream(i, model, audio, block, clock, info) for i in range(n_streams)]
    for st in streams:
        st.out_q = asyncio.Queue()
    config = ServerConfig(port=0, idle_timeout=max(60.0, timeout), max_rooms=max(64, n_streams))
    server = Server(config)
    await server.start()
    threads: list[threading.Thread] = []
    tasks: list[asyncio.Task] = []
    try:
        listeners = [asyncio.create_task(st.listen(server.url)) for st in streams]
        tasks += listeners
        await _until(lambda: all(_room_has(server, st.room, listener=True) for st in streams), 10.0)
        publishers = [
            asyncio.create_task(publish(room_url(server.url, st.room, "publish"), st.packets()))
            for st in streams
        ]
        tasks += publishers
        await _until(lambda: all(_room_has(server, st.room, listener=False) for st in streams), 10.0)
        workers = [
            threading.Thread(target=st.decoder_worker, name=f"bench-decoder-{st.index}") for st in streams
        ]
        t0 = time.perf_counter() + 0.05
        for st in streams:
            st.t0 = t0
        senders = [
            threading.Thread(target=st.sender, args=(loop,), name=f"bench-sender-{st.index}")
            for st in streams
        ]
        threads = workers + senders
        for t in threads:
            t.start()
        async with asyncio.timeout(timeout):
            await asyncio.gather(*listeners, *publishers)
            for t in threads:
                await asyncio.to_thread(t.join)
        wall = time.perf_counter() - t0
    finally:
        for st in streams:  # unblock threads if we are leaving early
            st.work_q.put(("end", 0, None))
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.stop()
    for st in streams:
        for err in (st.send.error, st.recv.error):
            if err is not None:
                raise RuntimeError(f"stream {st.index} failed: {err!r}") from err
    return _summarise(streams, model, audio, block, wall)


def _room_has(server, room: str, listener: bool) -> bool:
    r = server.relay.rooms.get(room)
    return r is not None and (bool(r.listeners) if listener else r.publisher is not None)


async def _until(cond, timeout: float) -> None:
    deadline = time.perf_counter() + timeout
    while not cond():
        if time.perf_counter() > deadline:
            raise TimeoutError("loopback clients did not connect")
        await asyncio.sleep(0.005)


def _summarise(streams: list[_Stream], model, audio: torch.Tensor, block: int, wall: float) -> dict:
    from snac_stream.protocol.packets import ModelInfo, wire_overhead, ws_frame_overhead

    sr = model.sample_rate
    audio_s = audio.shape[-1] / sr
    comps = [st.components() for st in streams]
    pooled = {k: np.concatenate([c[k] for c in comps]) * 1000.0 for k in (*COMPONENTS, "total")}
    buffering = pooled["capture"] + pooled["queue"]
    out: dict = {
        "streams": len(streams),
        "audio_seconds": audio_s,
        "block_samples": block,
        "block_ms": 1000.0 * block / sr,
        "wall_s": wall,
        "samples_counted": int(pooled["total"].size),
        "total_ms": percentiles(pooled["total"]),
        "components_ms": {k: percentiles(pooled[k]) for k in COMPONENTS},
        "buffering_ms": percentiles(buffering),
        "compute_ms": percentiles(pooled["encode"] + pooled["decode"]),
        "per_stream_p50_ms": [percentiles(c["total"] * 1000.0)["p50"] for c in comps],
        "per_stream_p99_ms": [percentiles(c["total"] * 1000.0)["p99"] for c in comps],
        "decoder_max_backlog_packets": max(st.recv.max_backlog for st in streams),
    }
    frame_ms = 1000.0 * model.frame_size / sr
    late = out["components_ms"]["capture"]["p99"]
    out["keeps_up_with_real_time"] = None if late is None else bool(late < frame_ms + out["block_ms"])
    # exactness of the whole path: stream 0 against the offline codec
    st = streams[0]
    received = torch.cat(st.recv.audio, dim=-1)[..., : st.recv.total_samples]
    codes = [torch.cat(level, dim=-1) for level in zip(*st.send.codes, strict=True)]
    ref_codes = model.encode(audio)
    ref = model.decode(ref_codes, seed=0)[..., : audio.shape[-1]].cpu()
    mism = sum(int((a.cpu() != b.cpu()).sum()) for a, b in zip(codes, ref_codes, strict=True))
    out["exactness"] = {
        "max_abs_vs_offline_seeded": float((received.double() - ref.double()).abs().max())
        if received.numel()
        else None,
        "samples_received": int(received.shape[-1]),
        "code_mismatches_vs_offline": mism,
    }
    # wire: what went over the sockets, per second of audio, both legs
    info = ModelInfo.from_model(model)
    sent = st.send.packets
    recv = st.recv.packets
    codes_pk = st.send.codes_packets
    pub_bytes = sum(n + ws_frame_overhead(n, True) for n in sent)
    lis_bytes = sum(n + ws_frame_overhead(n, False) for n in recv)
    fpp = max(1, round(len(st.send.trig_samples) / max(len(codes_pk), 1)))
    out["wire"] = {
        "packets": len(sent),
        "codes_packets": len(codes_pk),
        "frames_per_packet_mean": len(st.send.trig_samples) / max(len(codes_pk), 1),
        "payload_bytes": sum(sent),
        "payload_bps": 8.0 * sum(sent) / audio_s,
        "codes_bits_bps": 8.0 * sum(info.payload_bytes(1) for _ in st.send.trig_samples) / audio_s,
        "publisher_wire_bps": 8.0 * pub_bytes / audio_s,
        "listener_wire_bps": 8.0 * lis_bytes / audio_s,
        "predicted_wire_bps": wire_overhead(info, fpp, client_to_server=True).wire_bps,
        "note": "packet bytes + RFC 6455 frame headers (+4 mask bytes client->server); "
        "HELLO and END included; TCP/IP headers not counted",
    }
    return out


def warm_up(model, audio: torch.Tensor, block: int) -> float:
    """Run the encoder and decoder over the capture-block pattern once, untimed: first calls
    with each new tensor shape pay one-off costs (kernel/primitive setup) that would
    otherwise show up as backlog in the first seconds. Returns the seconds spent."""
    from snac_stream import StreamingDecoder, StreamingEncoder

    t0 = time.perf_counter()
    enc, dec = StreamingEncoder(model), StreamingDecoder(model, seed=0)
    n = min(audio.shape[-1], math.lcm(block, model.frame_size) + 2 * model.frame_size)
    for start in range(0, n, block):
        codes = enc.push(audio[..., start : min(start + block, n)])
        if codes[0].shape[-1]:
            dec.push(codes)
    return time.perf_counter() - t0


def run_e2e(model, audio: torch.Tensor, n_streams: int, device: str, block_ms: float = 20.0) -> dict:
    """Run ``n_streams`` loopback streams of ``audio [1, 1, T]`` at once; see module doc."""
    block = max(1, int(round(model.sample_rate * block_ms / 1000.0)))
    warm_s = warm_up(model, audio, block)
    audio_s = audio.shape[-1] / model.sample_rate
    timeout = 60.0 + 20.0 * audio_s * max(1, n_streams)
    result = asyncio.run(_run(model, audio, n_streams, block, device, timeout))
    result["warm_up_s"] = warm_s
    return result

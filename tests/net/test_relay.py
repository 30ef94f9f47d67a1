"""The relay server, tested with real sockets on 127.0.0.1 and synthetic code streams."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import struct
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
from conftest import close_code, raises_packet_error, run_async, wait_until
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from snac_stream.net.client import RelayError, listen, publish
from snac_stream.net.client import room_url as client_room_url
from snac_stream.net.server import Server, ServerConfig
from snac_stream.protocol.packets import (
    PROTOCOL_VERSION,
    CloseCode,
    CodePacket,
    End,
    EndReason,
    Hello,
    Kind,
    ModelInfo,
    decode_packet,
    encode_packet,
    stream_packets,
)

INFO = ModelInfo(24000, 512, (4, 2, 1), 4096, b"fingerpr")
ROOT = Path(__file__).resolve().parents[2]


def make_stream(n_frames: int = 12, per_packet: int = 2, stream_id: int = 7, seed: int = 0) -> list:
    g = torch.Generator().manual_seed(seed)
    codes = [torch.randint(0, 4096, (n_frames * r,), generator=g) for r in INFO.codes_per_level]
    return stream_packets(codes, INFO, n_frames * INFO.frame_size - 100, per_packet, stream_id=stream_id)


def big_stream(n_packets: int, frames: int = 65535) -> list[bytes]:
    """HELLO, ``n_packets`` CODES of ``frames`` frames (~690 kB each), END: as bytes."""
    template = encode_packet(
        CodePacket(1, 0, 0, [torch.zeros(frames * r, dtype=torch.long) for r in (1, 2, 4)]), INFO
    )
    out = [encode_packet(Hello(INFO, 1))]
    for seq in range(n_packets):
        data = bytearray(template)
        struct.pack_into("<II", data, 6, seq, seq * frames)
        out.append(bytes(data))
    out.append(encode_packet(End(1, n_packets, n_packets * frames, n_packets * frames * INFO.frame_size)))
    return out


@contextlib.asynccontextmanager
async def running(**overrides):
    config = ServerConfig(**{"port": 0, "close_timeout": 10.0, **overrides})
    server = Server(config)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def room_url(server: Server, room: str, role: str, **query) -> str:
    extra = "".join(f"&{k}={v}" for k, v in query.items())
    return f"{server.url}/rooms/{room}?role={role}{extra}"


async def collect(stream, until=End) -> list:
    out = []
    async with asyncio.timeout(10):
        async for packet in stream:
            out.append(packet)
            if isinstance(packet, until):
                break
    return out


def listeners(server: Server, room: str) -> int:
    r = server.relay.rooms.get(room)
    return len(r.listeners) if r else 0


# ------------------------------------------------------------------------------ fan-out


@run_async
async def test_two_listeners_get_identical_packets_in_order():
    async with running() as srv:
        packets = make_stream()
        a, b = listen(room_url(srv, "r", "listen")), listen(room_url(srv, "r", "listen"))
        tasks = [asyncio.create_task(collect(s)) for s in (a, b)]
        await wait_until(lambda: listeners(srv, "r") == 2)
        stats = await publish(room_url(srv, "r", "publish"), packets)
        got_a, got_b = await asyncio.gather(*tasks)
        assert got_a == packets and got_b == packets
        assert stats.frames == 12 and stats.packets == len(packets)
        for s in (a, b):
            assert s.stats.frames_received == 12 and s.stats.frames_lost == 0
            assert s.stats.streams_completed == 1
            await s.aclose()
        room = srv.relay.rooms["r"]
        assert room.stats["frames_in"] == 12 and room.stats["streams_completed"] == 1


@run_async
async def test_late_joiner_gets_hello_first_and_counts_missed_frames():
    async with running() as srv:
        packets = make_stream(n_frames=12, per_packet=2)
        async with connect(room_url(srv, "late", "publish")) as pub:
            for p in packets[:4]:  # HELLO + 3 CODES = 6 frames
                await pub.send(encode_packet(p, INFO))
            await wait_until(lambda: srv.relay.rooms["late"].next_frame == 6)
            late = listen(room_url(srv, "late", "listen"))
            task = asyncio.create_task(collect(late))
            await wait_until(lambda: listeners(srv, "late") == 1)
            for p in packets[4:]:
                await pub.send(encode_packet(p, INFO))
            got = await task
        assert got[0] == packets[0]  # the cached HELLO
        assert got[1:] == packets[4:]
        assert got[1].first_frame == 6
        s = late.stats
        assert s.frames_missed_at_join == 6 and s.frames_received == 6 and s.frames_lost == 0
        assert srv.relay.rooms["late"].stats["late_joins"] == 1
        await late.aclose()


def shrink_server_sndbuf(server: Server, room: str) -> None:
    """Small kernel send buffers on the relay side, so a non-reading listener fills up fast."""
    for session in server.relay.rooms[room].listeners:
        sock = session.connection.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)


def small_rcvbuf_socket(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    return sock


@run_async
async def test_slow_listener_is_dropped_without_stalling_others():
    async with running(listener_queue=4, slow_listener="drop", max_message_size=1 << 20) as srv:
        stream = big_stream(20)
        slow = await connect(room_url(srv, "s", "listen"), sock=small_rcvbuf_socket(srv.port), max_queue=1)
        await wait_until(lambda: listeners(srv, "s") == 1)
        shrink_server_sndbuf(srv, "s")
        async with connect(room_url(srv, "s", "listen"), max_size=None) as fast:
            await wait_until(lambda: listeners(srv, "s") == 2)

            async def read_fast():
                return [await fast.recv() for _ in stream]

            reader = asyncio.create_task(read_fast())
            await publish(room_url(srv, "s", "publish"), stream)  # the publisher is not held up
            assert await asyncio.wait_for(reader, 20) == stream  # nor the other listener
            await wait_until(lambda: srv.relay.rooms["s"].stats["listeners_dropped"] == 1)
        assert await close_code(slow, timeout=20) == CloseCode.SLOW_CONSUMER


@run_async
async def test_slow_listener_skips_with_counted_gap():
    async with running(listener_queue=4, slow_listener="skip", max_message_size=1 << 20) as srv:
        stream = big_stream(20)
        slow = listen(room_url(srv, "k", "listen"), sock=small_rcvbuf_socket(srv.port), max_queue=1)
        first = asyncio.create_task(slow.__anext__())  # connect, then read only the HELLO
        await wait_until(lambda: listeners(srv, "k") == 1)
        shrink_server_sndbuf(srv, "k")
        await publish(room_url(srv, "k", "publish"), stream)
        await wait_until(lambda: srv.relay.rooms["k"].stats["packets_skipped"] > 0)
        assert isinstance(await first, Hello)
        rest = await collect(slow)
        assert isinstance(rest[-1], End) and rest[-1].reason == EndReason.COMPLETE
        s = slow.stats  # every frame is received or counted lost
        assert s.frames_received + s.frames_lost + s.frames_missed_at_join == 20 * 65535
        assert s.frames_lost + s.frames_missed_at_join == srv.relay.rooms["k"].stats["frames_skipped"] > 0
        await slow.aclose()


# ------------------------------------------------------------------------------ endings


@pytest.mark.parametrize("how", ["close", "abort"])
@run_async
async def test_publisher_lost_mid_stream(how):
    async with running() as srv:
        packets = make_stream(n_frames=10, per_packet=2)
        a = listen(room_url(srv, "p", "listen"))
        task = asyncio.create_task(collect(a))
        await wait_until(lambda: listeners(srv, "p") == 1)
        pub = await connect(room_url(srv, "p", "publish"))
        for p in packets[:4]:
            await pub.send(encode_packet(p, INFO))
        if how == "close":
            await pub.close()
        else:
            pub.transport.abort()
        got = await task
        end = got[-1]
        assert got[:-1] == packets[:4]
        assert end == End(7, 3, 6, 6 * INFO.frame_size, EndReason.PUBLISHER_LOST)
        assert a.stats.streams_aborted == 1 and a.stats.frames_received == 6
        # The room lives on: a new publisher starts a new stream for the same listener.
        task = asyncio.create_task(collect(a))
        again = make_stream(n_frames=3, stream_id=8, seed=1)
        await publish(room_url(srv, "p", "publish"), again)
        assert await task == again
        await a.aclose()


@run_async
async def test_graceful_stop_sends_end_and_1001():
    srv = Server(ServerConfig(port=0))
    await srv.start()
    packets = make_stream(n_frames=10, per_packet=2)
    lis = await connect(room_url(srv, "g", "listen"))
    pub = await connect(room_url(srv, "g", "publish"))
    for p in packets[:3]:
        await pub.send(encode_packet(p, INFO))
    await wait_until(lambda: srv.relay.rooms["g"].next_frame == 4)
    await srv.stop()
    got = [decode_packet(await lis.recv(), INFO) for _ in range(4)]
    assert got[:3] == packets[:3]
    assert got[3] == End(7, 2, 4, 4 * INFO.frame_size, EndReason.SHUTDOWN)
    assert await close_code(lis) == 1001
    assert await close_code(pub) == 1001
    with pytest.raises(OSError):
        await connect(room_url(srv, "g", "listen"), open_timeout=2)


@run_async
async def test_sigterm_graceful_shutdown_in_subprocess():
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "snac_stream",
        "serve",
        "--port",
        "0",
        "--log-level",
        "WARNING",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        async with asyncio.timeout(60):
            line = (await proc.stdout.readline()).decode()
        assert line.startswith("listening on ws://127.0.0.1:"), line
        url = line.split()[-1]
        packets = make_stream(n_frames=6, per_packet=2)
        lis = await connect(f"{url}/rooms/x?role=listen")
        pub = await connect(f"{url}/rooms/x?role=publish")
        for p in packets[:2]:
            await pub.send(encode_packet(p, INFO))
        assert decode_packet(await lis.recv()) == packets[0]
        assert decode_packet(await lis.recv(), INFO) == packets[1]
        proc.send_signal(signal.SIGTERM)
        end = decode_packet(await asyncio.wait_for(lis.recv(), 10), INFO)
        assert end == End(7, 1, 2, 2 * INFO.frame_size, EndReason.SHUTDOWN)
        assert await close_code(lis) == 1001
        assert await close_code(pub) == 1001
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


# ------------------------------------------------------------------------------ errors

HELLO = encode_packet(Hello(INFO, 7))
CODES0 = encode_packet(make_stream()[1], INFO)


@pytest.mark.parametrize(
    ("messages", "code"),
    [
        ([bytes([2, Kind.HELLO]) + HELLO[2:]], CloseCode.UNSUPPORTED_VERSION),
        ([bytes([PROTOCOL_VERSION, 9, 0, 0])], CloseCode.UNKNOWN_KIND),
        ([b"\x01"], CloseCode.TRUNCATED),
        ([CODES0], CloseCode.UNEXPECTED_PACKET),  # CODES before HELLO
        ([HELLO, CODES0[:-1]], CloseCode.TRUNCATED),
        ([HELLO, CODES0 + b"\0"], CloseCode.MALFORMED),
        ([HELLO, CODES0[:6] + struct.pack("<I", 5) + CODES0[10:]], CloseCode.UNEXPECTED_PACKET),  # seq
        ([HELLO, HELLO], CloseCode.UNEXPECTED_PACKET),
        ([HELLO, encode_packet(End(7, 0, 1, 10))], CloseCode.UNEXPECTED_PACKET),  # frames never sent
        ([HELLO, b"\x01\x02" + b"\0" * 1500], CloseCode.OVERSIZED),
        (["hello as text"], CloseCode.TEXT_FRAME),
        ([b"\x01\x02" + b"\0" * 3000], 1009),  # beyond 2 x max_message_size: the WebSocket layer
    ],
)
@run_async
async def test_bad_publisher_input_gets_specific_close_code(messages, code):
    async with running(max_message_size=1024) as srv:
        healthy = listen(room_url(srv, "ok", "listen"))
        task = asyncio.create_task(collect(healthy))
        await wait_until(lambda: listeners(srv, "ok") == 1)
        lis = await connect(room_url(srv, "bad", "listen"))
        await wait_until(lambda: listeners(srv, "bad") == 1)
        async with connect(room_url(srv, "bad", "publish"), max_size=None) as ws:
            for m in messages:
                await ws.send(m)
            assert await close_code(ws) == code
        if messages[0] == HELLO:  # listeners of the broken stream get an END
            assert decode_packet(await lis.recv()) == Hello(INFO, 7)
            end = decode_packet(await lis.recv(), INFO)
            assert isinstance(end, End) and end.reason == EndReason.PUBLISHER_LOST
        await lis.close()
        packets = make_stream()
        await publish(room_url(srv, "ok", "publish"), packets)  # other rooms keep working
        assert await task == packets
        await healthy.aclose()


@run_async
async def test_listener_must_not_send():
    async with running() as srv:
        async with connect(room_url(srv, "r", "listen")) as ws:
            await ws.send("text")
            assert await close_code(ws) == CloseCode.TEXT_FRAME
        async with connect(room_url(srv, "r", "listen")) as ws:
            await ws.send(HELLO)
            assert await close_code(ws) == CloseCode.UNEXPECTED_PACKET


@run_async
async def test_second_publisher_is_rejected():
    async with running() as srv:
        packets = make_stream()
        lis = listen(room_url(srv, "r", "listen"))
        task = asyncio.create_task(collect(lis))
        async with connect(room_url(srv, "r", "publish")) as first:
            await first.send(encode_packet(packets[0]))
            async with connect(room_url(srv, "r", "publish")) as second:
                assert await close_code(second) == CloseCode.PUBLISHER_EXISTS

            async def more():  # publish() reports the rejection as RelayError
                yield packets[0]
                await wait_until(lambda: srv.relay.rooms["r"].stats["publishers_rejected"] == 2)
                yield packets[1]

            with pytest.raises(RelayError) as e:
                await publish(room_url(srv, "r", "publish"), more())
            assert e.value.code == CloseCode.PUBLISHER_EXISTS
            for p in packets[1:]:
                await first.send(encode_packet(p, INFO))
            assert await task == packets
        await lis.aclose()


@run_async
async def test_token_required_when_set():
    async with running(token="s3cret") as srv:
        for role in ("publish", "listen"):
            async with connect(room_url(srv, "t", role)) as ws:
                assert await close_code(ws) == CloseCode.UNAUTHORIZED
            async with connect(room_url(srv, "t", role, token="wrong")) as ws:
                assert await close_code(ws) == CloseCode.UNAUTHORIZED
        lis = listen(room_url(srv, "t", "listen", token="s3cret"))  # query parameter
        task = asyncio.create_task(collect(lis))
        await wait_until(lambda: listeners(srv, "t") == 1)
        packets = make_stream()
        await publish(room_url(srv, "t", "publish"), packets, token="s3cret")  # Bearer header
        assert await task == packets
        assert srv.counters["rejected_unauthorized"] == 4
        await lis.aclose()


@run_async
async def test_limits_and_bad_requests():
    async with running(max_listeners_per_room=2, max_rooms=2, max_connections=4) as srv:
        keep = []

        async def add(url):
            keep.append(await connect(url))
            await wait_until(lambda: len(srv.active) == len(keep))

        async def refused(url):
            async with connect(url) as ws:
                code = await close_code(ws)
            await wait_until(lambda: len(srv.active) == len(keep))
            return code

        await add(room_url(srv, "a", "listen"))
        await add(room_url(srv, "a", "listen"))
        assert await refused(room_url(srv, "a", "listen")) == CloseCode.ROOM_FULL
        await add(room_url(srv, "b", "listen"))
        assert await refused(room_url(srv, "c", "listen")) == CloseCode.TOO_MANY_ROOMS
        await add(room_url(srv, "b", "listen"))
        assert await refused(room_url(srv, "b", "publish")) == CloseCode.SERVER_FULL
        assert srv.counters["rejected_server_full"] == 1
        for ws in keep:
            await ws.close()
        keep.clear()
        await wait_until(lambda: not srv.active and not srv.relay.rooms)
        assert await refused(f"{srv.url}/rooms/bad%20name?role=listen") == CloseCode.BAD_REQUEST
        assert await refused(f"{srv.url}/rooms/x?role=admin") == CloseCode.BAD_REQUEST
        assert await refused(f"{srv.url}/rooms/x") == CloseCode.BAD_REQUEST  # role is required
        assert client_room_url(srv.url, "a b", "listen").endswith("/rooms/a%20b?role=listen")
        with pytest.raises(InvalidStatus) as e:
            await connect(f"{srv.url}/nowhere")
        assert e.value.response.status_code == 404


@run_async
async def test_idle_publisher_is_closed():
    async with running(idle_timeout=0.2) as srv:
        lis = await connect(room_url(srv, "i", "listen"))
        async with connect(room_url(srv, "i", "publish")) as pub:
            await pub.send(HELLO)
            assert await close_code(pub) == CloseCode.IDLE_TIMEOUT
        assert decode_packet(await lis.recv()) == Hello(INFO, 7)
        end = decode_packet(await lis.recv(), INFO)
        assert end == End(7, 0, 0, 0, EndReason.PUBLISHER_LOST)
        await lis.close()


# ------------------------------------------------------------------------------ http, router


def http_get(url: str, headers: dict | None = None) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@run_async
async def test_health_json():
    async with running(token="tok") as srv:
        base = f"http://127.0.0.1:{srv.port}/health"
        lis = await connect(room_url(srv, "h", "listen", token="tok"))
        await wait_until(lambda: listeners(srv, "h") == 1)
        status, body = await asyncio.to_thread(http_get, base)
        assert status == 200 and body["status"] == "ok"
        assert body["connections"] == 1 and body["room_count"] == 1 and body["uptime_s"] >= 0
        assert body["counters"]["connections_total"] == 1
        assert body["rooms"] is None  # room names only with the token
        status, body = await asyncio.to_thread(http_get, base, {"Authorization": "Bearer tok"})
        assert body["rooms"]["h"]["listeners"] == 1 and body["rooms"]["h"]["publisher"] is False
        await lis.close()


@run_async
async def test_listener_can_require_a_model():
    async with running() as srv:
        other = ModelInfo(32000, 384, (8, 4, 2, 1), 4096, b"fingerpr")
        lis = listen(room_url(srv, "m", "listen"), expect_info=other)
        task = asyncio.create_task(collect(lis))
        await wait_until(lambda: listeners(srv, "m") == 1)
        await publish(room_url(srv, "m", "publish"), make_stream())
        with raises_packet_error(CloseCode.MODEL_MISMATCH, match="sample_rate"):
            await task


@run_async
async def test_router_accepts_new_endpoints():
    async with running() as srv:

        async def echo(connection, request):
            assert request.prefix == "/echo" and request.query["x"] == "1"
            async for message in connection:
                await connection.send(message)

        srv.add_route("/echo", echo)
        assert await srv.run_in_executor(sum, [1, 2]) == 3
        async with connect(f"{srv.url}/echo?x=1") as ws:
            await ws.send(b"ping")
            assert await ws.recv() == b"ping"


@run_async
async def test_listen_reconnects_with_backoff():
    async with running() as srv:
        port = srv.port
        lis = listen(room_url(srv, "re", "listen"), reconnect=True, backoff_initial=0.05, max_retries=50)
        first = asyncio.create_task(collect(lis))
        await wait_until(lambda: listeners(srv, "re") == 1)
        packets = make_stream(n_frames=4)
        await publish(room_url(srv, "re", "publish"), packets)
        assert await first == packets
        nxt = asyncio.create_task(collect(lis))
    # the server went away (1001); a new one on the same port takes the listener back
    async with running(port=port) as srv2:
        await wait_until(lambda: listeners(srv2, "re") == 1)
        again = make_stream(n_frames=4, stream_id=9, seed=3)
        await publish(room_url(srv2, "re", "publish"), again)
        assert await nxt == again
        assert lis.stats.reconnects >= 1 and lis.stats.streams_completed == 2
        await lis.aclose()


@pytest.mark.parametrize(
    "field, value, message",
    [("workers", 0, "workers must be > 0"), ("engine_workers", -1, "engine_workers must be >= 0")],
)
def test_server_config_rejects_bad_values(field, value, message):
    with pytest.raises(ValueError, match=message):
        ServerConfig(**{field: value})

"""Rooms across relay nodes on Redis Streams: real ``redis-server`` processes on free loopback
ports, nodes as real ``Server``s on 127.0.0.1 (in process, or ``python -m snac_stream serve``
subprocesses where a node is killed).

Audio is checked against offline decoding: with nothing lost every listener's output is the
offline ``forward`` of the sent audio; after a cut or a gap it is the offline decode of each
unbroken run of frames (``test_faults.expected_output``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import torch
from conftest import close_code, run_async, wait_until
from test_endpoints import audio
from test_faults import F, decode_run, decode_until_end, expected_output, listeners, make, room
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from benchmarks.cluster_load import RedisServer, free_port, run_cluster_load
from benchmarks.load import _start_server
from snac_stream.cli.main import main
from snac_stream.net.broker import BrokerUnavailable
from snac_stream.net.client import listen, publish
from snac_stream.net.receiver import CodeReceiver
from snac_stream.net.server import Server, ServerConfig
from snac_stream.protocol.packets import (
    CloseCode,
    CodePacket,
    End,
    EndReason,
    Hello,
    encode_packet,
    stream_packets,
)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    """Debian's redis-server on a free loopback port, no persistence; stopped at the end."""
    try:
        server = RedisServer(tmp_path_factory.mktemp("redis"))
    except FileNotFoundError as e:
        pytest.skip(f"{e}; .ci/run installs it")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis(redis_server):
    """The module's redis-server, emptied for each test (and started again if a test killed it)."""
    import redis as redis_py

    if not redis_server.ping():
        redis_server.start()
    client = redis_py.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server


@contextlib.asynccontextmanager
async def nodes(redis_server: RedisServer, n: int = 2, **overrides):
    """``n`` started relay nodes sharing ``redis_server``."""
    config = {"port": 0, "close_timeout": 5.0, "broker": redis_server.url, "broker_lease": 1.0, **overrides}
    servers = [Server(ServerConfig(**config)) for _ in range(n)]
    for s in servers:
        await s.start()
    try:
        yield servers
    finally:
        for s in servers:
            await s.stop()


def reading(*servers, name: str = "r"):
    """A predicate: every server has room ``name`` and reads its stream."""
    return lambda: all(s.broker.room_snapshot(name)["reading"] for s in servers)


def written(srv: Server, packets: int):
    return lambda: (
        srv.broker.stats["packets_written"] >= packets and srv.broker.snapshot()["outbox_packets"] == 0
    )


# ------------------------------------------------------------------------------ across nodes


@run_async
async def test_publisher_on_a_listeners_on_a_and_b_equal_offline_forward(redis):
    model, info, _, _ = make()
    pcm = torch.from_numpy(audio(1000, 3)).reshape(1, 1, -1)
    want, codes = model.forward(pcm, seed=0)
    packets = [encode_packet(p, info) for p in stream_of(codes, info, 1000)]
    async with nodes(redis) as (a, b):
        ra, rb = CodeReceiver(model), CodeReceiver(model)
        la, lb = listen(room(a, "r", "listen")), listen(room(b, "r", "listen"))
        tasks = [asyncio.create_task(decode_until_end(s, r)) for s, r in ((la, ra), (lb, rb))]
        await wait_until(reading(a, b))
        stats = await publish(room(a, "r", "publish"), packets)
        (got_a, out_a), (got_b, out_b) = await asyncio.gather(*tasks)
        assert [encode_packet(p, info) for p in got_a] == packets == [encode_packet(p, info) for p in got_b]
        np.testing.assert_allclose(out_a, want[0, 0].numpy(), atol=1e-5, rtol=0)
        np.testing.assert_array_equal(out_a, out_b)
        for s in (la.stats, lb.stats):
            assert s.frames_received == stats.frames and s.frames_lost == s.frames_missed_at_join == 0
        assert b.relay.rooms["r"].stats["broker_frames_in"] == stats.frames  # B's came through Redis
        assert a.relay.rooms["r"].stats.get("broker_frames_in", 0) == 0  # A's went out directly
        # /health: the broker's state and the room's cluster figures
        ended = time.time()  # the publisher is gone; B's next heartbeats (every lease / 3) say so
        await wait_until(lambda: b.broker.room_snapshot("r").get("updated", 0) > ended + 0.1)
        health = await health_of(b)
        assert health["status"] == "ok" and health["broker"]["state"] == "up"
        assert health["broker"]["nodes"] == 2 and health["broker"]["redis_used_memory"] > 0
        cluster = health["rooms"]["r"]["cluster"]
        assert cluster["listeners"] == 2 and cluster["listener_nodes"] == 2 and cluster["reading"]
        assert cluster["stream_length"] == len(packets) and cluster["stream_id"] is None  # ended
        await la.aclose()
        await lb.aclose()


def stream_of(codes, info, n_samples: int, per_packet: int = 2, stream_id: int = 1):
    return stream_packets([c[0] for c in codes], info, n_samples, per_packet, stream_id=stream_id)


async def health_of(srv: Server) -> dict:
    url = srv.url.replace("ws://", "http://") + "/health"
    return json.loads(await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read()))


@run_async
async def test_late_join_on_node_b_gets_hello_first_and_counts_missed_frames(redis):
    model, info, codes, packets = make(1000, 2)
    async with nodes(redis) as (a, b):
        async with connect(room(a, "r", "publish")) as pub:
            for p in packets[:4]:  # HELLO + 3 CODES = 6 frames, before anyone listens on B
                await pub.send(encode_packet(p, info))
            await wait_until(written(a, 4))
            receiver = CodeReceiver(model)
            late = listen(room(b, "r", "listen"))
            task = asyncio.create_task(decode_until_end(late, receiver))
            await wait_until(lambda: listeners(b, "r") == 1 and reading(b)())
            for p in packets[4:]:
                await pub.send(encode_packet(p, info))
            got, out = await task
        assert got[0] == packets[0] and got[1:] == packets[4:]  # the HELLO from Redis, then the rest
        s = late.stats
        assert s.frames_missed_at_join == 6 and s.frames_lost == 0
        assert s.frames_received == packets[-1].total_frames - 6
        np.testing.assert_allclose(
            out, expected_output(model, codes, packets[4:-1], 6, 1000), atol=1e-5, rtol=0
        )
        assert b.relay.rooms["r"].stats["late_joins"] == 1
        await late.aclose()


@run_async
async def test_one_publisher_and_the_listener_limit_hold_across_nodes(redis):
    model, info, codes, packets = make(600, 2)
    async with nodes(redis, max_listeners_per_room=2) as (a, b):
        async with connect(room(a, "r", "publish")) as pub:
            await pub.send(encode_packet(packets[0], info))
            async with connect(room(b, "r", "publish")) as second:  # the room's publisher is on A
                assert await close_code(second) == CloseCode.PUBLISHER_EXISTS
            la = await connect(room(a, "r", "listen"))
            lb = await connect(room(b, "r", "listen"))
            await wait_until(lambda: listeners(a, "r") == listeners(b, "r") == 1)
            for srv in (a, b):  # the third listener is refused on either node
                async with connect(room(srv, "r", "listen")) as third:
                    assert await close_code(third) == CloseCode.ROOM_FULL
            await la.close()  # a place frees up: B admits one more
            await wait_until(lambda: listeners(a, "r") == 0)

            async def admitted_on_b() -> bool:
                async with connect(room(b, "r", "listen")) as ws:
                    with contextlib.suppress(TimeoutError, ConnectionClosed):
                        async with asyncio.timeout(0.3):
                            await ws.recv()  # the HELLO; a refused listener is closed instead
                            return True
                    return False

            async with asyncio.timeout(10):
                while not await admitted_on_b():
                    await asyncio.sleep(0.1)
            await lb.close()
        # the publisher left (its lease is given back): B may have one now
        await wait_until(lambda: not a.broker.claims)
        stats = await publish(room(b, "r", "publish"), packets)
        assert stats.frames == packets[-1].total_frames


@run_async
async def test_publisher_lost_on_a_ends_the_stream_alike_on_every_node(redis):
    model, info, codes, packets = make(1000, 2)
    async with nodes(redis) as (a, b):
        la, lb = listen(room(a, "r", "listen")), listen(room(b, "r", "listen"))
        tasks = [asyncio.create_task(decode_until_end(s, CodeReceiver(model))) for s in (la, lb)]
        await wait_until(reading(a, b))
        pub = await connect(room(a, "r", "publish"))
        for p in packets[:6]:  # HELLO + 5 CODES = 10 frames
            await pub.send(encode_packet(p, info))
        await wait_until(lambda: "r" in b.relay.rooms and b.relay.rooms["r"].next_frame == 10)
        pub.transport.abort()  # network loss, no close frame
        (got_a, out_a), (got_b, out_b) = await asyncio.gather(*tasks)
        assert got_a[-1] == got_b[-1] == End(1, 5, 10, 10 * F, EndReason.PUBLISHER_LOST)
        assert got_a == got_b
        np.testing.assert_allclose(out_b, decode_run(model, codes, 0, 10), atol=1e-5, rtol=0)
        np.testing.assert_array_equal(out_a, out_b)
        await la.aclose()
        await lb.aclose()


@run_async
async def test_history_in_redis_is_bounded(redis):
    import redis as redis_py

    model, info, codes, packets = make(16 * 400, 1)  # 400 CODES packets
    async with nodes(redis, 1, broker_maxlen=8) as (a,):
        await publish(room(a, "r", "publish"), packets)
        await wait_until(written(a, len(packets)))  # a publisher faster than Redis waits
        assert a.broker.stats["packets_dropped"] == 0
    client = redis_py.Redis.from_url(redis.url)
    length = client.xlen("snac:{r}:s")
    client.close()
    assert length < 8 + 100 < len(packets)  # MAXLEN ~ trims whole macro nodes (100 entries each)


# ------------------------------------------------------------------------------ failures


class Link:
    """A TCP forwarder between one node and Redis that a test can cut (every connection is
    aborted, new ones are refused: a network partition) and restore."""

    def __init__(self, target: RedisServer) -> None:
        self.target, self.port, self.server = target, free_port(), None
        self.writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def restore(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def cut(self) -> None:
        self.server.close()
        for w in list(self.writers):
            w.transport.abort()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target.port)
        self.writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self.writers -= {writer, up_writer}


@contextlib.asynccontextmanager
async def linked_nodes(redis_server: RedisServer, cut_off: int, **overrides):
    """Two nodes; node ``cut_off`` reaches Redis through a :class:`Link` (yielded third)."""
    link = Link(redis_server)
    await link.restore()
    config = {"port": 0, "close_timeout": 5.0, "broker_lease": 1.0, **overrides}
    urls = [link.url if i == cut_off else redis_server.url for i in range(2)]
    servers = [Server(ServerConfig(broker=url, **config)) for url in urls]
    for srv in servers:
        await srv.start()
    try:
        yield (*servers, link)
    finally:
        for srv in servers:
            await srv.stop()
        await link.cut()


@run_async
async def test_listener_node_cut_off_resumes_from_its_last_id_and_fills_the_gap(redis):
    model, info, codes, packets = make(16 * 40, 1)
    n = 16 * 40
    async with linked_nodes(redis, cut_off=1) as (a, b, link):
        rb = CodeReceiver(model)
        lb = listen(room(b, "r", "listen"))
        tb = asyncio.create_task(decode_until_end(lb, rb, ends=2))
        await wait_until(reading(b))
        pub = await connect(room(a, "r", "publish"))
        for p in packets[:11]:
            await pub.send(encode_packet(p, info))
        await wait_until(lambda: b.relay.rooms["r"].next_frame == 10)
        await link.cut()  # B loses Redis; A and Redis go on
        await wait_until(lambda: b.broker.state == "down")
        for p in packets[11:21]:
            await pub.send(encode_packet(p, info))
        await wait_until(written(a, 21))
        await link.restore()
        await wait_until(lambda: b.broker.state == "up", timeout=15)
        for p in packets[21:]:
            await pub.send(encode_packet(p, info))
        got, out = await tb
        await pub.close()
        ends = [p for p in got if isinstance(p, End)]
        assert ends == [End(1, 10, 10, 10 * F, EndReason.BROKER_LOST), packets[-1]]
        body = [p for p in got if isinstance(p, CodePacket)]
        assert [p.first_frame for p in body] == list(range(40))  # frames 10-19 from Redis' history
        stats = b.relay.rooms["r"].stats
        assert stats["broker_frames_lost"] == 0 and stats["broker_streams_resumed"] == 1
        want = np.concatenate(
            [decode_run(model, codes, 0, 10), expected_output(model, codes, body[10:], 10, n)]
        )
        np.testing.assert_allclose(out, want, atol=1e-5, rtol=0)
        await lb.aclose()


@run_async
async def test_publisher_node_cut_off_briefly_loses_nothing(redis):
    model, info, codes, packets = make(16 * 30, 1)
    async with linked_nodes(redis, cut_off=0, broker_lease=5.0) as (a, b, link):
        lb = listen(room(b, "r", "listen"))
        tb = asyncio.create_task(decode_until_end(lb, CodeReceiver(model)))
        await wait_until(reading(b))
        pub = await connect(room(a, "r", "publish"))
        for p in packets[:11]:
            await pub.send(encode_packet(p, info))
        await wait_until(lambda: b.relay.rooms["r"].next_frame == 10)
        await link.cut()  # shorter than the lease: A keeps the room
        for p in packets[11:21]:
            await pub.send(encode_packet(p, info))
        await wait_until(lambda: a.broker.state == "down" and a.relay.rooms["r"].next_frame == 20)
        assert a.broker.snapshot()["outbox_packets"] == 10  # bounded by maxlen (128)
        await link.restore()
        for p in packets[21:]:
            await pub.send(encode_packet(p, info))
        got, out = await tb
        await pub.close()
        assert got == packets  # B's listener saw no cut at all
        np.testing.assert_allclose(out, decode_run(model, codes, 0, 30)[: 16 * 30], atol=1e-5, rtol=0)
        assert a.broker.stats["packets_dropped"] == 0 and a.broker.stats["reconnects"] == 1
        await lb.aclose()


@run_async
async def test_publisher_node_cut_off_past_its_lease_is_fenced(redis):
    model, info, codes, packets = make(16 * 30, 1)
    other = make(16 * 8, 2, stream_id=9)[3]
    async with linked_nodes(redis, cut_off=0) as (a, b, link):
        lb = listen(room(b, "r", "listen"))
        first = asyncio.create_task(decode_until_end(lb, CodeReceiver(model)))
        await wait_until(reading(b))
        pub = await connect(room(a, "r", "publish"))
        for p in packets[:11]:
            await pub.send(encode_packet(p, info))
        await wait_until(lambda: b.relay.rooms["r"].next_frame == 10)
        await link.cut()  # A goes on publishing locally; its lease (1 s) runs out in Redis
        got, _ = await first
        assert got[-1] == End(1, 10, 10, 10 * F, EndReason.PUBLISHER_LOST)  # B ended it for the cluster
        second = asyncio.create_task(decode_until_end(lb, CodeReceiver(model)))
        async with connect(room(b, "r", "publish")) as pub_b:  # the room is B's now
            for p in other[:-1]:
                await pub_b.send(encode_packet(p, info))
            await link.restore()  # A comes back, finds B owns the room: A's publisher is closed
            assert await close_code(pub, timeout=15) == CloseCode.PUBLISHER_EXISTS
            assert a.broker.stats["fenced"] == 1
            await pub_b.send(encode_packet(other[-1], info))
            got, _ = await second
        assert got == other  # nothing of A's reached B after its lease ran out
        await lb.aclose()


@run_async
async def test_redis_restarted_mid_stream_counts_the_gap_and_resumes(redis):
    model, info, codes, packets = make(16 * 40, 1)  # HELLO, 40 CODES of 1 frame, END
    n = 16 * 40
    async with nodes(redis, broker_maxlen=4) as (a, b):
        ra, rb = CodeReceiver(model), CodeReceiver(model)
        la, lb = listen(room(a, "r", "listen")), listen(room(b, "r", "listen"))
        ta = asyncio.create_task(decode_until_end(la, ra))
        tb = asyncio.create_task(decode_until_end(lb, rb, ends=2))
        await wait_until(reading(a, b))
        pub = await connect(room(a, "r", "publish"))
        for p in packets[:11]:  # HELLO + 10 CODES
            await pub.send(encode_packet(p, info))
        await wait_until(lambda: b.relay.rooms["r"].next_frame == 10)
        redis.kill()  # Redis crashes: B's listener is told, A's room goes on locally
        await wait_until(lambda: b.broker.state == "down")
        for p in packets[11:21]:  # 10 CODES while Redis is away: A buffers at most 4
            await pub.send(encode_packet(p, info))
        await wait_until(lambda: a.relay.rooms["r"].next_frame == 20 and a.broker.state == "down")
        await wait_until(lambda: a.broker.stats["frames_dropped"] == 6)
        assert a.broker.snapshot()["outbox_packets"] == 4
        health = await health_of(b)
        assert health["status"] == "degraded" and health["broker"]["state"] == "down"
        redis.start()  # empty: no persistence
        await wait_until(lambda: a.broker.state == b.broker.state == "up", timeout=15)
        for p in packets[21:]:
            await pub.send(encode_packet(p, info))
        got_a, out_a = await ta
        got_b, out_b = await tb
        await pub.close()
        # A's listener: everything, the offline decode
        assert got_a == packets and la.stats.frames_lost == 0
        np.testing.assert_allclose(out_a, decode_run(model, codes, 0, 40)[:n], atol=1e-5, rtol=0)
        # B's: frames 0-9, END(BROKER_LOST); the same stream again from the 4 buffered packets on
        ends = [p for p in got_b if isinstance(p, End)]
        assert ends[0] == End(1, 10, 10, 10 * F, EndReason.BROKER_LOST) and ends[1] == packets[-1]
        assert [p.stream_id for p in got_b if isinstance(p, Hello)] == [1, 1]
        body = [p for p in got_b if isinstance(p, CodePacket)]
        assert [p.first_frame for p in body] == list(range(10)) + list(range(16, 40))
        room_b = b.relay.rooms["r"].stats
        assert room_b["broker_frames_lost"] == 6 == a.relay.rooms["r"].stats["broker_frames_dropped"]
        assert room_b["broker_streams_cut"] == 1 and room_b["broker_streams_resumed"] == 1
        s = lb.stats  # each END's accounting closes
        assert s.streams_aborted == 1 and s.streams_completed == 1 and s.frames_received == 10 + 24
        assert s.frames_missed_at_join == 16 and s.frames_lost == 0
        want = np.concatenate(
            [decode_run(model, codes, 0, 10), expected_output(model, codes, body[10:], 16, n)]
        )
        np.testing.assert_allclose(out_b, want, atol=1e-5, rtol=0)
        assert a.broker.stats["reconnects"] >= 1 and b.broker.stats["reconnects"] >= 1
        await la.aclose()
        await lb.aclose()


@run_async
async def test_node_killed_mid_stream(redis):
    model, info, codes, packets = make(16 * 30, 1)
    proc, url_a = await _start_server(1, "drop", ["--broker", redis.url, "--broker-lease", "1"])
    try:
        async with nodes(redis, 1) as (b,):
            receiver = CodeReceiver(model)
            lb = listen(room(b, "k", "listen"))
            task = asyncio.create_task(decode_until_end(lb, receiver))
            await wait_until(reading(b, name="k"))
            pub = await connect(f"{url_a}/rooms/k?role=publish")
            for p in packets[:11]:  # HELLO + 10 CODES
                await pub.send(encode_packet(p, info))
            await wait_until(lambda: b.relay.rooms["k"].next_frame == 10)
            proc.kill()  # SIGKILL: no END, no lease given back
            await proc.wait()
            got, out = await task  # B ends the stream when A's lease expires
            assert got[-1] == End(1, 10, 10, 10 * F, EndReason.PUBLISHER_LOST)
            np.testing.assert_allclose(out, decode_run(model, codes, 0, 10), atol=1e-5, rtol=0)
            assert b.broker.stats["streams_reaped"] == 1
            # the room is free again: a publisher on B gets it, B's listener hears the new stream
            again = make(16 * 6, 2, stream_id=2)[3]
            task = asyncio.create_task(decode_until_end(lb, CodeReceiver(model)))
            await publish(room(b, "k", "publish"), again)
            got, _ = await task
            assert got == again
            await lb.aclose()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_redis_unreachable_at_start_is_a_clear_error(redis, capsys):
    url = f"redis://127.0.0.1:{free_port()}/0"  # nobody listens there
    cmd = [sys.executable, "-m", "snac_stream", "serve", "--port", "0", "--broker", url]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "listening" not in done.stdout
    assert f"cannot reach Redis at {url}" in done.stderr and "Traceback" not in done.stderr
    # not a Redis URL: refused before anything starts
    assert main(["serve", "--port", "0", "--broker", "http://127.0.0.1:6379"]) == 2
    assert "is not a Redis URL: use redis://HOST:PORT/DB" in capsys.readouterr().err

    async def in_process():
        server = Server(ServerConfig(port=0, broker=url))
        with pytest.raises(BrokerUnavailable, match="cannot reach Redis"):
            await server.start()

    asyncio.run(in_process())


# ------------------------------------------------------------------------------ load


def test_cluster_load_quick(redis):
    result = asyncio.run(run_cluster_load(3, 6, 3.0, redis_url=redis.url))
    print("\n" + result.report())
    assert not result.errors
    assert result.listeners == 18 and result.accounting_ok == 18
    assert result.frames_sent == 6 * int(3.0 / (2048 / 24000)) > 0
    assert result.frames_delivered == result.frames_expected == 3 * result.frames_sent
    assert result.frames_lost == result.frames_counted_lost == 0
    assert (
        result.latency_local_ms["n"] == result.frames_sent
        and result.latency_cross_ms["n"] == 2 * result.frames_sent
    )
    assert result.redis_memory_peak_mib - result.redis_memory_baseline_mib < 16

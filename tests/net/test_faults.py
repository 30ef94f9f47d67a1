"""Faults: lost, reordered and late packets at the receiver; a publisher that disconnects
mid-stream; a listener that stalls; a server restart under a live stream.

Audio is checked exactly against offline decoding: with nothing lost the receiver's
output is ``model.decode(codes, seed=0)`` trimmed; after a gap it is the offline decode of
each unbroken run of frames, silence for the lost frames, trimmed to the stream's length.
"""

from __future__ import annotations

import asyncio
import socket

import numpy as np
import pytest
import torch
from conftest import raises_packet_error
from hypothesis import given, settings
from hypothesis import strategies as st
from test_endpoints import audio, offline_codes, run_async, serving, tiny_model, wait_until
from websockets.asyncio.client import connect

from snac_stream.net.client import listen, publish
from snac_stream.net.receiver import CodeReceiver
from snac_stream.protocol.packets import (
    CloseCode,
    CodePacket,
    End,
    EndReason,
    ErrorPacket,
    Hello,
    ModelInfo,
    encode_packet,
    stream_packets,
)

F = 16  # samples per coarse frame of the tiny models


def frames_of(codes: list[torch.Tensor], a: int, b: int) -> list[torch.Tensor]:
    return [codes[0][a:b], codes[1][2 * a : 2 * b]]


def decode_run(model, codes, a: int, b: int) -> np.ndarray:
    """Offline decode (seed 0) of frames a..b-1 as a stream of their own."""
    if b <= a:
        return np.zeros(0, np.float32)
    run = frames_of(codes, a, b)
    return model.decode([c.reshape(1, -1) for c in run], seed=0)[0, 0].float().numpy()


def expected_output(model, codes, kept: list[CodePacket], start: int, end: int) -> np.ndarray:
    """What the receiver must return for a stream whose ``kept`` packets arrived in order,
    from frame ``start`` to sample ``end``: runs decoded offline, silence in between."""
    parts, run_start, nxt = [], start, start
    for p in kept:
        if p.first_frame != nxt:  # a gap: close the run, add silence
            parts += [
                decode_run(model, codes, run_start, nxt),
                np.zeros((p.first_frame - nxt) * F, np.float32),
            ]
            run_start = p.first_frame
        nxt = p.first_frame + p.n_frames
    parts.append(decode_run(model, codes, run_start, nxt))
    out = np.concatenate(parts)
    total = end - start * F
    return np.concatenate([out, np.zeros(max(total - out.size, 0), np.float32)])[:total]


def feed(receiver: CodeReceiver, packets) -> np.ndarray:
    return np.concatenate([np.zeros(0, np.float32)] + [receiver.on_packet(p) for p in packets])


def make(n_samples: int = 1000, per_packet: int = 3, window: bool = False, stream_id: int = 1, seed: int = 0):
    model = tiny_model(window)
    info = ModelInfo.from_model(model)
    codes = offline_codes(model, audio(n_samples, seed))
    return model, info, codes, stream_packets(codes, info, n_samples, per_packet, stream_id=stream_id)


# ------------------------------------------------------------------------------ receiver


@pytest.mark.parametrize("window", [False, True])
def test_receiver_without_loss_equals_offline_and_trims_exactly(window):
    model, info, codes, packets = make(1001, 2, window)
    r = CodeReceiver(model, seed=0)
    out = feed(r, [encode_packet(p, info) for p in packets])  # bytes work too
    want = model.decode([c.reshape(1, -1) for c in codes], seed=0)[0, 0, :1001].numpy()
    np.testing.assert_allclose(out, want, atol=1e-5, rtol=0)
    s = r.stats
    assert out.size == s.samples_out == 1001 and s.streams_completed == 1 and s.samples_overrun == 0
    assert (s.frames_lost, s.gaps, s.packets_late, s.packets_lost) == (0, 0, 0, 0)


def test_lost_packet_is_concealed_with_counted_silence():
    model, info, codes, packets = make(1000, 3)
    r = CodeReceiver(model)
    kept = [p for i, p in enumerate(packets) if i not in (4, 9, 10)]
    out = feed(r, kept)
    body = [p for p in kept if isinstance(p, CodePacket)]
    np.testing.assert_allclose(out, expected_output(model, codes, body, 0, 1000), atol=1e-5, rtol=0)
    s = r.stats
    assert s.frames_lost == 9 and s.gaps == 2 and s.packets_lost == 3
    assert s.frames_received + s.frames_lost == packets[-1].total_frames
    assert s.samples_concealed == 9 * F


def test_reordered_and_duplicated_packets_are_discarded_and_counted():
    model, info, codes, packets = make(600, 2)
    order = list(range(len(packets)))
    order[5], order[6] = 6, 5  # 6 before 5: 5's frames are concealed, then 5 arrives late
    r = CodeReceiver(model)
    seq = [packets[i] for i in order]
    seq.insert(9, packets[8])  # a duplicate
    out = feed(r, seq)
    assert out.size == 600
    s = r.stats
    assert s.packets_late == 2 and s.frames_late == 4 and s.frames_lost == 2 and s.gaps == 1
    body = [p for p in packets if isinstance(p, CodePacket) and p.seq != 4]  # packets[5] is seq 4
    np.testing.assert_allclose(out, expected_output(model, codes, body, 0, 600), atol=1e-5, rtol=0)


def test_lost_tail_before_end_and_late_joiner():
    model, info, codes, packets = make(900, 4)
    r = CodeReceiver(model)
    out = feed(r, packets[:5] + packets[-1:])  # HELLO, 4 CODES, END: the rest is lost
    assert out.size == 900 and r.stats.frames_lost == packets[-1].total_frames - 16
    assert not out[16 * F :].any()
    # a late joiner (live_join) starts at its first CODES; what it missed is not silence
    r = CodeReceiver(model)
    out = feed(r, packets[:1] + packets[3:])
    assert r.stats.frames_missed_at_join == 8 and r.stats.frames_lost == 0
    assert out.size == 900 - 8 * F
    np.testing.assert_allclose(out, expected_output(model, codes, packets[3:-1], 8, 900), atol=1e-5, rtol=0)
    # with live_join=False the same frames are concealed, so the timeline starts at 0
    r = CodeReceiver(model, live_join=False)
    out = feed(r, packets[:1] + packets[3:])
    assert out.size == 900 and r.stats.frames_lost == 8 and not out[: 8 * F].any()


def test_stream_boundaries_resume_abort_error_close():
    model, info, codes, packets = make(500, 2)
    r = CodeReceiver(model)
    a = feed(r, packets[:4])
    assert feed(r, [packets[0]]).size == 0 and r.stats.streams_resumed == 1  # a reconnected listener
    # a new stream without END: the old one is aborted (flushed, untrimmed)
    other = make(300, 2, stream_id=2)[3]
    b = feed(r, other[:1])
    assert a.size + b.size == 6 * F and r.stats.streams_aborted == 1
    np.testing.assert_allclose(np.concatenate([a, b]), decode_run(model, codes, 0, 6), atol=1e-5, rtol=0)
    c = feed(r, other[1:])
    assert c.size == 300 and r.stats.streams == 2 and r.stats.streams_completed == 1
    feed(r, packets[:3])
    d = feed(r, [ErrorPacket(4019, "publisher failed")])
    assert d.size == 4 * F and r.stats.streams_aborted == 2 and r.stats.errors[0].code == 4019
    feed(r, packets[:2])
    assert r.close().size == 2 * F and not r.stream_open and r.stats.streams_aborted == 3


def test_bad_packets_raise_and_leave_the_receiver_usable():
    model, info, codes, packets = make(400, 2)
    r = CodeReceiver(model)
    with raises_packet_error(CloseCode.UNEXPECTED_PACKET):
        r.on_packet(packets[1])  # CODES before HELLO
    with raises_packet_error(CloseCode.MODEL_MISMATCH):
        r.on_packet(Hello(ModelInfo(24000, 512, (4, 2, 1), 4096, b"fingerpr"), 1))
    head = feed(r, packets[:2])
    for bad, code in (
        (CodePacket(99, 1, 2, packets[2].codes), CloseCode.UNEXPECTED_PACKET),  # another stream
        (End(1, 5, 1, 16), CloseCode.UNEXPECTED_PACKET),  # fewer frames than received
        (CodePacket(1, 1, 2, packets[2].codes[:1]), CloseCode.MALFORMED),  # a level missing
        (b"\x01\x02\x00", CloseCode.TRUNCATED),
        (b"\x01\x09", CloseCode.UNKNOWN_KIND),
    ):
        with raises_packet_error(code):
            r.on_packet(bad)
    out = np.concatenate([head, feed(r, packets[2:])])
    assert r.stats.streams_completed == 1 and r.stats.frames_lost == 0
    want = model.decode([c.reshape(1, -1) for c in codes], seed=0)[0, 0, :400].numpy()
    np.testing.assert_allclose(out, want, atol=1e-5, rtol=0)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 700),
    per_packet=st.integers(1, 5),
    drops=st.sets(st.integers(0, 60), max_size=6),
    swaps=st.sets(st.integers(0, 60), max_size=3),
    window=st.booleans(),
)
def test_any_loss_or_reordering_gives_exact_length_and_counts(n, per_packet, drops, swaps, window):
    model, info, codes, packets = make(n, per_packet, window)
    body = packets[1:-1]
    order = list(range(len(body)))
    for i in swaps:
        if i + 1 < len(order):
            order[i], order[i + 1] = order[i + 1], order[i]
    arrived = [body[i] for i in order if i not in drops]
    r = CodeReceiver(model, live_join=False)
    out = feed(r, [packets[0], *arrived, packets[-1]])
    s = r.stats
    total = packets[-1].total_frames
    assert out.size == n and s.streams_completed == 1
    assert s.frames_received + s.frames_lost == total
    in_order = []
    for p in arrived:
        if not in_order or p.first_frame >= in_order[-1].first_frame + in_order[-1].n_frames:
            in_order.append(p)
    assert s.packets_late == len(arrived) - len(in_order)
    np.testing.assert_allclose(out, expected_output(model, codes, in_order, 0, n), atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------ over the relay


def room(srv, name: str, role: str) -> str:
    return f"{srv.url}/rooms/{name}?role={role}"


def listeners(srv, name: str) -> int:
    r = srv.relay.rooms.get(name)
    return len(r.listeners) if r else 0


async def collect_until_end(stream) -> list:
    out = []
    async with asyncio.timeout(30):
        async for packet in stream:
            out.append(packet)
            if isinstance(packet, End):
                return out
    return out


async def decode_until_end(stream, receiver: CodeReceiver, ends: int = 1) -> tuple[list, np.ndarray]:
    packets, parts = [], []
    async with asyncio.timeout(30):
        async for packet in stream:
            packets.append(packet)
            parts.append(receiver.on_packet(packet))
            if isinstance(packet, End):
                ends -= 1
                if ends == 0:
                    break
    return packets, np.concatenate(parts)


@run_async
async def test_publisher_disconnect_mid_stream_gives_listeners_a_clear_end():
    model, info, codes, packets = make(1000, 2)
    async with serving() as srv:
        lis = listen(room(srv, "d", "listen"))
        receiver = CodeReceiver(model)
        task = asyncio.create_task(decode_until_end(lis, receiver))
        await wait_until(lambda: listeners(srv, "d") == 1)
        pub = await connect(room(srv, "d", "publish"))
        for p in packets[:6]:  # HELLO + 5 CODES = 10 frames
            await pub.send(encode_packet(p, info))
        await wait_until(lambda: srv.relay.rooms["d"].next_frame == 10)
        pub.transport.abort()  # network loss, no close frame
        got, out = await task
        assert got[-1] == End(1, 5, 10, 10 * F, EndReason.PUBLISHER_LOST)  # what was sent, untrimmed
        np.testing.assert_allclose(out, decode_run(model, codes, 0, 10), atol=1e-5, rtol=0)
        assert lis.stats.streams_aborted == 1 and receiver.stats.streams_aborted == 1
        await lis.aclose()


def _small_rcvbuf_socket(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    return sock


@run_async
async def test_stalled_listener_skips_with_counted_gaps_others_unaffected():
    n = 16 * 30000
    model, info, codes, packets = make(n, 500)  # 60 CODES packets of 500 frames (1.5 kB)
    async with serving(listener_queue=4, slow_listener="skip", write_limit=512) as srv:
        healthy = listen(room(srv, "s", "listen"))
        h_packets = asyncio.create_task(collect_until_end(healthy))
        stalled = listen(room(srv, "s", "listen"), sock=_small_rcvbuf_socket(srv.port), max_queue=1)
        first = asyncio.create_task(stalled.__anext__())  # connect, read the HELLO, then stall
        await wait_until(lambda: listeners(srv, "s") == 2)
        for session in srv.relay.rooms["s"].listeners:
            sock = session.connection.transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        stats = await publish(room(srv, "s", "publish"), packets)  # the sender is not held up
        assert stats.frames == packets[-1].total_frames
        await wait_until(lambda: srv.relay.rooms["s"].stats["packets_skipped"] > 0)
        assert await h_packets == packets  # the other listener got everything
        receiver = CodeReceiver(model)
        assert receiver.on_packet(await first).size == 0  # the HELLO
        rest, out = await decode_until_end(stalled, receiver)
        s, r = stalled.stats, receiver.stats
        skipped = srv.relay.rooms["s"].stats["frames_skipped"]
        assert s.frames_lost + s.frames_missed_at_join == skipped > 0
        assert r.frames_received + r.frames_lost + r.frames_missed_at_join == packets[-1].total_frames
        assert r.gaps > 0 and out.size == n - r.frames_missed_at_join * F
        body = [p for p in rest if isinstance(p, CodePacket)]
        want = expected_output(model, codes, body, body[0].first_frame, n)
        np.testing.assert_allclose(out, want, atol=1e-5, rtol=0)
        await healthy.aclose()
        await stalled.aclose()


@run_async
async def test_server_restart_clients_reconnect_and_resume_a_new_stream():
    model, info, codes, packets = make(16 * 40, 1)  # HELLO, 40 CODES of 1 frame, END
    go_on = asyncio.Event()

    async def source():
        for i, p in enumerate(packets):
            if i == 11:  # HELLO + 10 CODES sent: wait for the restart
                await go_on.wait()
            yield p
            await asyncio.sleep(0.002)

    retry = dict(reconnect=True, backoff_initial=0.05, backoff_max=0.5, max_retries=100)
    receiver = CodeReceiver(model)
    async with serving() as server:
        port = server.port
        lis = listen(room(server, "r", "listen"), **retry)
        received = asyncio.create_task(decode_until_end(lis, receiver, ends=2))
        await wait_until(lambda: listeners(server, "r") == 1)
        publisher = asyncio.create_task(publish(room(server, "r", "publish"), source(), **retry))
        await wait_until(lambda: "r" in server.relay.rooms and server.relay.rooms["r"].next_frame == 10)
    # the server went away (listeners got END SHUTDOWN, everyone 1001); clients retry meanwhile
    await asyncio.sleep(0.2)
    async with serving(port=port) as server2:
        await wait_until(lambda: listeners(server2, "r") == 1)
        go_on.set()
        pub_stats = await publisher
        got, out = await received
    ends = [p for p in got if isinstance(p, End)]
    assert ends[0] == End(1, 10, 10, 10 * F, EndReason.SHUTDOWN)
    assert ends[1] == End(2, 30, 30, 30 * F, EndReason.COMPLETE)  # a new stream: id + 1, counted from 0
    assert [p.stream_id for p in got if isinstance(p, Hello)] == [1, 2]
    assert pub_stats.reconnects == 1 and pub_stats.streams_restarted == 1 and pub_stats.close_code == 1001
    s = lis.stats
    assert s.reconnects >= 1 and s.streams == 2 and s.streams_aborted == 1 and s.streams_completed == 1
    assert s.frames_lost == 0 and s.frames_missed_at_join == 0
    # audio: frames 0-9 (cut off, untrimmed), then frames 10-39 as a new stream, trimmed
    want = np.concatenate([decode_run(model, codes, 0, 10), decode_run(model, codes, 10, 40)])
    np.testing.assert_allclose(out, want, atol=1e-5, rtol=0)
    assert receiver.stats.streams_aborted == 1 and receiver.stats.streams_completed == 1
    await lis.aclose()


@run_async
async def test_publisher_waits_for_a_server_that_is_not_up_yet():
    model, info, codes, packets = make(16 * 8, 2)
    with socket.socket() as s:  # a free port, nobody listening yet
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"ws://127.0.0.1:{port}/rooms/w?role=publish"
    publisher = asyncio.create_task(
        publish(url, packets, reconnect=True, backoff_initial=0.05, backoff_max=0.2)
    )
    await asyncio.sleep(0.3)  # refused meanwhile, retried with backoff
    assert not publisher.done()
    async with serving(port=port) as srv:
        stats = await publisher
        await wait_until(lambda: "w" not in srv.relay.rooms)
        assert srv.relay.stats["rooms_created"] == 1
    assert (
        stats.connections == 1 and stats.streams == 1 and stats.frames == 8 and stats.streams_restarted == 0
    )

"""Fuzz: the packet parser (hypothesis) and a live server (seeded random mutations).

Every case is counted in ``COUNTS``; ``test_total_fuzz_cases`` asserts at least 10,000.

- Parser: random bytes, targeted corruptions of valid packets of random models (each must
  raise its *specific* error class), random streams through the relay's validator.
- Live server (127.0.0.1, tiny model): thousands of mutated packets to a relay room
  (truncated, oversized, wrong version/kind, random fields, reordered, dropped, duplicated,
  text frames, ...), each connection's close code predicted exactly by running the same
  messages through a local ``Room``; what the room's listener receives is predicted too.
  ``/decode`` and ``/encode`` get streams with one bad message at a random place (specific
  codes) and valid ones (exact results). Meanwhile a healthy room and healthy
  ``/encode``/``/decode`` sessions keep streaming and are checked exactly; at the end the
  server has had no internal error.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import struct

import numpy as np
import pytest
import torch
from conftest import raises_packet_error
from hypothesis import given, settings
from hypothesis import strategies as st
from test_endpoints import (
    audio,
    close_code,
    exchange,
    join_codes,
    offline_audio,
    offline_codes,
    run_async,
    serving,
    tiny_model,
    wait_until,
)
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from snac_stream.net.client import listen, publish, remote_decode, remote_encode
from snac_stream.net.relay import RelayConfig, Room
from snac_stream.protocol.packets import (
    PROTOCOL_VERSION,
    CloseCode,
    End,
    EndReason,
    ErrorPacket,
    Hello,
    Kind,
    ModelInfo,
    PacketError,
    decode_header,
    decode_packet,
    encode_packet,
    pack_codes,
    stream_packets,
)

COUNTS: collections.Counter[str] = collections.Counter()
QUOTAS = {"garbage": 2500, "targeted": 3000, "relay_streams": 1500, "server_relay": 2500, "server_model": 500}
assert sum(QUOTAS.values()) >= 10_000

FP = bytes(range(8))
INFOS = [
    ModelInfo(24000, 512, (4, 2, 1), 4096, FP),
    ModelInfo(32000, 384, (8, 4, 2, 1), 4096, FP),
    ModelInfo(8000, 80, (3, 1), 3000, FP),  # codebook not a power of 2: codes can be out of range
    ModelInfo(16000, 8, (2, 1), 256, FP),
    ModelInfo(12000, 12, (4, 4, 2, 1, 1), 100, FP),
]


def random_stream(
    rng: np.random.Generator, info: ModelInfo, n_frames: int, per_packet: int, sid: int
) -> list:
    codes = [
        torch.from_numpy(rng.integers(0, info.codebook_size, n_frames * r)) for r in info.codes_per_level
    ]
    total = n_frames * info.frame_size - int(rng.integers(0, info.frame_size))
    return stream_packets(codes, info, total, per_packet, stream_id=sid)


# ------------------------------------------------------------------------------ parser


@settings(max_examples=QUOTAS["garbage"], deadline=None)
@given(data=st.binary(max_size=300), info=st.sampled_from([None, *INFOS]), limit=st.integers(1, 400))
def test_fuzz_garbage_bytes_raise_only_packet_errors(data, info, limit):
    COUNTS["garbage"] += 1
    for fn in (decode_header, decode_packet):
        try:
            fn(data, info, limit)
        except PacketError:
            pass


@functools.cache
def packet_pool(info_index: int, n_frames: int) -> list[bytes]:
    """Every kind of packet (HELLO, CODES, END, ERROR) of a random stream, encoded."""
    info = INFOS[info_index]
    packets = random_stream(np.random.default_rng(n_frames), info, n_frames, 2, 7)
    return [encode_packet(p, info) for p in [*packets, ErrorPacket(4321, "oops ünïcode")]]


MUTATIONS = [
    "truncate",
    "extend",
    "version",
    "kind",
    "oversize",
    "out_of_range",
    "padding",
    "zero_frames",
    "end_reason",
    "hello_levels",
    "random_byte",
]


def _codes_with(info: ModelInfo, n_frames: int, value: int, at: int) -> bytes:
    flat = np.zeros(n_frames * info.codes_per_frame, dtype=np.int64)
    flat[at % flat.size] = value
    return struct.pack("<BBIIIH", PROTOCOL_VERSION, Kind.CODES, 1, 0, 0, n_frames) + pack_codes(
        flat, info.bits_per_code
    )


@settings(max_examples=QUOTAS["targeted"], deadline=None)
@given(
    info=st.sampled_from(INFOS),
    mutation=st.sampled_from(MUTATIONS),
    which=st.integers(0, 1000),
    position=st.integers(0, 10_000),
    value=st.integers(0, 255),
    n_frames=st.integers(1, 6),
)
def test_fuzz_targeted_corruptions_raise_their_specific_error(
    info, mutation, which, position, value, n_frames
):
    """Each kind of corruption of a valid packet gives its own close code."""
    COUNTS["targeted"] += 1
    pool = packet_pool(INFOS.index(info), n_frames)
    data = bytearray(pool[which % len(pool)])
    expect: CloseCode | None
    if mutation == "truncate":
        data, expect = data[: position % len(data)], CloseCode.TRUNCATED
    elif mutation == "extend":
        data, expect = data + bytes([value]) * (1 + position % 20), CloseCode.MALFORMED
    elif mutation == "version":
        data[0], expect = value if value != PROTOCOL_VERSION else 0, CloseCode.UNSUPPORTED_VERSION
    elif mutation == "kind":
        data[1], expect = value if value not in (1, 2, 3, 4) else 0, CloseCode.UNKNOWN_KIND
    elif mutation == "oversize":
        with raises_packet_error(CloseCode.OVERSIZED):
            decode_packet(bytes(data), info, max_size=len(data) - 1)
        return
    elif mutation == "out_of_range":
        if info.codebook_size == 1 << info.bits_per_code:  # every bit pattern is a valid code
            info = INFOS[2]  # codebook 3000 in 12 bits
        bad = info.codebook_size + value % ((1 << info.bits_per_code) - info.codebook_size)
        data, expect = bytearray(_codes_with(info, n_frames, bad, position)), CloseCode.CODE_OUT_OF_RANGE
    elif mutation == "padding":
        if n_frames * info.codes_per_frame * info.bits_per_code % 8 == 0:  # no padding bits
            info, n_frames = INFOS[4], 1  # 12 codes of 7 bits: 4 padding bits
        data = bytearray(_codes_with(info, n_frames, 0, 0))
        data[-1] |= 0x80
        expect = CloseCode.MALFORMED
    elif mutation == "zero_frames":
        data = bytearray(_codes_with(info, 1, 0, 0))
        struct.pack_into("<H", data, 14, 0)
        expect = CloseCode.MALFORMED
    elif mutation == "end_reason":
        end = bytearray(encode_packet(End(1, 2, 3, 4)))
        end[22], data, expect = max(value, len(EndReason)), end, CloseCode.MALFORMED
    elif mutation == "hello_levels":
        hello = bytearray(encode_packet(Hello(info, 1)))
        hello[26] = 0 if value % 2 else 17
        data, expect = hello, CloseCode.MALFORMED
    else:  # random byte: anything but a crash
        data[position % len(data)] = value
        expect = None
    try:
        decode_packet(bytes(data), info)
    except PacketError as e:
        assert expect is None or e.code == expect, (mutation, e.code, e)
        assert 4000 <= e.code <= 4999
    else:
        assert expect is None, f"{mutation}: no error"


# ------------------------------------------------------------------------------ mutated streams


class _Collector:
    """Stands in for a listener of an oracle Room: records what the relay would forward."""

    def __init__(self) -> None:
        self.items: list[bytes] = []

    def offer(self, data: bytes, kind: Kind, n_frames: int = 0, force: bool = False) -> None:
        self.items.append(data)


def fuzz_messages(rng: np.random.Generator, limit: int, p_mutate: float = 0.04) -> list[bytes | str]:
    """A random stream (random model, packet sizes, with or without END), then mutations."""
    info = INFOS[int(rng.integers(len(INFOS)))]
    n = int(rng.integers(1, 60))
    packets = random_stream(rng, info, n, int(rng.integers(1, 5)), int(rng.integers(0, 2**32)))
    if rng.random() < 0.2:
        packets = packets[: int(rng.integers(1, len(packets)))]  # the publisher leaves mid-stream
    msgs: list[bytes | str] = [encode_packet(p, info) for p in packets]
    i = 0
    while i < len(msgs):
        if rng.random() < p_mutate:
            i = _mutate(rng, msgs, i, limit, info)
        i += 1
    return msgs


def _mutate(rng: np.random.Generator, msgs: list, i: int, limit: int, info: ModelInfo) -> int:
    op = str(rng.choice(MESSAGE_OPS))
    m = msgs[i] if isinstance(msgs[i], bytes) else b"\x01"
    if op == "byte":
        b = bytearray(m)
        b[int(rng.integers(len(b)))] = int(rng.integers(256))
        msgs[i] = bytes(b)
    elif op == "truncate":
        msgs[i] = m[: int(rng.integers(len(m)))]
    elif op == "extend":
        msgs[i] = m + rng.bytes(int(rng.integers(1, 8)))
    elif op == "version":
        msgs[i] = bytes([int(rng.integers(2, 256))]) + m[1:]
    elif op == "kind":
        msgs[i] = m[:1] + bytes([int(rng.choice([0, 5, 9, 255]))]) + m[2:]
    elif op == "random":
        msgs[i] = rng.bytes(int(rng.integers(0, 64)))
    elif op == "text":
        msgs[i] = "not a packet"
    elif op == "oversize":
        msgs[i] = m[:2] + bytes(int(rng.integers(limit - 1, 2 * limit - 1)))
    elif op == "huge":  # beyond 2 x limit: the WebSocket layer refuses it (1009)
        msgs[i] = m[:2] + bytes(2 * limit + int(rng.integers(1, 100)))
    elif op == "field" and len(m) >= 14:
        b = bytearray(m)
        struct.pack_into("<I", b, int(rng.choice([2, 6, 10])), int(rng.integers(0, 2**32)))
        msgs[i] = bytes(b)
    elif op == "drop":
        del msgs[i]
        return i - 1
    elif op == "dup":
        msgs.insert(i, m)
        return i + 1
    elif op == "swap" and i + 1 < len(msgs):
        msgs[i], msgs[i + 1] = msgs[i + 1], msgs[i]
        return i + 1
    elif op == "error":
        msgs.insert(i, encode_packet(ErrorPacket(int(rng.integers(4000, 5000)), "publisher gave up")))
        return i + 1
    elif op == "hello":
        msgs.insert(i, encode_packet(Hello(info, int(rng.integers(0, 2**32)))))
        return i + 1
    return i


MESSAGE_OPS = [
    "byte",
    "truncate",
    "extend",
    "version",
    "kind",
    "random",
    "text",
    "oversize",
    "huge",
    "field",
    "drop",
    "dup",
    "swap",
    "error",
    "hello",
]


def predict_relay(room: Room, msgs: list, limit: int) -> tuple[int | None, int]:
    """Run one publisher connection through an oracle Room: (index of the message that
    closes it or None, close code). Mirrors the relay's publisher loop."""
    fail, code = None, 1000
    for i, m in enumerate(msgs):
        if isinstance(m, str):
            fail, code = i, 4010
        elif len(m) > 2 * limit:
            fail, code = i, 1009
        else:
            try:
                room.publish(m)
                continue
            except PacketError as e:
                fail, code = i, e.code
        break
    if room.stream_open:
        room.end_stream(EndReason.PUBLISHER_LOST)
    return fail, code


@settings(max_examples=QUOTAS["relay_streams"], deadline=None)
@given(seed=st.integers(0, 2**63))
def test_fuzz_relay_validator_on_mutated_streams(seed):
    """The relay's checks raise only PacketErrors (4000-4999) and keep the room consistent."""
    COUNTS["relay_streams"] += 1
    rng = np.random.default_rng(seed)
    room = Room("oracle", RelayConfig(max_message_size=4096))
    sink = _Collector()
    room.listeners.add(sink)
    for _ in range(2):  # two publishers in a row: the second starts clean after PUBLISHER_LOST
        fail, code = predict_relay(room, fuzz_messages(rng, 4096, p_mutate=0.1), 4096)
        assert (fail is None and code == 1000) or code in (1009, 4010) or 4000 <= code <= 4008
        assert not room.stream_open
    for item in sink.items:  # what listeners get always parses
        decode_header(item)


# ------------------------------------------------------------------------------ live server


@contextlib.asynccontextmanager
async def healthy_traffic(srv, model):
    """Meanwhile: a healthy room and /encode + /decode sessions, all checked exactly."""
    stop = asyncio.Event()
    info = ModelInfo.from_model(model)
    done = collections.Counter()

    async def room_loop():
        lis = listen(f"{srv.url}/rooms/healthy?role=listen")
        first = asyncio.create_task(lis.__anext__())
        await wait_until(lambda: "healthy" in srv.relay.rooms and srv.relay.rooms["healthy"].listeners)
        rng = np.random.default_rng(0)
        pending = [first]
        while not stop.is_set() or not done["streams"]:
            packets = random_stream(rng, info, int(rng.integers(5, 40)), 2, int(rng.integers(0, 2**32)))

            async def paced(packets=packets):
                for p in packets:
                    yield p
                    await asyncio.sleep(0.001)

            await publish(f"{srv.url}/rooms/healthy?role=publish", paced())
            got = [await pending.pop() if pending else await lis.__anext__()]
            while not isinstance(got[-1], End):
                got.append(await lis.__anext__())
            assert got == packets
            assert lis.stats.frames_lost == 0 and lis.stats.frames_missed_at_join == 0
            done["streams"] += 1
            await wait_until(lambda: srv.relay.rooms["healthy"].publisher is None)
        await lis.aclose()

    async def model_loop():
        k = 0
        while not stop.is_set() or not done["model"]:
            pcm = audio(300 + 37 * k, k)
            packets = await remote_encode(srv.url, pcm, sample_rate=16000, chunk_samples=50 + k)
            want = offline_codes(model, pcm)
            assert all(torch.equal(a, b) for a, b in zip(join_codes(packets), want, strict=True))
            got = await remote_decode(srv.url, packets)
            np.testing.assert_allclose(got, offline_audio(model, want, pcm.size), atol=1e-5, rtol=0)
            done["model"] += 1
            k += 1

    tasks = [asyncio.create_task(room_loop()), asyncio.create_task(model_loop())]
    try:
        yield done
        stop.set()
        async with asyncio.timeout(30):
            await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
    assert done["streams"] >= 1 and done["model"] >= 1


FUZZ_CONFIG = dict(max_message_size=4096, listener_queue=4096, max_model_sessions=8, model_rate=1e6)


def assert_healthy_server(srv) -> None:
    assert srv.counters["handler_errors"] == 0  # no INTERNAL_ERROR: every failure was specific
    assert not srv.stopping and srv.relay.stats["rejected_too_many_rooms"] == 0


@run_async
async def test_fuzz_live_relay_with_exact_close_codes():
    limit = FUZZ_CONFIG["max_message_size"]
    model = tiny_model()
    rng = np.random.default_rng(2024)
    oracle = Room("fuzz", RelayConfig(max_message_size=limit))
    expected = _Collector()
    oracle.listeners.add(expected)
    closes: collections.Counter[int] = collections.Counter()
    async with serving(model, **FUZZ_CONFIG) as srv, healthy_traffic(srv, model):
        async with connect(f"{srv.url}/rooms/fuzz?role=listen", max_size=None) as lis:
            got: list[bytes] = []

            async def read():
                async for m in lis:
                    got.append(m)

            reader = asyncio.create_task(read())
            await wait_until(lambda: "fuzz" in srv.relay.rooms)
            sent = 0
            while sent < QUOTAS["server_relay"]:
                msgs = fuzz_messages(rng, limit)
                fail, code = predict_relay(oracle, msgs, limit)
                to_send = msgs if fail is None else msgs[: fail + 1]
                async with connect(f"{srv.url}/rooms/fuzz?role=publish", max_size=None) as ws:
                    with contextlib.suppress(ConnectionClosed):  # the server may close first (1009)
                        for m in to_send:
                            await ws.send(m)
                    if fail is None:
                        await ws.close()
                        rcvd = ws.protocol.close_rcvd
                        actual = rcvd.code if rcvd else None
                    else:
                        actual = await close_code(ws)
                assert actual == code, (fail, len(msgs), msgs[fail] if fail is not None else None)
                closes[code] += 1
                sent += len(to_send)
                COUNTS["server_relay"] += len(to_send)
                await wait_until(lambda: srv.relay.rooms["fuzz"].publisher is None)
            await wait_until(lambda: len(got) >= len(expected.items), timeout=20)
            assert got == expected.items  # the listener got exactly what the relay accepted
            reader.cancel()
        assert_healthy_server(srv)
    # the mix covered every outcome
    assert closes[1000] and closes[1009] and closes[4010]
    assert {4001, 4002, 4003, 4004, 4005, 4008} <= set(closes)


def decode_cases(rng: np.random.Generator, info: ModelInfo, limit: int):
    """(messages, expected close code, expected PCM samples or None) for /decode."""
    n = int(rng.integers(1, 20))
    packets = random_stream(rng, info, n, int(rng.integers(1, 4)), 5)
    msgs: list[bytes | str] = [encode_packet(p, info) for p in packets]
    total = packets[-1].total_samples
    kind = str(rng.choice(DECODE_CASES))
    if kind == "valid":
        return msgs, 1000, total
    if kind == "gap" and len(msgs) > 3:
        del msgs[int(rng.integers(1, len(msgs) - 1))]  # concealed with silence, same length
        return msgs, 1000, total
    if kind == "mismatch":
        other = INFOS[int(rng.integers(len(INFOS)))]
        return [encode_packet(Hello(other, 1))], 4007 if other != info else 1000, None
    if kind == "before_hello":
        return msgs[1:], 4008, None
    k = int(rng.integers(1, len(msgs)))
    good, m = msgs[:k], msgs[k] if k < len(msgs) - 1 else msgs[1]
    bad: dict[str, tuple[bytes | str, int]] = {
        "truncate": (m[: int(rng.integers(2, len(m)))], 4001),
        "oversize": (b"\x01\x02" + bytes(limit), 4002),
        "version": (b"\x07" + m[1:], 4003),
        "kind": (m[:1] + b"\x08" + m[2:], 4004),
        "extend": (m + b"\x00", 4005),
        "stream_id": (m[:2] + struct.pack("<I", 6) + m[6:], 4008),
        "hello_again": (msgs[0], 4008),
        "text": ("hello?", 4010),
        "huge": (bytes(2 * limit + 1), 1009),
        "end_short": (encode_packet(End(5, k, 0, 0)), 4008 if k > 1 else 1000),
        "random": (rng.bytes(int(rng.integers(0, 40))), -1),
    }
    kind = str(rng.choice(list(bad)))
    message, code = bad[kind]
    expect = None if code != 1000 else 0
    return [*good, message], code, expect


DECODE_CASES = ["valid", "gap", "mismatch", "before_hello", "bad", "bad", "bad", "bad"]


@run_async
async def test_fuzz_live_decode_and_encode_endpoints():
    model = tiny_model()
    info = ModelInfo.from_model(model)
    limit = FUZZ_CONFIG["max_message_size"]
    rng = np.random.default_rng(7)
    closes: collections.Counter[int] = collections.Counter()
    async with serving(model, **FUZZ_CONFIG) as srv, healthy_traffic(srv, model):
        sent = 0
        while sent < QUOTAS["server_model"] // 2:
            msgs, code, samples = decode_cases(rng, info, limit)
            received, actual, reason = await exchange(f"{srv.url}/decode", msgs)
            if code == -1:  # random bytes: any specific protocol error (or a valid ERROR packet)
                assert actual == 1000 or 4000 <= actual <= 4008, reason
            else:
                assert actual == code, (code, actual, reason)
            if samples is not None:
                assert sum(len(m) for m in received) == 4 * samples
            closes[actual] += 1
            sent += len(msgs)
        COUNTS["server_model"] += sent
        sent = 0
        while sent < QUOTAS["server_model"] - COUNTS["server_model"]:
            msgs, query, code, pcm = encode_case(rng, limit)
            received, actual, reason = await exchange(f"{srv.url}/encode?{query}", msgs)
            assert actual == code, (query, code, actual, reason)
            if code == 1000:
                packets = [decode_packet(received[0])]
                packets += [decode_packet(m, info) for m in received[1:]]
                want = offline_codes(model, pcm)
                assert all(torch.equal(a, b) for a, b in zip(join_codes(packets), want, strict=True))
                assert packets[-1].total_samples == pcm.size
            closes[actual] += 1
            sent += max(len(msgs), 1)
        COUNTS["server_model"] += sent
        assert_healthy_server(srv)
        assert srv.endpoints.active <= 2  # only the healthy sessions
    assert {1000, 1009, 4001, 4002, 4003, 4004, 4005, 4007, 4008, 4010} <= set(closes)
    assert {4018, 4020, 4021, 4022} <= set(closes)


def encode_case(rng: np.random.Generator, limit: int):
    """(messages, query, expected close code, the PCM sent) for /encode."""
    fmt = str(rng.choice(["f32le", "s16le"]))
    size = 4 if fmt == "f32le" else 2
    pcm = audio(int(rng.integers(1, 1500)), int(rng.integers(1000)))
    if fmt == "s16le":
        pcm = (np.round(pcm * 32768) / 32768).astype(np.float32)
        data = (pcm * 32768).astype("<i2").tobytes()
    else:
        data = pcm.astype("<f4").tobytes()
    step = size * int(rng.integers(1, limit // size))
    msgs: list[bytes | str] = [data[i : i + step] for i in range(0, len(data), step)]
    query = f"format={fmt}&rate=16000"
    kind = str(rng.choice(["valid", "valid", "query", "bad", "bad"]))
    if kind == "valid":
        return [*msgs, b""], query, 1000, pcm
    if kind == "query":
        query, code = [("format=wav", 4020), ("rate=8000", 4021), ("rate=x", 4018)][int(rng.integers(3))]
        return [], query, code, pcm
    k = int(rng.integers(0, len(msgs) + 1))
    bad = [
        (b"\x00" * (size * 3 + 1), 4022),
        ("pcm as text", 4010),
        (bytes(limit + size), 4002),
        (bytes(2 * limit + size), 1009),
    ]
    if fmt == "f32le":
        bad.append((np.array([0.5, np.inf], "<f4").tobytes(), 4022))
    message, code = bad[int(rng.integers(len(bad)))]
    return [*msgs[:k], message], query, code, pcm


# ------------------------------------------------------------------------------ total


def test_total_fuzz_cases():
    """Runs last in this file: at least 10,000 fuzz cases were executed and counted."""
    if set(COUNTS) != set(QUOTAS):
        pytest.skip("run the whole file to count every fuzz case")
    for name, quota in QUOTAS.items():
        assert COUNTS[name] >= quota, (name, COUNTS[name], quota)
    total = sum(COUNTS.values())
    print(f"\nfuzz cases: {total} ({dict(COUNTS)})")
    assert total >= 10_000

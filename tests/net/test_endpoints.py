"""/encode and /decode: a real server on 127.0.0.1 running tiny models.

The helpers here (``tiny_model``, ``serving``, ``close_code``, ...) are shared with the
other network tests (test_faults, test_fuzz_server, test_load).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools

import numpy as np
import pytest
import torch
from conftest import close_code, run_async, wait_until
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

import snac_model
from snac_stream.net.client import RelayError, remote_decode, remote_encode
from snac_stream.net.endpoints import TokenBucket, add_model_endpoints
from snac_stream.net.server import Server, ServerConfig
from snac_stream.protocol.packets import (
    CloseCode,
    CodePacket,
    End,
    EndReason,
    Hello,
    ModelInfo,
    decode_packet,
    encode_packet,
    stream_packets,
)

# ------------------------------------------------------------------------------ helpers


@functools.cache
def tiny_model(window: bool = False) -> snac_model.SNAC:
    """16 kHz, hop 8, strides (2, 1): 16-sample coarse frames, 256 codes. ``window``: local
    attention over 4 latent frames, so ``pad_multiple`` (32) is two coarse frames."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1 if window else 0)
        model = snac_model.SNAC(
            sampling_rate=16000,
            encoder_dim=16 if window else 8,
            encoder_rates=[2, 4],
            decoder_dim=64,
            decoder_rates=[4, 2],
            attn_window_size=4 if window else None,
            vq_strides=[2, 1],
            codebook_size=256,
        )
    return model.eval()


def audio(n: int, seed: int = 0) -> np.ndarray:
    g = np.random.default_rng(seed)
    t = np.arange(n)
    x = 0.3 * np.sin(2 * np.pi * 440 * t / 16000) + 0.1 * g.standard_normal(n)
    return x.astype(np.float32)


def offline_codes(model, pcm: np.ndarray) -> list[torch.Tensor]:
    return [c[0] for c in model.encode(torch.from_numpy(pcm).reshape(1, 1, -1).to(model.dtype))]


def offline_audio(model, codes: list[torch.Tensor], n: int, seed: int = 0) -> np.ndarray:
    return model.decode([c.reshape(1, -1) for c in codes], seed=seed)[0, 0, :n].float().numpy()


def join_codes(packets: list) -> list[torch.Tensor]:
    body = [p for p in packets if isinstance(p, CodePacket)]
    return [torch.cat([p.codes[i] for p in body]) for i in range(len(body[0].codes))]


@contextlib.asynccontextmanager
async def serving(model=None, seed: int = 0, **overrides):
    """A started Server on a free port, with /encode and /decode for ``model`` if given."""
    config = ServerConfig(**{"port": 0, "close_timeout": 10.0, **overrides})
    server = Server(config)
    if model is not None:
        server.endpoints = add_model_endpoints(server, model, seed=seed)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def exchange(url: str, messages: list, timeout: float = 20.0) -> tuple[list, int | None, str]:
    """Send ``messages`` while reading everything back: (messages received, close code, reason)."""
    async with connect(url, max_size=None) as ws:
        received: list = []

        async def reader():
            try:
                async for m in ws:
                    received.append(m)
            except ConnectionClosed:
                pass

        task = asyncio.create_task(reader())
        try:
            for m in messages:
                await ws.send(m)
        except ConnectionClosed:
            pass
        async with asyncio.timeout(timeout):
            await task
    rcvd = ws.protocol.close_rcvd
    return received, (rcvd.code if rcvd else None), (rcvd.reason if rcvd else "")


def random_chunks(data: bytes, sample_size: int, seed: int, max_samples: int = 700) -> list[bytes]:
    g = np.random.default_rng(seed)
    out, pos = [], 0
    while pos < len(data):
        n = int(g.integers(1, max_samples)) * sample_size
        out.append(data[pos : pos + n])
        pos += n
    return out


# ------------------------------------------------------------------------------ /encode


@pytest.mark.parametrize("window", [False, True])
@run_async
async def test_encode_matches_offline_for_random_chunks(window):
    model = tiny_model(window)
    info = ModelInfo.from_model(model)
    async with serving(model) as srv:
        for seed, n in enumerate([1, 999, 4000, 16 * 64]):
            pcm = audio(n, seed)
            chunks = random_chunks(pcm.astype("<f4").tobytes(), 4, seed)
            url = f"{srv.url}/encode?format=f32le&rate=16000&stream_id={seed + 5}"
            received, code, _ = await exchange(url, [*chunks, b""])
            assert code == 1000
            packets, pinfo = [], None
            for m in received:
                packets.append(decode_packet(m, pinfo))
                pinfo = pinfo or packets[0].info
            assert packets[0] == Hello(info, seed + 5)
            codes = join_codes(packets)
            for got, want in zip(codes, offline_codes(model, pcm), strict=True):
                assert torch.equal(got, want)
            body = packets[1:-1]
            assert [p.seq for p in body] == list(range(len(body)))
            assert body[0].first_frame == 0 and sum(p.n_frames for p in body) == codes[0].numel()
            assert n < 999 or max(p.n_frames for p in body) > 1  # whole frames as they become final
            assert packets[-1] == End(seed + 5, len(body), codes[0].numel(), n)


@run_async
async def test_encode_s16le_and_client_helper():
    model = tiny_model()
    async with serving(model) as srv:
        pcm16 = (audio(3000, 7) * 32767).astype(np.int16)
        packets = await remote_encode(srv.url, pcm16, sample_rate=16000, fmt="s16le", chunk_samples=333)
        want = offline_codes(model, pcm16.astype(np.float32) / 32768)
        assert all(torch.equal(a, b) for a, b in zip(join_codes(packets), want, strict=True))
        assert packets[-1].total_samples == 3000
        # no audio at all: HELLO then END(0 frames, 0 samples)
        empty = await remote_encode(srv.url, np.zeros(0, np.float32))
        assert isinstance(empty[0], Hello) and empty[1] == End(empty[0].stream_id, 0, 0, 0)
        assert srv.counters["encode_streams_completed"] == 2


@pytest.mark.parametrize(
    ("query", "messages", "code"),
    [
        ("format=mp3&rate=16000", [], CloseCode.UNSUPPORTED_FORMAT),
        ("format=f32le&rate=44100", [], CloseCode.RATE_MISMATCH),
        ("rate=sixteen", [], CloseCode.BAD_REQUEST),
        ("stream_id=-1", [], CloseCode.BAD_REQUEST),
        ("format=f32le", [b"\0" * 6], CloseCode.BAD_PCM),  # not a multiple of 4 bytes
        ("format=s16le", [b"\0" * 4, b"\0"], CloseCode.BAD_PCM),
        ("format=f32le", [np.array([0.0, np.nan], "<f4").tobytes()], CloseCode.BAD_PCM),
        ("format=f32le", ["text"], CloseCode.TEXT_FRAME),
        ("format=f32le", [b"\0" * 2048], CloseCode.OVERSIZED),  # > max_message_size 1024
        ("format=f32le", [b"\0" * 4096], 1009),  # > 2 x max_message_size: the WebSocket layer
    ],
)
@run_async
async def test_encode_refuses_bad_requests(query, messages, code):
    async with serving(tiny_model(), max_message_size=1024) as srv:
        received, got, reason = await exchange(f"{srv.url}/encode?{query}", messages)
        assert got == code, reason
        assert reason
        # the server keeps working
        packets = await remote_encode(srv.url, audio(100), sample_rate=16000)
        assert isinstance(packets[-1], End) and packets[-1].total_samples == 100


@run_async
async def test_unknown_subpath_is_a_bad_request():
    async with serving(tiny_model()) as srv:
        _, code, _ = await exchange(f"{srv.url}/encode/x", [])
        assert code == CloseCode.BAD_REQUEST


# ------------------------------------------------------------------------------ /decode


@pytest.mark.parametrize("window", [False, True])
@run_async
async def test_decode_matches_offline_and_trims_exactly(window):
    model = tiny_model(window)
    info = ModelInfo.from_model(model)
    async with serving(model) as srv:
        for seed, (n, per_packet) in enumerate([(1, 1), (17, 1), (1000, 3), (1024, 64), (2500, 7)]):
            codes = offline_codes(model, audio(n, seed))
            packets = stream_packets(codes, info, n, per_packet, stream_id=seed)
            got = await remote_decode(srv.url, packets)
            want = offline_audio(model, codes, n)
            assert got.dtype == np.float32 and got.shape == (n,)
            np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


@run_async
async def test_decode_seed_and_raw_bytes():
    model = tiny_model()
    info = ModelInfo.from_model(model)
    async with serving(model, seed=123) as srv:
        codes = offline_codes(model, audio(800))
        packets = [encode_packet(p, info) for p in stream_packets(codes, info, 800, 2)]
        got = await remote_decode(srv.url, packets)
        np.testing.assert_allclose(got, offline_audio(model, codes, 800, seed=123), atol=1e-5, rtol=0)


@run_async
async def test_decode_reads_each_packet_once(monkeypatch):
    """/decode reads a packet's header once (limits, order, rate) and its body once (codes)."""
    import snac_stream.net.endpoints as endpoints_module
    import snac_stream.protocol.packets as packets_module

    reads: dict[str, list[int]] = {"decode_header": [], "decode_body": []}
    for name, calls in reads.items():
        real = getattr(packets_module, name)

        def counting(data, *args, _real=real, _calls=calls, **kwargs):
            _calls.append(data[1])  # the kind byte
            return _real(data, *args, **kwargs)

        monkeypatch.setattr(packets_module, name, counting)
        monkeypatch.setattr(endpoints_module, name, counting)
    model = tiny_model()
    info = ModelInfo.from_model(model)
    codes = offline_codes(model, audio(300))
    packets = stream_packets(codes, info, 300, 4)
    async with serving(model) as srv:
        got = await remote_decode(srv.url, packets)
    np.testing.assert_allclose(got, offline_audio(model, codes, 300), atol=1e-5, rtol=0)
    kinds = [encode_packet(p, info)[1] for p in packets]
    assert reads == {"decode_header": kinds, "decode_body": kinds}


@run_async
async def test_server_stop_closes_the_batched_engines():
    from snac_stream.engine.batcher import BatchedEncodeSession

    async with serving(tiny_model()) as srv:
        packets = await remote_encode(srv.url, audio(100))
        assert packets[-1].total_samples == 100
        threads = [b.thread for pool in srv.endpoints.pools for b in pool.batchers]
        assert len(srv.endpoints.pools) == 2 and threads and all(t.is_alive() for t in threads)
    assert not any(t.is_alive() for t in threads)
    with pytest.raises(RuntimeError, match="BatcherPool is closed"):
        srv.endpoints.pools[0].open(BatchedEncodeSession)


@run_async
async def test_decode_round_trip_of_encode():
    model = tiny_model(True)
    async with serving(model) as srv:
        pcm = audio(1234, 3)
        packets = await remote_encode(srv.url, pcm, sample_rate=16000, chunk_samples=100)
        got = await remote_decode(srv.url, packets)
        want, _ = model(torch.from_numpy(pcm).reshape(1, 1, -1), seed=0)
        np.testing.assert_allclose(got, want[0, 0].numpy(), atol=1e-5, rtol=0)


def other_infos(info: ModelInfo) -> list[ModelInfo]:
    return [
        ModelInfo(24000, info.hop_length, info.vq_strides, info.codebook_size, info.fingerprint),
        ModelInfo(info.sample_rate, info.hop_length, info.vq_strides, info.codebook_size, b"otherfp!"),
        ModelInfo(info.sample_rate, info.hop_length, (4, 2, 1), info.codebook_size, info.fingerprint),
    ]


@run_async
async def test_decode_refuses_a_hello_for_another_model():
    model = tiny_model()
    info = ModelInfo.from_model(model)
    async with serving(model) as srv:
        for other in other_infos(info):
            with pytest.raises(RelayError) as e:
                await remote_decode(srv.url, [Hello(other, 1)])
            assert e.value.code == CloseCode.MODEL_MISMATCH and "mismatch" in e.value.reason


def _codes_bytes(info: ModelInfo, stream_id=1, seq=0, first=0, n=1) -> bytes:
    codes = [torch.zeros(n * r, dtype=torch.long) for r in info.codes_per_level]
    return encode_packet(CodePacket(stream_id, seq, first, codes), info)


@run_async
async def test_decode_refuses_bad_order_and_packets():
    model = tiny_model()
    info = ModelInfo.from_model(model)
    hello = encode_packet(Hello(info, 1))
    cases = [
        ([_codes_bytes(info)], CloseCode.UNEXPECTED_PACKET),  # CODES before HELLO
        ([encode_packet(End(1, 0, 0, 0))], CloseCode.UNEXPECTED_PACKET),
        ([hello, hello], CloseCode.UNEXPECTED_PACKET),
        ([hello, _codes_bytes(info, stream_id=2)], CloseCode.UNEXPECTED_PACKET),
        ([hello, _codes_bytes(info, n=3), encode_packet(End(1, 1, 2, 0))], CloseCode.UNEXPECTED_PACKET),
        ([hello, _codes_bytes(info)[:-1]], CloseCode.TRUNCATED),
        ([hello, b"\x01\x02" + b"\0" * 3000], CloseCode.OVERSIZED),
        ([hello, bytes([9]) + _codes_bytes(info)[1:]], CloseCode.UNSUPPORTED_VERSION),
        ([hello, b"\x01\x07"], CloseCode.UNKNOWN_KIND),
        ([hello, "text"], CloseCode.TEXT_FRAME),
        ([hello, encode_packet(End(1, 0, 1, 17))], CloseCode.MALFORMED),  # more samples than frames
    ]
    async with serving(model, max_message_size=2048) as srv:
        for messages, code in cases:
            _, got, reason = await exchange(f"{srv.url}/decode", messages)
            assert got == code, (messages, reason)


@run_async
async def test_decode_conceals_a_lost_packet_with_counted_silence():
    model = tiny_model()
    info = ModelInfo.from_model(model)
    async with serving(model) as srv:
        n = 1000
        codes = offline_codes(model, audio(n))
        packets = stream_packets(codes, info, n, 4)
        lost = packets[5]
        got = await remote_decode(srv.url, packets[:5] + packets[6:])
        assert got.shape == (n,)
        f0, f1 = lost.first_frame * 16, (lost.first_frame + lost.n_frames) * 16
        head = offline_audio(
            model, [c[: lost.first_frame * r] for c, r in zip(codes, (1, 2), strict=True)], f0
        )
        np.testing.assert_allclose(got[:f0], head, atol=1e-5, rtol=0)
        assert not got[f0:f1].any()
        tail = offline_audio(
            model, [c[(lost.first_frame + 4) * r :] for c, r in zip(codes, (1, 2), strict=True)], n - f1
        )
        np.testing.assert_allclose(got[f1:], tail, atol=1e-5, rtol=0)
        assert srv.counters["decode_frames_concealed"] == 4


# ------------------------------------------------------------------------------ limits


def test_token_bucket():
    now = [0.0]
    bucket = TokenBucket(rate=2.0, burst=1.0, clock=lambda: now[0])
    assert bucket.take(0.6) and not bucket.take(0.6) and bucket.take(0.4)
    now[0] = 0.25
    assert not bucket.take(0.6) and bucket.take(0.5)
    now[0] = 100.0
    assert bucket.take(1.0) and not bucket.take(0.01)  # never more than the burst


@run_async
async def test_rate_limit_closes_with_4023():
    model = tiny_model()
    info = ModelInfo.from_model(model)
    async with serving(model, model_rate=0.001, model_burst=0.05) as srv:
        # 0.05 s of burst = 800 samples at 16 kHz, refilled so slowly (1 ms of audio per second)
        # that however slow this machine is, the second 800 samples are over the limit
        with pytest.raises(RelayError) as e:
            await remote_encode(srv.url, audio(1600), chunk_samples=400)
        assert e.value.code == CloseCode.RATE_LIMITED
        codes = offline_codes(model, audio(1600))
        with pytest.raises(RelayError) as e:
            await remote_decode(srv.url, stream_packets(codes, info, 1600, 10))
        assert e.value.code == CloseCode.RATE_LIMITED
        assert srv.counters["model_rate_limited"] == 2
        ok = await remote_encode(srv.url, audio(400), chunk_samples=400)  # within the burst
        assert ok[-1].total_samples == 400


@run_async
async def test_max_model_sessions_closes_with_4024():
    model = tiny_model()
    async with serving(model, max_model_sessions=1) as srv:
        async with connect(f"{srv.url}/encode") as first:
            await first.recv()  # its HELLO: the session is running
            with pytest.raises(RelayError) as e:
                await remote_decode(srv.url, [])
            assert e.value.code == CloseCode.SERVER_BUSY
            await first.send(b"")
            assert await close_code(first) == 1000
        await wait_until(lambda: srv.endpoints.active == 0)
        packets = await remote_encode(srv.url, audio(50))
        assert packets[-1].total_samples == 50


@run_async
async def test_idle_model_session_times_out_and_token_is_required():
    async with serving(tiny_model(), idle_timeout=0.2, token="tok") as srv:
        _, code, _ = await exchange(f"{srv.url}/encode", [])
        assert code == CloseCode.UNAUTHORIZED
        async with connect(f"{srv.url}/decode?token=tok") as ws:
            assert await close_code(ws) == CloseCode.IDLE_TIMEOUT
        packets = await remote_encode(srv.url, audio(10), token="tok")
        assert packets[-1].total_samples == 10


@pytest.mark.parametrize("engine_workers", [1, 2])
@run_async
async def test_concurrent_sessions_are_independent(engine_workers):
    model = tiny_model()
    info = ModelInfo.from_model(model)
    # workers=1: the server's own executor is not what runs (or serialises) model sessions
    async with serving(model, max_model_sessions=6, engine_workers=engine_workers, workers=1) as srv:
        pcms = [audio(700 + 100 * i, i) for i in range(3)]
        codes = [offline_codes(model, p) for p in pcms]
        jobs = [remote_encode(srv.url, p, chunk_samples=64) for p in pcms]
        jobs += [
            remote_decode(srv.url, stream_packets(c, info, len(p), 1))
            for c, p in zip(codes, pcms, strict=True)
        ]
        results = await asyncio.gather(*jobs)
        for packets, want in zip(results[:3], codes, strict=True):
            assert all(torch.equal(a, b) for a, b in zip(join_codes(packets), want, strict=True))
        for got, c, p in zip(results[3:], codes, pcms, strict=True):
            np.testing.assert_allclose(got, offline_audio(model, c, len(p)), atol=1e-5, rtol=0)
        assert srv.endpoints.active == 0


def test_end_reasons_other_than_complete_are_untrimmed():
    """Unit check of the receiver used by /decode (END PUBLISHER_LOST keeps every frame)."""
    from snac_stream.net.receiver import CodeReceiver

    model = tiny_model()
    info = ModelInfo.from_model(model)
    codes = offline_codes(model, audio(200))
    packets = stream_packets(codes, info, 200, 3)
    end = packets[-1]
    packets[-1] = End(
        end.stream_id, end.seq, end.total_frames, end.total_frames * 16, EndReason.PUBLISHER_LOST
    )
    r = CodeReceiver(model, live_join=False)
    out = np.concatenate([r.on_packet(p) for p in packets])
    assert out.size == end.total_frames * 16 and r.stats.streams_aborted == 1

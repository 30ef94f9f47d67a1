"""The browser routes without a browser: a real server on 127.0.0.1 (tiny model), clients that
speak the page's protocol (JSON events, position-stamped int16 PCM) over real WebSockets.

- one decode per room, whatever the number of pages (property over rooms, pages per room,
  packet sizes and a mid-stream joiner); every page's PCM equals the offline decode;
- talk: int16 PCM in, the room gets exactly the offline codes; the /encode limits apply;
- errors: unknown room, bad names, listeners that send, busy server; publisher lost and
  shutdown reach the pages; a slow page loses its oldest PCM, never its events.

The same protocol in a real Chromium: tests/net/test_browser.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.request

import numpy as np
import pytest
import torch
from conftest import run_async, wait_until
from hypothesis import given, settings
from hypothesis import strategies as st
from streaming_helpers import examples
from test_endpoints import audio, offline_audio, offline_codes, tiny_model
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from snac_stream.audio.pcm import to_s16le
from snac_stream.net.browser import add_browser
from snac_stream.net.client import listen, publish
from snac_stream.net.endpoints import add_model_endpoints
from snac_stream.net.page import PCM_HEADER, BrowserListener
from snac_stream.net.server import Server, ServerConfig
from snac_stream.protocol.packets import CloseCode, CodePacket, End, ModelInfo, encode_packet, stream_packets

# ------------------------------------------------------------------------------ helpers


class CountingDecoder:
    """A decode-session factory that counts the sessions opened and the frames they decode."""

    def __init__(self, factory) -> None:
        self.factory = factory
        self.sessions = 0
        self.frames = 0

    def __call__(self, model, seed):
        session = self.factory(model, seed)
        self.sessions += 1
        push = session.push

        def counted(codes):
            self.frames += codes[0].numel()  # level 0: one code per coarse frame
            return push(codes)

        session.push = counted
        return session


@contextlib.asynccontextmanager
async def browser_server(model, **overrides):
    """A started server with the model endpoints and the browser routes; ``.decoder`` counts."""
    server = Server(ServerConfig(**{"port": 0, "close_timeout": 10.0, **overrides}))
    endpoints = add_model_endpoints(server, model)
    endpoints.decode_session = server.decoder = CountingDecoder(endpoints.decode_session)
    add_browser(server, endpoints)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


class Page:
    """What a page receives on /browser/listen: events (JSON) and PCM (position, int16)."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.events: list[dict] = []
        self.pcm: list[tuple[int, np.ndarray]] = []
        self.close: tuple[int | None, str] | None = None
        self.task = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, url: str) -> Page:
        return cls(await connect(url, max_size=None))

    async def _read(self) -> None:
        try:
            async for m in self.ws:
                if isinstance(m, str):
                    self.events.append(json.loads(m))
                else:
                    pos, _ = PCM_HEADER.unpack_from(m)
                    self.pcm.append((pos, np.frombuffer(m, "<i2", offset=PCM_HEADER.size)))
        except ConnectionClosed:
            pass
        rcvd = self.ws.protocol.close_rcvd
        self.close = (rcvd.code if rcvd else None, rcvd.reason if rcvd else "")

    def of(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["type"] == kind]

    def audio(self) -> tuple[int, np.ndarray]:
        """(first position, all samples), checking that the positions are contiguous."""
        start = self.pcm[0][0]
        pos = start
        for p, chunk in self.pcm:
            assert p == pos, f"PCM at {p}, expected {pos}"
            pos += chunk.size
        return start, np.concatenate([c for _, c in self.pcm])


def int16(x: np.ndarray) -> np.ndarray:
    return np.frombuffer(to_s16le(x), "<i2")


def listen_url(server, room: str, **query) -> str:
    q = "&".join(f"{k}={v}" for k, v in query.items())
    return f"{server.url}/browser/listen/{room}" + (f"?{q}" if q else "")


async def closed_with(url: str, messages=(), timeout: float = 10.0) -> tuple[int | None, str]:
    async with connect(url, max_size=None) as ws:
        with contextlib.suppress(ConnectionClosed):
            for m in messages:
                await ws.send(m)
        with contextlib.suppress(ConnectionClosed):
            async with asyncio.timeout(timeout):
                async for _ in ws:
                    pass
    rcvd = ws.protocol.close_rcvd
    return (rcvd.code if rcvd else None), (rcvd.reason if rcvd else "")


# ------------------------------------------------------------------------------ listen


@settings(max_examples=examples(5), deadline=None)
@given(
    rooms=st.integers(1, 2),
    pages=st.integers(1, 3),
    frames_per_packet=st.sampled_from([4, 7, 32]),
    late=st.one_of(st.none(), st.floats(0.2, 0.8)),
)
def test_one_decode_per_room_whatever_the_pages(rooms, pages, frames_per_packet, late):
    run_async(_one_decode_per_room)(rooms, pages, frames_per_packet, late)


async def _one_decode_per_room(rooms: int, pages: int, frames_per_packet: int, late: float | None) -> None:
    model = tiny_model()
    info = ModelInfo.from_model(model)
    n = 3000 + 77  # not a whole number of frames: END trims
    streams = []
    for r in range(rooms):
        pcm = audio(n, seed=r)
        codes = offline_codes(model, pcm)
        packets = stream_packets(codes, info, n, frames_per_packet, stream_id=r + 1)
        streams.append((f"room{r}", codes, packets))
    async with browser_server(model) as server:
        early = {
            name: [await Page.open(listen_url(server, name, wait=1)) for _ in range(pages)]
            for name, *_ in streams
        }
        for page in (p for ps in early.values() for p in ps):
            await wait_until(lambda page=page: page.of("info"))
        joiners: dict[str, Page] = {}

        async def feed(name, packets):
            split = None if late is None else max(1, int(late * (len(packets) - 2)))
            for k, packet in enumerate(packets):
                if k == split:  # a page joins mid-stream, once the decoder took what was sent
                    sent = sum(p.n_frames for p in packets[:k] if isinstance(p, CodePacket))
                    stats = server.relay.rooms[name].stats
                    await wait_until(lambda s=stats, f=sent: s["browser_frames_decoded"] >= f)
                    joiners[name] = await Page.open(listen_url(server, name))
                    await wait_until(lambda j=joiners[name]: j.of("info"))
                yield packet
                await asyncio.sleep(0.002)

        await asyncio.gather(
            *(
                publish(f"{server.url}/rooms/{name}?role=publish", feed(name, packets))
                for name, _, packets in streams
            )
        )
        everyone = [p for ps in early.values() for p in ps] + list(joiners.values())
        for page in everyone:
            await wait_until(lambda page=page: page.of("end"), timeout=20)
        total_frames = sum(
            p.n_frames for _, _, packets in streams for p in packets if isinstance(p, CodePacket)
        )
        # the property: one decoder per room, each frame decoded once, whatever the pages
        assert server.decoder.sessions == rooms
        assert server.decoder.frames == total_frames
        assert server.counters["browser_room_decoders"] == rooms
        assert server.counters["browser_listeners"] == len(everyone)
        for name, codes, _ in streams:
            expected = int16(offline_audio(model, codes, n))
            got = []
            for page in early[name]:
                start, pcm = page.audio()
                assert start == 0 and pcm.shape == expected.shape
                assert np.abs(pcm.astype(np.int32) - expected).max() <= 1  # float32 vs offline, then rounding
                assert page.of("end")[0] == {
                    "type": "end",
                    "reason": "complete",
                    "total_frames": codes[0].numel(),
                    "total_samples": n,
                    "frames_lost": 0,
                }
                got.append(pcm)
            for pcm in got[1:]:
                np.testing.assert_array_equal(pcm, got[0])  # one decode, fanned out
            if name in joiners:
                start, pcm = joiners[name].audio()
                assert start % info.frame_size == 0 and 0 <= start < n  # starts at a frame boundary
                np.testing.assert_array_equal(pcm, got[0][start:])


@run_async
async def test_listen_errors_are_close_codes():
    model = tiny_model()
    async with browser_server(model, max_model_sessions=1) as server:
        assert (await closed_with(listen_url(server, "nobody")))[0] == CloseCode.UNKNOWN_ROOM
        assert (await closed_with(listen_url(server, "bad%20name")))[0] == CloseCode.BAD_REQUEST
        page = await Page.open(listen_url(server, "r", wait=1))
        await wait_until(lambda: page.of("info"))
        assert page.of("info")[0]["model"]["sample_rate"] == 16000
        await page.ws.send(json.dumps({"type": "ping", "t": 12.5}))
        await wait_until(lambda: page.of("pong"))
        assert page.of("pong")[0]["t"] == 12.5
        # the room exists now: a second page needs no wait=1 (and no second model session)
        assert (await closed_with(listen_url(server, "r"), [b"\x01\x02"]))[0] == CloseCode.UNEXPECTED_PACKET
        assert (await closed_with(listen_url(server, "r"), ['{"type": "x"}']))[0] == CloseCode.BAD_REQUEST
        # the one model session is the room's decoder: another room's page gets 4024
        assert (await closed_with(listen_url(server, "other", wait=1)))[0] == CloseCode.SERVER_BUSY
        await page.ws.close()  # the last page left: its decoder's session is free again
        await wait_until(lambda: "r" not in server.relay.rooms)
        again = await Page.open(listen_url(server, "other", wait=1))
        await wait_until(lambda: again.of("info"))


@run_async
async def test_publisher_lost_and_shutdown_reach_the_pages():
    model = tiny_model()
    info = ModelInfo.from_model(model)
    n = 2000
    packets = stream_packets(offline_codes(model, audio(n)), info, n, 5, stream_id=9)
    async with browser_server(model) as server:
        page = await Page.open(listen_url(server, "r", wait=1))
        await wait_until(lambda: page.of("info"))
        async with connect(f"{server.url}/rooms/r?role=publish") as ws:
            for p in packets[:6]:  # HELLO and 5 CODES, then the publisher vanishes
                await ws.send(encode_packet(p, info))
            await wait_until(lambda: page.of("codes") and len(page.of("codes")) == 5)
        await wait_until(lambda: page.of("end"))
        end = page.of("end")[0]
        assert end["reason"] == "publisher_lost" and end["total_frames"] == 25 and end["frames_lost"] == 0
        assert sum(c.size for _, c in page.pcm) == 25 * info.frame_size  # untrimmed: what was relayed
        # a new stream; the server shuts down in the middle of it
        async with connect(f"{server.url}/rooms/r?role=publish") as ws:
            for p in packets[:3]:
                await ws.send(encode_packet(p, info))
            await wait_until(lambda: len(page.of("hello")) == 2 and len(page.of("codes")) == 7)
            await server.stop()
    await asyncio.wait_for(page.task, 10)
    assert page.of("end")[-1]["reason"] == "shutdown"
    assert page.close[0] == 1001


def test_a_slow_page_loses_its_oldest_pcm_never_its_events():
    page = BrowserListener(None, max_messages=6, max_samples=30)  # type: ignore[arg-type]  (queue only)
    page.event({"type": "hello"})
    for k in range(5):
        page.pcm(10 * k, np.full(10, 0.1, np.float32), None, 0.0)
    kinds = [("pcm" if isinstance(item, bytes) else "event") for item, _ in page.queue]
    assert kinds == ["event", "pcm", "pcm", "pcm"] and page.samples_dropped == 20  # 30 samples at most
    assert [PCM_HEADER.unpack_from(item)[0] for item, _ in list(page.queue)[1:]] == [20, 30, 40]
    page.pcm(50, np.full(40, 0.1, np.float32), None, 0.0)  # larger than the limit alone: kept
    assert page.queued_samples == 40 and page.samples_dropped == 50
    for _ in range(5):
        page.event({"type": "codes"})
    assert page.close_request is None and len(page.queue) == 6  # PCM gave way first
    assert page.samples_dropped == 90 and page.queued_samples == 0
    page.event({"type": "codes"})  # nothing left to drop: the page is closed, not grown
    assert page.close_request[0] == CloseCode.SLOW_CONSUMER and not page.queue


def test_a_mid_stream_page_starts_at_the_next_frame_boundary():
    page = BrowserListener(None, max_messages=8, max_samples=100)  # type: ignore[arg-type]
    page.start_at = 64
    page.pcm(40, np.arange(10, dtype=np.float32) / 100, None, 0.0)  # all before the boundary: nothing
    page.pcm(50, np.arange(30, dtype=np.float32) / 100, None, 0.0)
    ((item, n),) = page.queue
    pos, _ = PCM_HEADER.unpack_from(item)
    samples = np.frombuffer(item, "<i2", offset=PCM_HEADER.size)
    assert (pos, n, samples.size) == (64, 16, 16)
    np.testing.assert_array_equal(samples, int16(np.arange(14, 30, dtype=np.float32) / 100))


# ------------------------------------------------------------------------------ talk


@run_async
async def test_talk_publishes_the_offline_codes_into_the_room():
    model = tiny_model()
    n = 2500
    pcm16 = int16(audio(n, seed=4))
    async with browser_server(model) as server:
        heard: list = []

        async def listener():
            async for packet in listen(f"{server.url}/rooms/t?role=listen"):
                heard.append(packet)
                if isinstance(packet, End):
                    return

        task = asyncio.create_task(listener())
        await wait_until(lambda: "t" in server.relay.rooms and server.relay.rooms["t"].listeners)
        events = []
        async with connect(f"{server.url}/browser/talk/t?format=s16le&rate=16000") as ws:
            for a in range(0, n, 333):
                await ws.send(pcm16[a : a + 333].tobytes())
            await ws.send(b"")
            with contextlib.suppress(ConnectionClosed):
                async for m in ws:
                    events.append(json.loads(m))
        assert ws.protocol.close_rcvd.code == 1000
        await asyncio.wait_for(task, 20)
    expected = offline_codes(model, pcm16.astype(np.float32) / 32768)
    body = [p for p in heard if isinstance(p, CodePacket)]
    assert all(p.n_frames == 1 for p in body)  # live: one frame per packet
    for level, codes in enumerate(expected):
        torch.testing.assert_close(torch.cat([p.codes[level] for p in body]), codes, rtol=0, atol=0)
    assert heard[-1].total_samples == n
    assert [e["type"] for e in events[:2]] == ["info", "hello"] and events[-1]["type"] == "end"
    assert sum(e["n_frames"] for e in events if e["type"] == "codes") == len(body)


@run_async
async def test_talk_has_the_limits_of_encode():
    model = tiny_model()
    async with browser_server(model, model_rate=1.0, model_burst=0.1, max_model_sessions=2) as server:
        url = f"{server.url}/browser/talk/t"
        assert (await closed_with(url + "?rate=8000"))[0] == CloseCode.RATE_MISMATCH
        assert (await closed_with(url + "?format=mp3"))[0] == CloseCode.UNSUPPORTED_FORMAT
        assert (await closed_with(url, [b"\x00\x01\x02"]))[0] == CloseCode.BAD_PCM
        code, reason = await closed_with(url, [np.zeros(4000, "<i2").tobytes()])  # 0.25 s > burst 0.1 s
        assert code == CloseCode.RATE_LIMITED, reason
        async with connect(url) as first:
            await first.recv()  # info: it is the room's publisher now
            assert (await closed_with(url))[0] == CloseCode.PUBLISHER_EXISTS
            page = await Page.open(listen_url(server, "t"))  # the second model session
            await wait_until(lambda: page.of("info"))
            assert (await closed_with(f"{server.url}/browser/talk/u"))[0] == CloseCode.SERVER_BUSY


@run_async
async def test_page_files_and_info_are_served():
    model = tiny_model()
    async with browser_server(model, token="s3cret") as server:
        base = f"http://127.0.0.1:{server.port}"

        def get(path):
            with urllib.request.urlopen(base + path, timeout=5) as r:
                return r.status, r.headers["Content-Type"], r.read()

        status, ctype, body = await asyncio.to_thread(get, "/")
        assert status == 200 and ctype.startswith("text/html") and b'src="/web/app.js"' in body
        for name in ("app.js", "audio.js", "player-worklet.js", "capture-worklet.js", "resampler.js"):
            status, ctype, body = await asyncio.to_thread(get, f"/web/{name}")
            assert status == 200 and ctype.startswith("text/javascript") and body
        with pytest.raises(urllib.error.HTTPError) as e:
            await asyncio.to_thread(get, "/web/missing.js")
        assert e.value.code == 404
        e.value.close()
        _, _, body = await asyncio.to_thread(get, "/browser/info")
        info = json.loads(body)
        assert info["model"]["sample_rate"] == 16000 and info["token_required"] and info["rooms"] is None
        _, _, body = await asyncio.to_thread(get, "/browser/info?token=s3cret")
        assert json.loads(body)["rooms"] == {}
        code, _ = await closed_with(listen_url(server, "r", wait=1))
        assert code == CloseCode.UNAUTHORIZED

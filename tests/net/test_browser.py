"""The page in a real browser: headless Chromium (Debian's ``chromium``, driven by Playwright),
``snac-stream serve`` with a token and a small model, and the real CLI on the other side.

(a) ``snac-stream send`` publishes a file; two pages listen: each received PCM equals the
    offline decode of the sent codes (int16 rounding), nothing is lost, and the room was
    decoded once for both pages;
(b) Chromium's fake microphone talks into a room; ``snac-stream listen`` writes what it hears,
    which equals the offline ``forward`` of the PCM the page sent, and so does what another
    page in the room hears (the page's resampler is checked on its own, in the same browser);
(c) a wrong token, a full server and an unknown room show an error on the page.

Skipped (with the reason) only where Chromium or Playwright are missing; ``.ci/run`` installs both.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from test_e2e_transport import _cli, _free_port, _wait_for

from benchmarks.browser_latency import CHROMIUM, CHROMIUM_FLAGS, SMALL_CONFIG
from snac_model import SNAC
from snac_stream.audio.files import demo_signal, read_audio, write_audio
from snac_stream.audio.pcm import to_s16le

TOKEN = "page-test-token"
MAX_CONNECTIONS = 4
CONFIG = SMALL_CONFIG  # 16 kHz, hop 128: 32 ms coarse frames, cheap enough to decode in real time here
SR = CONFIG["sampling_rate"]
FAKE_MICROPHONE = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - CI installs it
    sync_playwright = None

pytestmark = [
    pytest.mark.skipif(
        sync_playwright is None, reason="playwright is not installed (pip install playwright)"
    ),
    pytest.mark.skipif(
        not os.path.exists(CHROMIUM), reason="chromium is not installed (apt-get install chromium)"
    ),
    pytest.mark.timeout(300),
]


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _health(port: int) -> dict:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health?token={TOKEN}", timeout=2) as r:
            return json.loads(r.read())
    except OSError:
        return {}


def _room(port: int, name: str) -> dict:
    return (_health(port).get("rooms") or {}).get(name) or {}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("browser") / "model"
    torch.manual_seed(3)
    SNAC(**CONFIG).eval().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def model(checkpoint) -> SNAC:
    return SNAC.from_pretrained(checkpoint).fold_weight_norm().eval()


@pytest.fixture(scope="module")
def server(checkpoint):
    port = _free_port()
    cmd = _cli("serve", "--port", str(port), "--model", str(checkpoint), "--token", TOKEN)
    proc = subprocess.Popen(cmd + ["--max-connections", str(MAX_CONNECTIONS)], env=ENV)
    try:
        _wait_for(lambda: _health(port).get("status") == "ok", 90, "the server")
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    mic = tmp_path_factory.mktemp("mic") / "mic.wav"  # the fake microphone: 48 kHz, as devices are
    write_audio(mic, demo_signal(48000, 4.0, seed=1), 48000)
    with sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[*CHROMIUM_FLAGS, *FAKE_MICROPHONE, f"--use-file-for-fake-audio-capture={mic}"],
        )
        try:
            yield chromium
        finally:
            chromium.close()


def _page(browser, port: int, query: str):
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"http://127.0.0.1:{port}/?{query}")
    page.js_errors = errors
    return page


def _stats(page) -> dict:
    return page.evaluate("window.snacStats")


def _pcm(page, kind: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(page.evaluate(f"window.snacPcm.{kind}()")), "<i2")


def _int16(x: np.ndarray) -> np.ndarray:
    return np.frombuffer(to_s16le(x), "<i2")


def test_pages_listen_and_hear_the_offline_decode_one_decode_per_room(
    server, browser, model, checkpoint, tmp_path
):
    port = server
    audio = demo_signal(SR, 1.5)  # not a whole number of frames: END trims
    write_audio(tmp_path / "in.wav", audio, SR)
    pages = [_page(browser, port, f"room=a&listen=1&wait=1&token={TOKEN}") for _ in range(2)]
    try:
        for page in pages:
            page.wait_for_function("window.snacStats.connected", timeout=30000)
        room_url = f"ws://127.0.0.1:{port}/rooms/a"
        send = subprocess.run(
            _cli("send", "--url", room_url, "--token", TOKEN, "--model", str(checkpoint), "--input")
            + [str(tmp_path / "in.wav")],
            env=ENV,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert send.returncode == 0, send.stderr
        for page in pages:
            page.wait_for_function("window.snacStats.end_reason !== null", timeout=30000)
            page.wait_for_function("window.snacStats.drained", timeout=30000)
        room = _room(port, "a")
        stats = [_stats(page) for page in pages]
        received = [_pcm(page, "received") for page in pages]
        shown = pages[0].inner_text("#status")
    finally:
        for page in pages:
            page.close()
    sent = read_audio(tmp_path / "in.wav", SR)
    with torch.inference_mode():
        codes = model.encode(torch.from_numpy(sent).view(1, 1, -1))
        decoded = model.decode(codes, seed=0)[0, 0, : sent.size].numpy()
    expected = _int16(decoded)
    n_frames = codes[0].shape[-1]
    for s, pcm in zip(stats, received, strict=True):
        assert s["error"] is None and s["end_reason"] == "complete"
        assert s["frames_lost"] == 0 and s["frames_received"] == n_frames
        assert s["samples_received"] == sent.size == pcm.size
        assert s["samples_played"] + s["samples_skipped"] == s["samples_received"]  # all played or skipped
        assert s["samples_played"] > 0
        diff = np.abs(pcm.astype(np.int32) - expected)
        assert diff.max() <= 1  # the float32 decode rounds to the same int16, but for rare ties
        assert np.abs(pcm / 32768 - decoded).max() <= 0.5 / 32768 + 2e-5
    np.testing.assert_array_equal(received[0], received[1])
    assert "stream ended" in shown and "0 lost" in shown  # the END is shown
    # two pages, one decode: one decoder for the room, each frame decoded once
    assert room["browser_decoders"] == 1 and room["browser_listeners_joined"] == 2
    assert room["browser_frames_decoded"] == n_frames
    assert all(not page.js_errors for page in pages)


def test_page_talks_through_the_fake_microphone(server, browser, model, checkpoint, tmp_path):
    port = server
    out = tmp_path / "heard.wav"
    listen = subprocess.Popen(
        _cli("listen", "--url", f"ws://127.0.0.1:{port}/rooms/b", "--token", TOKEN)
        + ["--model", str(checkpoint), "--output", str(out)],
        env=ENV,
        stderr=subprocess.PIPE,
        text=True,
    )
    page = other = None
    try:
        _wait_for(lambda: _room(port, "b").get("listeners") == 1, 120, "snac-stream listen in room b")
        other = _page(browser, port, f"room=b&listen=1&token={TOKEN}")  # another browser hears it too
        other.wait_for_function("window.snacStats.connected", timeout=30000)
        page = _page(browser, port, f"room=b&talk=1&token={TOKEN}")
        page.wait_for_function(f"window.snacStats.samples_sent >= {SR}", timeout=30000)
        page.click("#stop")
        page.wait_for_function("!window.snacStats.talking", timeout=30000)
        stats = _stats(page)
        sent = _pcm(page, "sent")
        _, err = listen.communicate(timeout=60)
        assert listen.returncode == 0, err
        other.wait_for_function("window.snacStats.end_reason === 'complete'", timeout=30000)
        heard_by_page = _pcm(other, "received")
    finally:
        listen.kill()
        for p in (page, other):
            if p is not None:
                p.close()
    assert stats["error"] is None and stats["samples_send_dropped"] == 0
    assert sent.size == stats["samples_sent"] >= SR and np.abs(sent).max() > 1000  # the microphone's signal
    audio = sent.astype(np.float32) / 32768
    with torch.inference_mode():
        expected, _ = model(torch.from_numpy(audio).view(1, 1, -1), seed=0)
    got = read_audio(out, SR)
    assert got.shape == audio.shape  # trimmed to what the page sent
    np.testing.assert_allclose(got, expected.view(-1).numpy(), atol=2e-5, rtol=0)
    assert "0 lost" in err
    assert heard_by_page.size == audio.size
    assert np.abs(heard_by_page.astype(np.int32) - _int16(expected.view(-1).numpy())).max() <= 1


def test_page_resampler_is_band_limited(server, browser):
    page = _page(browser, server, "")
    try:
        result = page.evaluate(
            """async () => {
              const { Resampler } = await import("/web/resampler.js");
              const tone = (inRate, outRate, f) => {
                const r = new Resampler(inRate, outRate);
                const x = new Float32Array(inRate);
                for (let i = 0; i < x.length; i++) x[i] = 0.5 * Math.sin(2 * Math.PI * f * i / inRate);
                const parts = [];
                for (let i = 0; i < x.length; i += 128) parts.push(...r.process(x.subarray(i, i + 128)));
                parts.push(...r.flush());
                let err = 0, pow = 0, out = 0;
                for (let m = 300; m < parts.length - 300; m++) {
                  const e = 0.5 * Math.sin(2 * Math.PI * f * m / outRate);
                  err += (parts[m] - e) ** 2; pow += e * e; out += parts[m] ** 2;
                }
                return { n: parts.length, snr: 10 * Math.log10(pow / err), db: 10 * Math.log10(out / pow) };
              };
              return [tone(44100, 16000, 1000), tone(48000, 16000, 3000), tone(44100, 16000, 12000)];
            }"""
        )
    finally:
        page.close()
    (a, b, alias) = result
    assert a["n"] == b["n"] == 16000  # ceil(n * out / in) samples, as offline
    assert a["snr"] > 60 and b["snr"] > 60  # in band: clean
    assert alias["db"] < -50  # 12 kHz into 16 kHz: removed, not aliased to 4 kHz


def test_page_shows_errors_not_a_blank_screen(server, browser):
    port = server
    cases = [
        ("room=a&listen=1&token=wrong", 4011, "token"),
        (f"room=nobody-here&listen=1&token={TOKEN}", 4025, "unknown room"),
    ]
    for query, code, words in cases:
        page = _page(browser, port, query)
        try:
            page.wait_for_function(
                f"window.snacStats.error && window.snacStats.error.code === {code}", timeout=20000
            )
            assert page.is_visible("#error") and words in page.inner_text("#error")
            assert page.is_visible("header") and page.inner_text("h1") == "snac-stream"
            assert not _stats(page)["connected"]
        finally:
            page.close()
    from websockets.sync.client import connect

    occupants = []
    try:
        for _ in range(MAX_CONNECTIONS + 1):  # fill the server (leftovers of other tests count too)
            ws = connect(f"ws://127.0.0.1:{port}/rooms/occupied?role=listen&token={TOKEN}")
            occupants.append(ws)
            try:
                ws.recv(timeout=0.3)
            except TimeoutError:
                continue
            except Exception:
                break  # refused: 4014, the server is full
        page = _page(browser, port, f"room=occupied&listen=1&token={TOKEN}")
        try:
            page.wait_for_function(
                "window.snacStats.error && window.snacStats.error.code === 4014", timeout=20000
            )
            assert page.is_visible("#error") and "server is full" in page.inner_text("#error")
        finally:
            page.close()
    finally:
        for ws in occupants:
            ws.close()


def test_page_shows_a_lost_publisher(server, browser, model):
    from websockets.sync.client import connect

    from snac_stream.protocol.packets import ModelInfo, encode_packet, stream_packets

    info = ModelInfo.from_model(model)
    audio = torch.from_numpy(demo_signal(SR, 0.5)).view(1, 1, -1)
    with torch.inference_mode():
        codes = [c[0] for c in model.encode(audio)]
    packets = stream_packets(codes, info, audio.shape[-1], 1, stream_id=5)
    page = _page(browser, server, f"room=lost&listen=1&wait=1&token={TOKEN}")
    try:
        page.wait_for_function("window.snacStats.connected", timeout=20000)
        with connect(f"ws://127.0.0.1:{server}/rooms/lost?role=publish&token={TOKEN}") as ws:
            for packet in packets[:5]:  # HELLO and 4 frames, then the publisher is gone
                ws.send(encode_packet(packet, info))
            page.wait_for_function("window.snacStats.frames_received === 4", timeout=20000)
        page.wait_for_function("window.snacStats.end_reason === 'publisher_lost'", timeout=20000)
        assert "publisher lost" in page.inner_text("#status")
        assert _stats(page)["connected"]  # the page stays in the room for the next stream
    finally:
        page.close()

"""End to end over a real loopback WebSocket, through the real CLI:

    file -> snac-stream send -> relay room -> 2 x snac-stream listen -> files

Each written file equals the offline ``forward`` of the sent audio (same length, samples
to float32 rounding) and the two listeners' files are identical.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from snac_model import SNAC
from snac_stream.audio.files import demo_signal, read_audio, write_audio

CONFIG = dict(
    sampling_rate=16000,
    encoder_dim=8,
    encoder_rates=[2, 4, 4],
    decoder_dim=128,
    decoder_rates=[4, 4, 2],
    attn_window_size=None,
    codebook_size=512,
    codebook_dim=4,
    vq_strides=[4, 2, 1],
    noise=True,
    depthwise=True,
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "snac_stream", *args]


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _health(port: int) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
            return json.loads(r.read())
    except OSError:
        return None


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    torch.manual_seed(3)
    model = SNAC(**CONFIG).eval()
    model.save_pretrained(tmp_path / "model")
    return tmp_path / "model"


@pytest.mark.timeout(240)
def test_file_send_room_two_listeners_equal_offline_forward(tmp_path: Path, checkpoint: Path) -> None:
    sr = CONFIG["sampling_rate"]
    audio = demo_signal(sr, 1.3)  # not a whole number of coarse frames: the END trims it
    write_audio(tmp_path / "in.wav", audio, sr)
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen(_cli("serve", "--port", str(port)), env=env, stdout=subprocess.PIPE, text=True)
    listeners = []
    try:
        _wait_for(lambda: _health(port) is not None, 60, "the server")
        url = f"ws://127.0.0.1:{port}/rooms/e2e"
        for k in range(2):
            out = tmp_path / f"out{k}.wav"
            cmd = _cli("listen", "--url", url, "--model", str(checkpoint), "--output", str(out))
            listeners.append((out, subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)))

        def two_listeners() -> bool:
            room = ((_health(port) or {}).get("rooms") or {}).get("e2e") or {}
            return room.get("listeners") == 2

        _wait_for(two_listeners, 120, "two listeners in the room")
        send = subprocess.run(
            _cli(
                "send",
                "--url",
                url,
                "--model",
                str(checkpoint),
                "--input",
                str(tmp_path / "in.wav"),
                "--fast",
            ),
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert send.returncode == 0, send.stderr
        for _, proc in listeners:
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
            assert "0 lost" in err, err
    finally:
        for _, proc in listeners:
            proc.kill()
        server.terminate()
        server.wait(timeout=30)

    model = SNAC.from_pretrained(checkpoint).fold_weight_norm()
    sent = read_audio(tmp_path / "in.wav", sr)
    with torch.inference_mode():
        expected, _ = model(torch.from_numpy(sent).view(1, 1, -1), seed=0)
    expected = expected.view(-1).numpy()
    outputs = [read_audio(out, sr) for out, _ in listeners]
    for got in outputs:
        assert got.shape == expected.shape  # sample count exact: trimmed like forward
        np.testing.assert_allclose(got, expected, atol=2e-5, rtol=0)
    np.testing.assert_array_equal(outputs[0], outputs[1])


@pytest.mark.timeout(240)
def test_demo_runs_end_to_end_and_reports(tmp_path: Path) -> None:
    """The README's first command: server, sender (embedded sample), listener, numbers."""
    out, report = tmp_path / "demo.wav", tmp_path / "demo.json"
    proc = subprocess.run(
        _cli("demo", "--model", "random:24khz", "--seconds", "1.5", "--no-mic", "--no-speaker")
        + ["--output", str(out), "--json", str(report)],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=200,
    )
    assert proc.returncode == 0, proc.stderr
    for needle in ("end to end", "algorithmic", "compute/hop", "wire", "exactness"):
        assert needle in proc.stdout
    result = json.loads(report.read_text())
    assert result["samples_out"] == result["samples_in"] == int(1.5 * 24000)
    assert result["frames_lost"] == 0
    assert result["e2e_ms"]["p50"] > 0 and result["wire"]["wire_bps"] > result["wire"]["nominal_bps"]
    assert result["max_abs_vs_offline"] < 1e-4
    assert read_audio(out, 24000).shape == (int(1.5 * 24000),)


def test_mic_view_with_a_file_shows_every_level(tmp_path: Path) -> None:
    write_audio(tmp_path / "in.wav", demo_signal(24000, 0.5), 24000)
    proc = subprocess.run(
        _cli("mic", "--model", "random:24khz", "--input", str(tmp_path / "in.wav"), "--fast"),
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    for level, rate in enumerate(("11.7", "23.4", "46.9")):
        assert f"level {level}" in proc.stdout and rate in proc.stdout
    assert "coarse frames" in proc.stdout

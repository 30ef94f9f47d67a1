"""Logic tests for snac_stream.audio.devices / ringbuffer with injected fake streams (no audio hardware)."""

from __future__ import annotations

import builtins
import subprocess
import sys
import threading
import time
import types
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snac_stream.audio.devices import (
    AudioUnavailableError,
    JitterBuffer,
    Microphone,
    RingBuffer,
    Speaker,
    default_input_available,
    default_output_available,
    list_devices,
)

ROOT = Path(__file__).resolve().parents[2]


def ramp(n: int, start: int = 0) -> np.ndarray:
    """Distinct, never-zero float32 samples (exactly representable)."""
    return (np.arange(start, start + n, dtype=np.float32) + 1.0) / 2.0**20


# ---------------------------------------------------------------- RingBuffer


def test_ring_overflow_drops_oldest_and_counts():
    rb = RingBuffer(8)
    assert rb.write(ramp(5)) == 0
    assert rb.write(ramp(6, 5)) == 3
    assert len(rb) == rb.available == 8
    assert rb.overflow_samples == 3 and rb.overflow_events == 1
    np.testing.assert_array_equal(rb.read(), ramp(8, 3))
    assert rb.write(ramp(20).reshape(-1, 1)) == 12  # larger than capacity: keep the newest 8
    np.testing.assert_array_equal(rb.read(3), ramp(3, 12))
    np.testing.assert_array_equal(rb.read(100), ramp(5, 15))
    assert rb.read().size == 0 and rb.overflow_samples == 15 and rb.overflow_events == 2
    assert rb.written_samples == 31 and rb.read_samples == 16


def test_ring_misc():
    with pytest.raises(ValueError):
        RingBuffer(0)
    rb = RingBuffer(4)
    with pytest.raises(ValueError):
        rb.write(np.zeros((3, 2), np.float32))
    with pytest.raises(ValueError):
        rb.read_blocking(5, timeout=0)
    rb.write(np.array([1, 2, 3], dtype=np.float64))  # converted to float32
    out = np.full(5, -1.0, np.float32)
    assert rb.read_into(out) == 3
    np.testing.assert_array_equal(out, [1, 2, 3, -1, -1])
    rb.write(ramp(3))
    assert rb.clear() == 3 and len(rb) == 0


ops = st.lists(st.tuples(st.booleans(), st.integers(0, 40)), max_size=60)


@settings(max_examples=200, deadline=None)
@given(capacity=st.integers(1, 64), ops=ops)
def test_ring_matches_model(capacity, ops):
    """Arbitrary write/read sizes behave like a FIFO that keeps only the newest ``capacity`` samples."""
    rb, model, counter, dropped = RingBuffer(capacity), [], 0, 0
    for is_write, n in ops:
        if is_write:
            block = ramp(n, counter)
            counter += n
            model.extend(block.tolist())
            excess = max(0, len(model) - capacity)
            dropped += excess
            del model[:excess]
            assert rb.write(block) == excess
        else:
            got = rb.read(n)
            np.testing.assert_array_equal(got, np.array(model[:n], np.float32))
            del model[:n]
        assert len(rb) == len(model)
    assert rb.overflow_samples == dropped


@settings(max_examples=100, deadline=None)
@given(writes=st.lists(st.integers(0, 500), max_size=30), reads=st.lists(st.integers(1, 300), min_size=1))
def test_ring_roundtrip_without_loss(writes, reads):
    """With enough capacity, any write blocking and any read blocking round-trip losslessly."""
    total = sum(writes)
    rb, src, pos, out = RingBuffer(max(1, total)), ramp(total), 0, []
    for i, n in enumerate(writes):
        rb.write(src[pos : pos + n])
        pos += n
        out.append(rb.read(reads[i % len(reads)]))
    out.append(rb.read())
    np.testing.assert_array_equal(np.concatenate(out), src)
    assert rb.overflow_samples == 0


def test_ring_threaded_producer_consumer():
    rng = np.random.default_rng(0)
    src = ramp(200_000)
    rb = RingBuffer(len(src))

    def produce():
        pos = 0
        while pos < len(src):
            n = int(rng.integers(1, 1000))
            rb.write(src[pos : pos + n])
            pos += n

    t = threading.Thread(target=produce)
    t.start()
    chunks, got = [], 0
    while got < len(src):
        c = rb.read_blocking(1, timeout=10.0, max_samples=777)
        assert c.size, "producer stalled"
        chunks.append(c)
        got += c.size
    t.join()
    np.testing.assert_array_equal(np.concatenate(chunks), src)


def test_ring_read_blocking_timeout_and_close():
    rb = RingBuffer(100)
    rb.write(ramp(3))
    assert rb.read_blocking(10, timeout=0.05).size == 3  # partial result on timeout
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("x", rb.read_blocking(50)))
    t.start()
    rb.write(ramp(5))
    rb.close()  # wakes the reader although 50 samples never arrive
    t.join(timeout=10)
    assert not t.is_alive() and result["x"].size == 5 and rb.closed
    rb.reopen()
    assert not rb.closed


# ---------------------------------------------------------------- JitterBuffer


def test_jitter_prefill_underflow_and_rebuffer():
    jb = JitterBuffer(1000, prefill_ms=10, capacity_s=1.0)  # prefill = 10 samples
    assert jb.prefill_samples == 10 and jb.prefilling
    jb.push(ramp(6))
    np.testing.assert_array_equal(jb.pull(4), np.zeros(4))  # still prefilling: silence, not an underflow
    assert jb.underflow_events == 0 and jb.played_samples == 0
    jb.push(ramp(6, 6))  # 12 >= 10: playback starts
    np.testing.assert_array_equal(jb.pull(5), ramp(5))
    out = jb.pull(10)  # only 7 left: zero-filled tail, counted, back to prefill
    np.testing.assert_array_equal(out, np.r_[ramp(7, 5), np.zeros(3, np.float32)])
    assert (jb.underflow_samples, jb.underflow_events, jb.played_samples) == (3, 1, 12)
    assert jb.prefilling and jb.pulled_samples == 19
    jb.push(ramp(9, 12))
    assert not jb.pull(3).any()  # 9 < 10: waiting for prefill again
    jb.push(ramp(1, 21))
    np.testing.assert_array_equal(jb.pull(10), ramp(10, 12))
    assert jb.underflow_events == 1


def test_jitter_finish_drain_and_overflow():
    jb = JitterBuffer(1000, prefill_ms=50, capacity_s=0.1)  # prefill 50, capacity 100
    jb.push(ramp(20))
    assert not jb.drained and not jb.pull(8).any()
    jb.finish()  # fewer than prefill, but end of stream: play it
    np.testing.assert_array_equal(jb.pull(8), ramp(8))
    out = jb.pull(30)
    np.testing.assert_array_equal(out, np.r_[ramp(12, 8), np.zeros(18, np.float32)])
    assert jb.drained and jb.underflow_events == 0  # running dry after finish() is not an underflow
    jb.push(ramp(150))  # new segment: overflow drops the oldest 50, prefill applies again
    assert not jb.finished and jb.overflow_samples == 50 and jb.prefilling
    np.testing.assert_array_equal(jb.pull(100), ramp(100, 50))
    assert len(jb) == 0 and jb.buffered_ms == 0.0
    with pytest.raises(ValueError):
        JitterBuffer(1000, prefill_ms=200, capacity_s=0.1)


@settings(max_examples=100, deadline=None)
@given(pushes=st.lists(st.integers(0, 50), max_size=20), pulls=st.lists(st.integers(0, 40), min_size=1))
def test_jitter_pull_is_exact_and_lossless(pushes, pulls):
    """pull(n) always returns n samples; with finish() all pushed samples come out in order."""
    jb, total = JitterBuffer(1000, prefill_ms=7, capacity_s=2.0), sum(pushes)
    src, pos, out = ramp(total), 0, []
    for i, n in enumerate(pushes):
        jb.push(src[pos : pos + n])
        pos += n
        k = pulls[i % len(pulls)]
        got = jb.pull(k)
        assert got.shape == (k,)
        out.append(got)
    jb.finish()
    out.append(jb.pull(total + 1))
    assert jb.drained
    allout = np.concatenate(out)
    np.testing.assert_array_equal(allout[allout != 0], src)
    assert jb.played_samples == total


# ---------------------------------------------------------------- fake streams


class FakeStream:
    """Callback-driven stand-in for sounddevice.InputStream/OutputStream, run on a thread."""

    def __init__(
        self,
        *,
        samplerate,
        channels,
        dtype,
        callback,
        device,
        blocksize,
        kind,
        source=None,
        statuses=(),
        block_sizes=(37, 256, 1, 480, 100),
    ):
        self.kwargs = dict(
            samplerate=samplerate, channels=channels, dtype=dtype, device=device, blocksize=blocksize
        )
        self.callback, self.kind, self.source = callback, kind, source
        self.statuses, self.block_sizes = list(statuses), block_sizes
        self.output: list[np.ndarray] = []
        self.closed, self.thread, self._stop = False, None, threading.Event()
        FakeStream.last = self

    def start(self):
        self._stop.clear()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        pos, i = 0, 0
        while not self._stop.is_set():
            n = self.kwargs["blocksize"] or self.block_sizes[i % len(self.block_sizes)]
            status = self.statuses[i] if i < len(self.statuses) else None
            i += 1
            if self.kind == "input":
                if pos >= len(self.source):
                    time.sleep(0.001)
                    continue
                block = self.source[pos : pos + n].reshape(-1, 1)
                pos += block.shape[0]
                self.callback(block, block.shape[0], None, status)
            else:
                out = np.full((n, 1), np.nan, np.float32)
                self.callback(out, n, None, status)
                self.output.append(out[:, 0].copy())
                time.sleep(0.0002)

    def stop(self):
        self._stop.set()
        if self.thread is not None:
            self.thread.join(timeout=10)

    def close(self):
        self.closed = True


def test_microphone_with_fake_stream():
    src = ramp(24_000)
    flags = [types.SimpleNamespace(input_overflow=True), None, types.SimpleNamespace(input_overflow=False)]
    factory = partial(FakeStream, kind="input", source=src, statuses=flags)
    with Microphone(24_000, device="fake", capacity_s=2.0, stream_factory=factory) as mic:
        assert mic.active
        assert FakeStream.last.kwargs == dict(
            samplerate=24_000, channels=1, dtype="float32", device="fake", blocksize=0
        )
        chunks, got = [], 0
        while got < len(src):
            c = mic.read_blocking(1000, timeout=10.0)
            assert c.size, "fake stream stalled"
            chunks.append(c)
            got += c.size
        stats = mic.stats
    stream = FakeStream.last
    assert stream.closed and not mic.active and mic._stream is None
    np.testing.assert_array_equal(np.concatenate(chunks), src)
    assert stats.captured_samples == len(src) and stats.dropped_samples == 0
    assert stats.input_overflows == 1 and stats.status_events == 2 and stats.callbacks >= 3
    assert mic.read_blocking(10, timeout=None).size == 0  # stopped: returns at once instead of hanging


def test_microphone_stop_wakes_blocked_reader():
    mic = Microphone(1000, stream_factory=partial(FakeStream, kind="input", source=ramp(5)))
    mic.start()
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("x", mic.read_blocking(500)))
    t.start()
    time.sleep(0.05)
    mic.close()
    t.join(timeout=10)
    assert not t.is_alive() and result["x"].size <= 5


def _nonzero(stream: FakeStream) -> np.ndarray:
    out = np.concatenate(stream.output)
    assert not np.isnan(out).any(), "callback left output samples unwritten"
    return out[out != 0]


def test_speaker_with_fake_stream_drains():
    sig = ramp(12_000)
    flags = [types.SimpleNamespace(output_underflow=True)]
    spk = Speaker(
        24_000,
        prefill_ms=60,
        capacity_s=1.0,
        stream_factory=partial(FakeStream, kind="output", statuses=flags),
    )
    spk.write(sig)  # before start: just buffered
    assert not spk.drain(timeout=5)  # not running: returns at once
    spk.start()
    assert spk.drain(timeout=10)
    stream = FakeStream.last
    spk.close()
    np.testing.assert_array_equal(_nonzero(stream), sig)
    s = spk.stats
    assert s.played_samples == len(sig) and s.underflow_events == 0 and s.overflow_samples == 0
    assert s.output_underflows == 1 and s.buffered_samples == 0 and stream.closed


def test_speaker_chunked_blocking_writes_and_context_exit_drains():
    sig = ramp(30_000)
    factory = partial(FakeStream, kind="output")
    with Speaker(24_000, blocksize=64, prefill_ms=5, capacity_s=0.05, stream_factory=factory) as spk:
        for i in range(0, len(sig), 500):
            spk.write(sig[i : i + 500], block=True, timeout=10)
        stream = FakeStream.last
    # zeros inserted by underflows are allowed (thread timing); the real samples are complete and ordered
    np.testing.assert_array_equal(_nonzero(stream), sig)
    assert spk.stats.overflow_samples == 0 and spk.stats.played_samples == len(sig)
    assert stream.kwargs["blocksize"] == 64 and stream.closed


# ---------------------------------------------------------------- missing sounddevice / PortAudio / devices


def test_import_is_lazy():
    code = "import sys, snac_stream.audio.devices; assert 'sounddevice' not in sys.modules, 'eager import'"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


def test_missing_sounddevice_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "sounddevice", None)  # makes `import sounddevice` raise ImportError
    with pytest.raises(AudioUnavailableError, match=r"pip install 'snac-stream\[mic\]'"):
        Microphone(16_000).start()
    with pytest.raises(AudioUnavailableError, match="sounddevice"):
        Speaker(16_000).open()
    with pytest.raises(AudioUnavailableError):
        list_devices()
    assert default_input_available() is False and default_output_available() is False


def test_missing_portaudio_library(monkeypatch):
    monkeypatch.delitem(sys.modules, "sounddevice", raising=False)
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "sounddevice":
            raise OSError("PortAudio library not found")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(AudioUnavailableError, match="apt-get install libportaudio2") as ei:
        Microphone(16_000).start()
    assert isinstance(ei.value, RuntimeError) and isinstance(ei.value.__cause__, OSError)
    assert default_output_available() is False


def make_fake_sounddevice(devices: list[dict], open_error: str | None = None) -> types.ModuleType:
    """Minimal module with sounddevice's query API; InputStream/OutputStream may raise PortAudioError."""
    sd = types.ModuleType("sounddevice")

    class PortAudioError(Exception):
        pass

    def query_devices(device=None, kind=None):
        if kind is None and device is None:
            return list(devices)
        cands = [d for d in devices if d[f"max_{kind}_channels"] > 0]
        if device is None:
            if not cands:
                raise PortAudioError("Error querying device -1")
            return cands[0]
        for d in cands:
            if device == d["index"] or (isinstance(device, str) and device in d["name"]):
                return d
        raise ValueError(f"No {kind} device matching {device!r}")

    def stream(**kwargs):
        if open_error:
            raise PortAudioError(open_error, -9997)
        return FakeStream(kind="input", source=ramp(10), **kwargs)

    sd.PortAudioError, sd.query_devices, sd.InputStream, sd.OutputStream = (
        PortAudioError,
        query_devices,
        stream,
        stream,
    )
    sd.query_hostapis = lambda: [{"name": "ALSA"}]
    return sd


def test_no_device_found(monkeypatch):
    monkeypatch.setitem(sys.modules, "sounddevice", make_fake_sounddevice([]))
    assert list_devices() == []
    assert not default_input_available() and not default_output_available()
    with pytest.raises(AudioUnavailableError, match="no input device found.*--input FILE"):
        Microphone(16_000).start()
    with pytest.raises(AudioUnavailableError, match="no output device found"):
        Speaker(16_000).start()


def test_named_device_missing_and_rate_refused(monkeypatch):
    dev = dict(
        index=3,
        name="USB Mic",
        hostapi=0,
        max_input_channels=1,
        max_output_channels=0,
        default_samplerate=48000.0,
    )
    monkeypatch.setitem(sys.modules, "sounddevice", make_fake_sounddevice([dev], "Invalid sample rate"))
    assert default_input_available() and not default_output_available()
    assert list_devices()[0] == dict(dev, hostapi="ALSA", is_default_input=True, is_default_output=False)
    with pytest.raises(AudioUnavailableError, match="'Nope' not found"):
        Microphone(16_000, device="Nope").open()
    with pytest.raises(AudioUnavailableError, match="output device 'USB' not found"):
        Speaker(16_000, device="USB").open()
    with pytest.raises(
        AudioUnavailableError,
        match=r"'USB Mic' at 16000 Hz.*Invalid sample rate.*default is 48000 Hz.*resample",
    ):
        Microphone(16_000, device="USB").start()


def test_working_fake_module_device(monkeypatch):
    dev = dict(
        index=0,
        name="mic",
        hostapi=0,
        max_input_channels=2,
        max_output_channels=0,
        default_samplerate=16000.0,
    )
    monkeypatch.setitem(sys.modules, "sounddevice", make_fake_sounddevice([dev]))
    with Microphone(16_000) as mic:
        assert mic.read_blocking(10, timeout=10).size == 10
    with pytest.raises(ValueError):
        Microphone(0)

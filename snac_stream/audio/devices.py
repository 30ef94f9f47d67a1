"""Microphone and speaker adapters over sounddevice/PortAudio (mono float32 at the caller's rate).

``sounddevice`` is imported lazily, on first use of a device: importing this module has no side
effects and works without PortAudio. Anything that prevents audio I/O (package or library missing,
no device, unsupported sample rate) raises :class:`AudioUnavailableError` with a hint on what to do.
Streams are callback-driven; callbacks only copy into preallocated, bounded buffers.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Self

import numpy as np

from .ringbuffer import JitterBuffer, RingBuffer

__all__ = [
    "AudioUnavailableError",
    "JitterBuffer",
    "Microphone",
    "MicrophoneStats",
    "RingBuffer",
    "Speaker",
    "SpeakerStats",
    "default_input_available",
    "default_output_available",
    "list_devices",
]

StreamFactory = Callable[..., Any]
_LIST_HINT = "list devices with `python3 -m sounddevice`"


class AudioUnavailableError(RuntimeError):
    """Audio I/O is impossible here; the message names the cause and a remedy."""


def _import_sounddevice() -> ModuleType:
    """Import sounddevice, translating a missing package or PortAudio library into AudioUnavailableError."""
    try:
        import sounddevice
    except ImportError as e:
        raise AudioUnavailableError(
            "the 'sounddevice' package is not installed; install it with: pip install 'snac-stream[mic]'"
        ) from e
    except OSError as e:  # sounddevice raises OSError when libportaudio cannot be loaded
        raise AudioUnavailableError(
            f"the PortAudio library could not be loaded ({e}); install it with "
            "'apt-get install libportaudio2' (Debian/Ubuntu), 'dnf install portaudio' (Fedora) "
            "or 'brew install portaudio' (macOS)"
        ) from e
    return sounddevice


def list_devices() -> list[dict[str, Any]]:
    """All PortAudio devices as dicts (index, name, hostapi, max_input_channels, max_output_channels,
    default_samplerate [Hz], is_default_input, is_default_output). Raises AudioUnavailableError if
    sounddevice/PortAudio is missing; returns [] when there are no devices."""
    sd = _import_sounddevice()
    hostapis = sd.query_hostapis()
    defaults = {}
    for kind in ("input", "output"):
        try:
            defaults[kind] = sd.query_devices(kind=kind)["index"]
        except Exception:
            defaults[kind] = None
    return [
        {
            "index": int(d["index"]),
            "name": str(d["name"]),
            "hostapi": str(hostapis[d["hostapi"]]["name"]),
            "max_input_channels": int(d["max_input_channels"]),
            "max_output_channels": int(d["max_output_channels"]),
            "default_samplerate": float(d["default_samplerate"]),
            "is_default_input": d["index"] == defaults["input"],
            "is_default_output": d["index"] == defaults["output"],
        }
        for d in sd.query_devices()
    ]


def _default_available(kind: str) -> bool:
    try:
        sd = _import_sounddevice()
        info = sd.query_devices(kind=kind)
        return int(info[f"max_{kind}_channels"]) > 0
    except Exception:  # no PortAudio, no device, host API errors: all mean "not available"
        return False


def default_input_available() -> bool:
    """True if a default input device exists; False (never raises) if PortAudio or devices are missing."""
    return _default_available("input")


def default_output_available() -> bool:
    """True if a default output device exists; False (never raises) if PortAudio or devices are missing."""
    return _default_available("output")


def _device_info(sd: ModuleType, device: int | str | None, kind: str) -> dict[str, Any]:
    """Query the device that ``device`` selects for ``kind`` or raise AudioUnavailableError."""
    alt = (
        "use --input FILE to read a file instead" if kind == "input" else "use --output FILE to write a file"
    )
    try:
        info = sd.query_devices(device, kind=kind)
    except (sd.PortAudioError, ValueError) as e:
        if device is None:
            raise AudioUnavailableError(f"no {kind} device found ({e}); {alt}, or {_LIST_HINT}") from e
        raise AudioUnavailableError(f"{kind} device {device!r} not found ({e}); {_LIST_HINT}") from e
    if int(info[f"max_{kind}_channels"]) < 1:
        raise AudioUnavailableError(f"device {info['name']!r} has no {kind} channels; {_LIST_HINT}")
    return dict(info)


class _Stream:
    """Shared open/start/stop/close and context-manager logic for one PortAudio stream."""

    _kind = "input"

    def __init__(
        self, sample_rate: int, device: int | str | None, blocksize: int, stream_factory: StreamFactory | None
    ) -> None:
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive (Hz), got {sample_rate}")
        self.sample_rate = int(sample_rate)
        self.device = device
        self.blocksize = int(blocksize)
        self._factory = stream_factory
        self._stream: Any = None
        self._running = False
        self._device_name = "default" if device is None else str(device)
        self._device_rate: float | None = None
        self._callbacks = 0
        self._status_events = 0

    def _callback(self, data: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        raise NotImplementedError

    def _wrap(self, e: BaseException, name: str, action: str) -> AudioUnavailableError:
        rate = f" (its default is {self._device_rate:g} Hz)" if self._device_rate else ""
        return AudioUnavailableError(
            f"cannot {action} {self._kind} device {name!r} at {self.sample_rate} Hz, mono float32: {e}. "
            f"The device may not support this sample rate{rate}: resample to a rate it supports, "
            f"choose another device (ALSA 'default'/'plug' devices convert rates), or {_LIST_HINT}"
        )

    def _errors(self) -> tuple[type[BaseException], ...]:
        sd = sys.modules.get("sounddevice")
        return (sd.PortAudioError,) if sd is not None and hasattr(sd, "PortAudioError") else ()

    def open(self) -> None:
        """Create the stream (not started). Raises AudioUnavailableError if the device is unusable."""
        if self._stream is not None:
            return
        factory, name = self._factory, self._device_name
        errors: tuple[type[BaseException], ...] = self._errors()
        if factory is None:
            sd = _import_sounddevice()
            info = _device_info(sd, self.device, self._kind)
            name, self._device_rate = str(info["name"]), float(info["default_samplerate"])
            factory = sd.InputStream if self._kind == "input" else sd.OutputStream
            errors = (sd.PortAudioError, ValueError)
        try:
            self._stream = factory(
                samplerate=self.sample_rate,
                channels=1,
                dtype="float32",
                callback=self._callback,
                device=self.device,
                blocksize=self.blocksize,
            )
        except errors as e:
            raise self._wrap(e, name, "open") from e
        self._device_name = name

    def start(self) -> None:
        """Open if needed and start the callback stream (no-op if running)."""
        self.open()
        if not self._running:
            try:
                self._stream.start()
            except self._errors() as e:
                raise self._wrap(e, self._device_name, "start") from e
            self._running = True

    def stop(self) -> None:
        """Stop the stream (PortAudio plays out already-submitted output buffers); it can be restarted."""
        if self._stream is not None and self._running:
            self._running = False
            self._stream.stop()

    def close(self) -> None:
        """Stop and release the device."""
        try:
            self.stop()
        finally:
            if self._stream is not None:
                stream, self._stream = self._stream, None
                stream.close()

    @property
    def active(self) -> bool:
        """True while started (between ``start()`` and ``stop()``/``close()``)."""
        return self._running

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()


@dataclass(frozen=True)
class MicrophoneStats:
    captured_samples: int  #: samples delivered by the device callback
    dropped_samples: int  #: oldest samples dropped because the reader fell behind (ring overflow)
    overflow_events: int  #: callbacks that had to drop samples
    input_overflows: int  #: callbacks flagged ``input_overflow`` by PortAudio (loss inside the driver)
    status_events: int  #: callbacks with any PortAudio status flag set
    callbacks: int
    buffered_samples: int  #: samples waiting to be read


class Microphone(_Stream):
    """Mono float32 capture into a bounded ring buffer of ``capacity_s`` seconds.

    ``stream_factory`` replaces ``sounddevice.InputStream`` (same keyword arguments: samplerate,
    channels, dtype, callback, device, blocksize); tests use it to inject fake streams.
    ``blocksize=0`` lets PortAudio choose the callback size; reads never assume a block size.
    """

    _kind = "input"

    def __init__(
        self,
        sample_rate: int,
        device: int | str | None = None,
        blocksize: int = 0,
        capacity_s: float = 10.0,
        stream_factory: StreamFactory | None = None,
    ) -> None:
        super().__init__(sample_rate, device, blocksize, stream_factory)
        self.ring = RingBuffer(max(1, round(capacity_s * self.sample_rate)))
        self._input_overflows = 0

    def _callback(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        if status:
            self._status_events += 1
            if getattr(status, "input_overflow", False):
                self._input_overflows += 1
        self.ring.write(indata)
        self._callbacks += 1

    def start(self) -> None:
        self.ring.reopen()
        super().start()

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            self.ring.close()  # wake readers blocked in read_blocking

    def read(self, max_samples: int | None = None) -> np.ndarray:
        """Return the captured samples available now (at most ``max_samples``); may be empty."""
        return self.ring.read(max_samples)

    def read_blocking(
        self, min_samples: int, timeout: float | None = None, max_samples: int | None = None
    ) -> np.ndarray:
        """Wait for ``min_samples`` (or ``timeout`` seconds, or stop), then return what is available."""
        return self.ring.read_blocking(min_samples, timeout, max_samples)

    @property
    def stats(self) -> MicrophoneStats:
        r = self.ring
        return MicrophoneStats(
            captured_samples=r.written_samples,
            dropped_samples=r.overflow_samples,
            overflow_events=r.overflow_events,
            input_overflows=self._input_overflows,
            status_events=self._status_events,
            callbacks=self._callbacks,
            buffered_samples=r.available,
        )


@dataclass(frozen=True)
class SpeakerStats:
    played_samples: int  #: real samples handed to the device
    underflow_samples: int  #: zeros inserted because the producer was late
    underflow_events: int
    overflow_samples: int  #: oldest samples dropped because the producer was too far ahead
    output_underflows: int  #: callbacks flagged ``output_underflow`` by PortAudio
    status_events: int  #: callbacks with any PortAudio status flag set
    callbacks: int
    buffered_samples: int  #: samples waiting to be played


class Speaker(_Stream):
    """Mono float32 playback from a :class:`JitterBuffer` (``prefill_ms`` cushion, ``capacity_s`` bound).

    ``write`` may be called before ``start``. Leaving the ``with`` block normally drains the buffer
    first; on an exception it stops at once. ``stream_factory`` replaces ``sounddevice.OutputStream``.
    """

    _kind = "output"

    def __init__(
        self,
        sample_rate: int,
        device: int | str | None = None,
        blocksize: int = 0,
        prefill_ms: float = 60.0,
        capacity_s: float = 10.0,
        stream_factory: StreamFactory | None = None,
    ) -> None:
        super().__init__(sample_rate, device, blocksize, stream_factory)
        self.jitter = JitterBuffer(self.sample_rate, prefill_ms=prefill_ms, capacity_s=capacity_s)
        self._output_underflows = 0

    def _callback(self, outdata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        if status:
            self._status_events += 1
            if getattr(status, "output_underflow", False):
                self._output_underflows += 1
        self.jitter.pull_into(outdata[:, 0] if outdata.ndim == 2 else outdata)
        self._callbacks += 1

    def write(self, samples: np.ndarray, block: bool = False, timeout: float | None = None) -> int:
        """Queue mono samples for playback; returns how many old samples were dropped to make room.

        With ``block=True`` (and the stream running) first wait up to ``timeout`` seconds for space,
        which gives a faster-than-real-time producer back-pressure instead of drops.
        """
        samples = np.asarray(samples, dtype=np.float32)
        need = min(samples.shape[0], self.jitter.capacity)
        deadline = None if timeout is None else time.monotonic() + timeout
        while block and self._running and self.jitter.free_space() < need:
            if deadline is not None and time.monotonic() >= deadline:
                break
            time.sleep(0.002)
        return self.jitter.push(samples)

    def finish(self) -> None:
        """Mark end of stream: buffered audio plays out even if shorter than the prefill."""
        self.jitter.finish()

    def drain(self, timeout: float | None = None) -> bool:
        """``finish()`` and wait (at most ``timeout`` seconds) until all buffered samples were handed to
        the device; returns True if drained. Returns at once if the stream is not running."""
        self.finish()
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.jitter.drained and self._running:
            if deadline is not None and time.monotonic() >= deadline:
                break
            time.sleep(0.005)
        return self.jitter.drained

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None and self._running:
                self.drain(timeout=self.jitter.available / self.sample_rate + 2.0)
        finally:
            self.close()

    @property
    def stats(self) -> SpeakerStats:
        j = self.jitter
        return SpeakerStats(
            played_samples=j.played_samples,
            underflow_samples=j.underflow_samples,
            underflow_events=j.underflow_events,
            overflow_samples=j.overflow_samples,
            output_underflows=self._output_underflows,
            status_events=self._status_events,
            callbacks=self._callbacks,
            buffered_samples=j.available,
        )

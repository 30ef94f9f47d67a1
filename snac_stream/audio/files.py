"""Audio files: reading in blocks (soundfile) with resampling (soxr) and channel mixing, writing
WAV/FLAC incrementally, and the embedded demo signal. soundfile and soxr are imported lazily
(extra ``audio``).

:class:`AudioReader` reads any length in bounded memory: ``read(n)`` returns the next ``n``
samples at the requested rate, ``[streams, n]`` (one stream with the channels mixed to mono,
or one per channel). The resampler is soxr's streaming one, whose output does not depend on how
the input is cut, so a file read in blocks is exactly the file read whole.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: file name suffixes treated as audio when a directory is scanned (soundfile reads them)
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".w64", ".rf64", ".caf")
CHANNEL_MODES = ("mix", "each")
RESAMPLE_QUALITY = "HQ"  # soxr's default: 20-bit precision, passband to 91.3% of Nyquist
_READ_FRAMES = 1 << 16  # source frames per soundfile read
_ESTIMATED_LENGTH = ("OGG", "MP3")  # formats whose header length libsndfile may only estimate


class AudioFileError(RuntimeError):
    """A file that cannot be read as audio: the message names the file, the problem and what to do."""


def _soundfile():
    try:
        import soundfile
    except (ImportError, OSError) as e:
        raise RuntimeError(
            f"reading/writing audio files needs soundfile and libsndfile ({e}): "
            "pip install 'snac-stream[audio]' (and apt-get install libsndfile1 if it is missing)"
        ) from None
    return soundfile


def _soxr():
    try:
        import soxr
    except ImportError as e:
        raise RuntimeError(
            f"resampling needs python-soxr ({e}): pip install 'snac-stream[audio]' (or pip install soxr)"
        ) from None
    return soxr


def resample(audio: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Band-limited resampling (soxr, HQ) of float audio ``[n]`` or ``[n, channels]``; float32."""
    audio = np.asarray(audio, dtype=np.float32)
    if sr_in == sr_out or audio.shape[0] == 0:
        return audio
    return _soxr().resample(audio, sr_in, sr_out, quality=RESAMPLE_QUALITY)


# ----------------------------------------------------------------------------- inspecting


@dataclass(frozen=True)
class AudioInfo:
    """What a file holds: ``frames`` samples per channel at ``sample_rate`` Hz."""

    path: Path
    sample_rate: int
    channels: int
    frames: int
    format: str
    subtype: str

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate


def _wav_data_sizes(path: Path) -> tuple[int, int] | None:
    """(bytes the RIFF/WAVE header declares for the ``data`` chunk, bytes the file holds after it),
    or None when the file is not a plain RIFF WAV or declares no size (streamed WAVs write 0 or
    0xFFFFFFFF)."""
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        size = path.stat().st_size
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            chunk_id, chunk_size = struct.unpack("<4sI", f.read(8))
            if chunk_id == b"data":
                if chunk_size in (0, 0xFFFFFFFF):
                    return None
                return chunk_size, size - pos - 8
            pos += 8 + chunk_size + (chunk_size & 1)
    return None


def audio_info(path: str | Path) -> AudioInfo:
    """Inspect ``path`` without reading its samples. Raises :class:`AudioFileError` for a missing
    file, a directory, a file soundfile cannot read, a truncated WAV, or a file with no samples."""
    sf = _soundfile()
    path = Path(path)
    if not path.exists():
        raise AudioFileError(f"{path}: no such file")
    if path.is_dir():
        raise AudioFileError(f"{path}: is a directory, not an audio file")
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        raise AudioFileError(
            f"{path}: not an audio file soundfile can read ({e}); use WAV, FLAC, OGG or another "
            "format libsndfile supports"
        ) from None
    if info.format in ("WAV", "WAVEX"):
        sizes = _wav_data_sizes(path)
        if sizes is not None and sizes[0] > sizes[1]:
            raise AudioFileError(
                f"{path}: truncated WAV: its header declares {sizes[0]} bytes of audio, the file holds "
                f"{sizes[1]} (an interrupted copy or download?); fetch the file again"
            )
    if info.frames <= 0:
        raise AudioFileError(f"{path}: contains no audio (0 samples)")
    return AudioInfo(
        path, int(info.samplerate), int(info.channels), int(info.frames), info.format, info.subtype
    )


# ----------------------------------------------------------------------------- reading


class AudioReader:
    """Block-wise reader: ``read(n)`` -> float32 ``[streams, m]`` at ``sample_rate`` (``m == n``
    until the end of the file, then fewer, then 0).

    ``channels="mix"`` averages the channels to one stream (before resampling), ``"each"`` keeps
    one stream per channel. ``conversions`` says what was changed. Raises :class:`AudioFileError`
    (naming the file) for unreadable, empty, truncated or corrupt input, also mid-file.
    """

    def __init__(self, path: str | Path, sample_rate: int, channels: str = "mix"):
        if channels not in CHANNEL_MODES:
            raise ValueError(f"channels must be one of {CHANNEL_MODES}, got {channels!r}")
        self.info = audio_info(path)
        self.sample_rate = int(sample_rate)
        self.streams = 1 if channels == "mix" else self.info.channels
        self.mix = channels == "mix" and self.info.channels > 1
        self._resampler = None
        if self.info.sample_rate != self.sample_rate:
            self._resampler = _soxr().ResampleStream(
                self.info.sample_rate,
                self.sample_rate,
                self.streams,
                dtype="float32",
                quality=RESAMPLE_QUALITY,
            )
        sf = _soundfile()
        try:
            self._file = sf.SoundFile(str(self.info.path))
        except (sf.LibsndfileError, RuntimeError, OSError) as e:
            raise AudioFileError(f"{self.info.path}: cannot open: {e}") from None
        self._pending: list[np.ndarray] = []  # [m, streams] pieces at the target rate
        self._pending_len = 0
        self.frames_read = 0  # source frames read so far
        self.samples = 0  # target-rate samples returned so far (per stream)
        self._eof = False

    @property
    def conversions(self) -> list[str]:
        """What reading changed, e.g. ``["resampled 44100 -> 24000 Hz", "2 channels mixed to mono"]``."""
        notes = []
        if self._resampler is not None:
            notes.append(
                f"resampled {self.info.sample_rate} -> {self.sample_rate} Hz (soxr {RESAMPLE_QUALITY})"
            )
        if self.mix:
            notes.append(f"{self.info.channels} channels mixed to mono")
        elif self.streams > 1:
            notes.append(f"{self.info.channels} channels as {self.streams} streams")
        return notes

    @property
    def expected_samples(self) -> int:
        """About how many samples per stream the whole file gives at the target rate (for progress)."""
        return round(self.info.frames * self.sample_rate / self.info.sample_rate)

    def _fill(self) -> None:
        sf = _soundfile()
        try:
            block = self._file.read(_READ_FRAMES, dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as e:
            raise AudioFileError(
                f"{self.info.path}: cannot read past sample {self.frames_read} of {self.info.frames}: {e} "
                "(the file is truncated or corrupt)"
            ) from None
        self.frames_read += block.shape[0]
        last = block.shape[0] < _READ_FRAMES
        if last and self.frames_read < self.info.frames and self.info.format not in _ESTIMATED_LENGTH:
            raise AudioFileError(
                f"{self.info.path}: truncated: it ends after {self.frames_read} of the {self.info.frames} "
                "samples its header declares"
            )
        if self.mix:
            block = block.mean(axis=1, keepdims=True, dtype=np.float32)
        if not np.isfinite(block).all():
            raise AudioFileError(
                f"{self.info.path}: NaN or infinite samples near sample {self.frames_read}; "
                "the file is corrupt (or a float WAV with invalid values)"
            )
        if self._resampler is not None:
            block = self._resampler.resample_chunk(block, last=last)
        if block.shape[0]:
            self._pending.append(np.ascontiguousarray(block))
            self._pending_len += block.shape[0]
        self._eof = last

    def read(self, n: int) -> np.ndarray:
        """The next ``n`` samples per stream, ``[streams, m]`` float32 (``m < n`` only at the end)."""
        while self._pending_len < n and not self._eof:
            self._fill()
        joined = (
            (np.concatenate(self._pending) if len(self._pending) != 1 else self._pending[0])
            if self._pending
            else np.zeros((0, self.streams), np.float32)
        )
        out, rest = joined[:n], joined[n:]
        self._pending = [rest] if rest.shape[0] else []
        self._pending_len = rest.shape[0]
        self.samples += out.shape[0]
        return np.ascontiguousarray(out.T)

    @property
    def finished(self) -> bool:
        """True once every sample has been returned."""
        return self._eof and self._pending_len == 0

    def blocks(self, n: int) -> Iterator[np.ndarray]:
        """``read(n)`` until the end: ``[streams, n]`` blocks, the last one shorter."""
        while not self.finished:
            block = self.read(n)
            if block.shape[1]:
                yield block

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> AudioReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_audio(path: str | Path, sample_rate: int, channels: str = "mix") -> np.ndarray:
    """A whole file at ``sample_rate``, float32: ``[n]`` mixed to mono, or ``[channels, n]`` with
    ``channels="each"``. The same samples as :class:`AudioReader` returns block by block."""
    with AudioReader(path, sample_rate, channels) as reader:
        blocks = list(reader.blocks(1 << 20))
        audio = np.concatenate(blocks, axis=1) if blocks else np.zeros((reader.streams, 0), np.float32)
    return audio[0] if channels == "mix" else audio


# ----------------------------------------------------------------------------- writing


def write_audio(path: str | Path, audio: np.ndarray, sample_rate: int) -> None:
    """Write mono float audio as a 32-bit float WAV (lossless for the decoder's output)."""
    _soundfile().write(str(path), np.asarray(audio, dtype=np.float32), sample_rate, subtype="FLOAT")


def audio_format(path: str | Path) -> tuple[str, str]:
    """(soundfile format, subtype) for an output name: ``.flac`` -> FLAC 24-bit, otherwise WAV float32."""
    return ("FLAC", "PCM_24") if Path(path).suffix.lower() == ".flac" else ("WAV", "FLOAT")


class WavWriter:
    """Incremental float WAV (or FLAC) writer: ``write`` chunks ``[n]`` or ``[channels, n]``, ``close``.

    ``format``/``subtype`` default to :func:`audio_format` of ``path`` (float32 WAV: lossless for the
    decoder's output; FLAC stores 24-bit PCM). ``samples`` counts samples per channel written.
    """

    def __init__(
        self,
        path: str | Path,
        sample_rate: int,
        channels: int = 1,
        *,
        format: str | None = None,
        subtype: str | None = None,
    ):
        self.path = Path(path)
        default_format, default_subtype = audio_format(path)
        format = format or default_format
        subtype = subtype or (default_subtype if format == default_format else None)
        self.channels = channels
        self._file = _soundfile().SoundFile(
            str(path), "w", sample_rate, channels, subtype=subtype, format=format
        )
        self.samples = 0

    def write(self, audio: np.ndarray) -> None:
        audio = np.asarray(audio, dtype=np.float32)
        audio = audio.reshape(-1) if self.channels == 1 else audio.reshape(self.channels, -1).T
        self._file.write(audio)
        self.samples += audio.shape[0]

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> WavWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ----------------------------------------------------------------------------- signals


def demo_signal(sample_rate: int, seconds: float = 6.0, seed: int = 0) -> np.ndarray:
    """The embedded sample: a deterministic, speech-like test signal (voiced 'syllables' with
    vibrato and formant-like harmonics, unvoiced noise bursts, pauses), peak 0.5."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sample_rate)
    t = np.arange(n) / sample_rate
    out = np.zeros(n)
    pos = 0.1
    while pos < seconds - 0.3:
        dur = rng.uniform(0.12, 0.35)
        a, b = int(pos * sample_rate), int(min(pos + dur, seconds) * sample_rate)
        seg = t[a:b] - pos
        env = np.sin(np.pi * seg / dur) ** 2
        if rng.random() < 0.75:
            f0 = rng.uniform(110, 220) * (1 + 0.03 * np.sin(2 * np.pi * 5.5 * seg))
            phase = 2 * np.pi * np.cumsum(f0) / sample_rate
            formants = rng.uniform([500, 1200, 2500], [900, 2000, 3200])
            voiced = sum(
                np.sin(k * phase) / k * (1 + 2 * sum(np.exp(-((k * f0 - f) ** 2) / 2e4) for f in formants))
                for k in range(1, 25)
                if k * 220 < sample_rate / 2
            )
            out[a:b] += env * voiced
        else:
            out[a:b] += env * rng.standard_normal(b - a) * 0.3
        pos += dur + rng.uniform(0.02, 0.25)
    peak = np.abs(out).max() or 1.0
    return (0.5 * out / peak).astype(np.float32)


def demo_blocks(
    sample_rate: int, seconds: float, piece_seconds: float = 60.0, seed: int = 0
) -> Iterator[np.ndarray]:
    """A long speech-like signal in pieces: :func:`demo_signal` of ``piece_seconds`` with seeds
    ``seed, seed+1, ...``, the last piece cut to make ``seconds`` in all (for writing hour-long
    test files in bounded memory)."""
    n_total = int(seconds * sample_rate)
    done, k = 0, 0
    while done < n_total:
        piece = demo_signal(sample_rate, piece_seconds, seed + k)[: n_total - done]
        done += piece.shape[0]
        k += 1
        yield piece


__all__ = [
    "AUDIO_SUFFIXES",
    "CHANNEL_MODES",
    "AudioFileError",
    "AudioInfo",
    "AudioReader",
    "audio_info",
    "audio_format",
    "read_audio",
    "resample",
    "write_audio",
    "WavWriter",
    "demo_signal",
    "demo_blocks",
]

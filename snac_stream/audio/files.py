"""Audio files (soundfile, lazily imported), resampling, and the embedded demo signal."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch


def _soundfile():
    try:
        import soundfile
    except (ImportError, OSError) as e:
        raise RuntimeError(
            f"reading/writing audio files needs soundfile and libsndfile ({e}): "
            "pip install 'snac-stream[audio]' (and apt-get install libsndfile1 if it is missing)"
        ) from None
    return soundfile


def resample(
    audio: np.ndarray, sr_in: int, sr_out: int, width: int = 16, rolloff: float = 0.945
) -> np.ndarray:
    """Band-limited resampling (Hann-windowed sinc, polyphase) of mono float audio."""
    if sr_in == sr_out or audio.size == 0:
        return audio.astype(np.float32, copy=False)
    g = math.gcd(sr_in, sr_out)
    up, down = sr_out // g, sr_in // g
    cutoff = min(up, down) * rolloff
    half = int(math.ceil(width * down / cutoff))
    t = (torch.arange(-half, half + down, dtype=torch.float64)[None] / down) - (
        torch.arange(up, dtype=torch.float64)[:, None] / up
    )
    t = t * cutoff
    window = torch.cos(torch.clamp(t * math.pi / width / 2, -math.pi / 2, math.pi / 2)) ** 2
    kernel = (
        torch.where(t == 0, torch.ones_like(t), torch.sin(math.pi * t) / (math.pi * t))
        * window
        * cutoff
        / down
    )
    x = torch.from_numpy(np.asarray(audio, dtype=np.float64))[None, None]
    x = torch.nn.functional.pad(x, (half, half + down))
    y = torch.nn.functional.conv1d(x, kernel[:, None], stride=down)  # [1, up, frames]
    y = y.transpose(1, 2).reshape(-1)
    n_out = math.ceil(audio.shape[-1] * up / down)
    return y[:n_out].numpy().astype(np.float32)


def read_audio(path: str | Path, sample_rate: int) -> np.ndarray:
    """Mono float32 samples of a file, mixed down and resampled to ``sample_rate`` if needed."""
    sf = _soundfile()
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as e:
        raise RuntimeError(f"cannot read audio file {path}: {e}") from None
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    return resample(mono, sr, sample_rate)


def write_audio(path: str | Path, audio: np.ndarray, sample_rate: int) -> None:
    """Write mono float audio as a 32-bit float WAV (lossless for the decoder's output)."""
    _soundfile().write(str(path), np.asarray(audio, dtype=np.float32), sample_rate, subtype="FLOAT")


class WavWriter:
    """Incremental mono float32 WAV writer (``write`` chunks, ``close``); counts samples."""

    def __init__(self, path: str | Path, sample_rate: int):
        self.path = Path(path)
        self._file = _soundfile().SoundFile(str(path), "w", sample_rate, 1, subtype="FLOAT")
        self.samples = 0

    def write(self, audio: np.ndarray) -> None:
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        self._file.write(audio)
        self.samples += audio.size

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> WavWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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

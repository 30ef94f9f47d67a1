"""Reading audio files in blocks: real WAV/FLAC/OGG files (soundfile), resampling (soxr), channel
mixing, and every kind of bad file."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import soxr
from hypothesis import given, settings
from hypothesis import strategies as st

from snac_stream.audio.files import (
    AudioFileError,
    AudioReader,
    WavWriter,
    audio_info,
    demo_blocks,
    demo_signal,
    read_audio,
    resample,
)


def stereo(sr: int, seconds: float) -> np.ndarray:
    """``[n, 2]`` float32: two different speech-like channels."""
    left = demo_signal(sr, seconds, seed=1)
    right = 0.5 * demo_signal(sr, seconds, seed=2)
    return np.stack([left, right], axis=1)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("audio")
    x = stereo(44100, 1.3)
    sf.write(d / "s44.wav", x, 44100, subtype="PCM_16")
    sf.write(d / "s44.flac", x, 44100, subtype="PCM_16")
    sf.write(d / "m24.wav", x[:, 0], 24000, subtype="FLOAT")
    sf.write(d / "s16.ogg", stereo(16000, 0.7), 16000, format="OGG", subtype="VORBIS")
    return d


def whole(path, sr, mix=True):
    """The reference: soundfile reads everything, channels averaged, soxr resamples in one call."""
    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    data = data.mean(axis=1, keepdims=True, dtype=np.float32) if mix else data
    return (data if rate == sr else soxr.resample(data, rate, sr, quality="HQ")).T


@settings(max_examples=25, deadline=None)
@given(
    name=st.sampled_from(["s44.wav", "s44.flac", "m24.wav", "s16.ogg"]),
    mix=st.booleans(),
    sizes=st.lists(st.sampled_from([1, 7, 511, 4096, 65536, 70001]), min_size=1, max_size=8),
)
def test_blocks_equal_the_whole_file(files, name, mix, sizes):
    """Any sequence of read sizes gives exactly the samples of the file read and resampled whole."""
    want = whole(files / name, 24000, mix)
    got = []
    with AudioReader(files / name, 24000, "mix" if mix else "each") as reader:
        i = 0
        while not reader.finished:
            block = reader.read(sizes[i % len(sizes)])
            assert block.dtype == np.float32 and block.shape[0] == reader.streams
            assert block.shape[1] == sizes[i % len(sizes)] or reader.finished
            got.append(block)
            i += 1
        assert reader.samples == want.shape[1]
    np.testing.assert_array_equal(np.concatenate(got, axis=1), want)


def test_conversions_and_shapes(files):
    with AudioReader(files / "s44.flac", 24000) as r:
        assert r.info.sample_rate == 44100 and r.info.channels == 2 and r.info.format == "FLAC"
        assert r.streams == 1
        assert r.conversions == ["resampled 44100 -> 24000 Hz (soxr HQ)", "2 channels mixed to mono"]
        assert r.expected_samples == round(r.info.frames * 24000 / 44100)
    with AudioReader(files / "s44.wav", 24000, "each") as r:
        assert r.streams == 2 and r.conversions[1] == "2 channels as 2 streams"
    with AudioReader(files / "m24.wav", 24000) as r:
        assert r.conversions == []
        np.testing.assert_array_equal(r.read(10**6)[0], sf.read(str(files / "m24.wav"), dtype="float32")[0])
    mono = read_audio(files / "s44.wav", 16000)
    each = read_audio(files / "s44.wav", 16000, "each")
    assert mono.ndim == 1 and each.shape == (2, mono.shape[0])
    # mixing happens before resampling; the resampler is linear, so the order changes only rounding
    np.testing.assert_allclose(mono, each.mean(axis=0), atol=1e-6)
    assert np.abs(each[0] - each[1]).max() > 0.1  # the channels really differ


def test_resample_matches_soxr_and_keeps_length():
    x = demo_signal(44100, 0.5)
    y = resample(x, 44100, 24000)
    np.testing.assert_array_equal(y, soxr.resample(x, 44100, 24000, quality="HQ"))
    assert y.shape == (round(x.shape[0] * 24000 / 44100),)
    assert resample(x, 24000, 24000) is not None and resample(x, 24000, 24000).shape == x.shape
    with pytest.raises(ValueError, match="channels must be one of"):
        AudioReader("x.wav", 24000, "left")


def test_writer_channels_and_flac(tmp_path):
    x = stereo(24000, 0.2).T  # [2, n]
    with WavWriter(tmp_path / "o.flac", 24000, 2) as w:
        w.write(x[:, :100])
        w.write(x[:, 100:])
    assert w.samples == x.shape[1]
    info = sf.info(str(tmp_path / "o.flac"))
    assert (info.format, info.subtype, info.channels) == ("FLAC", "PCM_24", 2)
    back = read_audio(tmp_path / "o.flac", 24000, "each")
    np.testing.assert_allclose(back, x, atol=2**-22)
    with WavWriter(tmp_path / "o.wav", 24000) as w:
        w.write(x[0])
    assert sf.info(str(tmp_path / "o.wav")).subtype == "FLOAT"
    np.testing.assert_array_equal(read_audio(tmp_path / "o.wav", 24000), x[0])


def test_demo_blocks_make_a_long_signal_in_pieces():
    pieces = list(demo_blocks(8000, 2.5, piece_seconds=1.0))
    assert [p.shape[0] for p in pieces] == [8000, 8000, 4000]
    np.testing.assert_array_equal(pieces[1], demo_signal(8000, 1.0, seed=1))


# ----------------------------------------------------------------------------- bad files


def test_missing_directory_and_not_audio(tmp_path):
    with pytest.raises(AudioFileError, match="nope.wav: no such file"):
        audio_info(tmp_path / "nope.wav")
    with pytest.raises(AudioFileError, match="is a directory"):
        audio_info(tmp_path)
    (tmp_path / "text.wav").write_text("hello, not a wave file at all " * 20)
    with pytest.raises(AudioFileError, match="text.wav: not an audio file soundfile can read"):
        audio_info(tmp_path / "text.wav")
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(AudioFileError, match="empty.wav: not an audio file"):
        audio_info(tmp_path / "empty.wav")


def test_zero_length_audio(tmp_path):
    sf.write(tmp_path / "zero.wav", np.zeros(0, np.float32), 24000)
    with pytest.raises(AudioFileError, match=r"zero.wav: contains no audio \(0 samples\)"):
        AudioReader(tmp_path / "zero.wav", 24000)


def test_truncated_wav_is_refused(tmp_path):
    sf.write(tmp_path / "full.wav", demo_signal(24000, 0.5), 24000, subtype="PCM_16")
    data = (tmp_path / "full.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(data[: len(data) // 2])
    assert sf.info(str(tmp_path / "cut.wav")).frames > 0  # libsndfile alone would read half of it silently
    with pytest.raises(AudioFileError, match=r"cut.wav: truncated WAV: its header declares 24000 bytes"):
        audio_info(tmp_path / "cut.wav")
    assert audio_info(tmp_path / "full.wav").frames == 12000


def test_truncated_flac_fails_while_reading(tmp_path):
    sf.write(tmp_path / "full.flac", stereo(24000, 3.0), 24000)
    data = (tmp_path / "full.flac").read_bytes()
    (tmp_path / "cut.flac").write_bytes(data[: len(data) // 2])
    with pytest.raises(AudioFileError, match=r"cut.flac: (cannot read past sample|truncated)"):
        read_audio(tmp_path / "cut.flac", 24000)


def test_nan_samples(tmp_path):
    x = demo_signal(24000, 0.2)
    x[1000] = np.nan
    sf.write(tmp_path / "nan.wav", x, 24000, subtype="FLOAT")
    with pytest.raises(AudioFileError, match="nan.wav: NaN or infinite samples"):
        read_audio(tmp_path / "nan.wav", 24000)

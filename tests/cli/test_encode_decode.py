"""``snac-stream encode`` / ``decode`` on real files: round trips for each format, the layout of
directory outputs, the summary, and every bad input (clear message, non-zero exit, nothing
half-written, the other files still done)."""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import make_ours, small_config

from snac_model import load_model
from snac_stream.audio.files import demo_signal, read_audio
from snac_stream.cli.main import main
from snac_stream.files import read_codes, read_snac, write_snac

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A local checkpoint of a small model (16 kHz, odd rates, attention window 4)."""
    d = tmp_path_factory.mktemp("model")
    make_ours(small_config("odd", noise=True), torch.float32, seed=3).save_pretrained(str(d))
    return d


@pytest.fixture(scope="module")
def model(model_dir):
    return load_model(str(model_dir)).fold_weight_norm().eval()  # as the CLI loads it


@pytest.fixture
def inputs(tmp_path) -> Path:
    """in/: a 44.1 kHz stereo WAV, a 16 kHz FLAC in a subfolder, an OGG at 22.05 kHz, a text file."""
    d = tmp_path / "in"
    (d / "sub").mkdir(parents=True)
    x = demo_signal(44100, 0.8, seed=1)
    sf.write(d / "stereo.wav", np.stack([x, 0.5 * x[::-1]], axis=1), 44100, subtype="PCM_16")
    sf.write(d / "sub" / "mono.flac", demo_signal(16000, 1.3, seed=2), 16000)
    sf.write(d / "sub" / "v.ogg", demo_signal(22050, 0.6, seed=3), 22050, format="OGG", subtype="VORBIS")
    (d / "README.txt").write_text("not audio, and not named like audio: ignored")
    return d


def partials(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".partial" in p.name]


def cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def offline(model, path, channels="mix"):
    audio = torch.from_numpy(read_audio(path, model.sample_rate, channels))
    return model.encode(audio.reshape(-1, 1, audio.shape[-1]))


def assert_near_offline(codes, want):
    """float32: the same codes as offline except, at most, a rare near tie."""
    assert [c.shape for c in codes] == [c.shape for c in want]
    flips = sum(int((a != b).sum()) for a, b in zip(codes, want, strict=True))
    assert flips <= sum(c.numel() for c in want) // 100


def test_directory_round_trip_snac(capsys, tmp_path, inputs, model_dir, model):
    code, out, err = cli(capsys, "encode", inputs, "-o", tmp_path / "codes", "--model", model_dir, "--json")
    assert code == 0, err
    names = sorted(p.relative_to(tmp_path / "codes").as_posix() for p in (tmp_path / "codes").rglob("*"))
    assert names == ["stereo.snac", "sub", "sub/mono.snac", "sub/v.snac"]
    summary = json.loads(out)
    assert summary["files"] == 3 and summary["failed"] == 0 and summary["codes"] > 0
    assert summary["audio_seconds"] == pytest.approx(0.8 + 1.3 + 0.6, abs=1e-3)
    assert summary["conversions"] == {
        "resampled 44100 -> 16000 Hz (soxr HQ)": 1,
        "2 channels mixed to mono": 1,
        "resampled 22050 -> 16000 Hz (soxr HQ)": 1,
    }
    assert "encoded 3 files, 2.7 s of audio" in err and "real-time factor" in err
    assert "stereo.wav: resampled 44100 -> 16000 Hz (soxr HQ), 2 channels mixed to mono" in err
    for name in ("stereo.wav", "sub/mono.flac", "sub/v.ogg"):
        header, codes = read_snac((tmp_path / "codes" / name).with_suffix(".snac"))
        src = inputs / name
        assert (
            header.sample_rate == sf.info(str(src)).samplerate and header.length == sf.info(str(src)).frames
        )
        assert_near_offline(codes, offline(model, src))

    code, out, err = cli(
        capsys, "decode", tmp_path / "codes", "-o", tmp_path / "audio", "--model", model_dir, "--seed", 5
    )
    assert code == 0, err
    assert "decoded 3 files" in err
    for name in ("stereo", "sub/mono", "sub/v"):
        header, codes = read_snac(tmp_path / "codes" / f"{name}.snac")
        audio, sr = sf.read(tmp_path / "audio" / f"{name}.wav", dtype="float32")
        assert sr == 16000 and sf.info(str(tmp_path / "audio" / f"{name}.wav")).subtype == "FLOAT"
        want = model.decode(codes, seed=5)[0, 0, : header.samples].numpy()
        assert audio.shape == want.shape == (header.samples,)  # trimmed to the encoded length
        np.testing.assert_allclose(audio, want, atol=1e-5, rtol=0)
    assert partials(tmp_path) == []


@pytest.mark.parametrize("fmt", ["npz", "tokens"])
def test_single_file_formats(capsys, tmp_path, inputs, model_dir, model, fmt):
    src = inputs / "stereo.wav"
    out = tmp_path / ("c.npz" if fmt == "npz" else "c.jsonl")
    code, _, err = cli(capsys, "encode", src, "-o", out, "--model", model_dir, "--channels", "each")
    assert code == 0, err
    want = offline(model, src, "each")
    if fmt == "npz":
        header, codes = read_codes(out)
        assert header.streams == 2
        assert_near_offline(codes, want)
        code, _, err = cli(capsys, "decode", out, "-o", tmp_path / "back.flac", "--model", model_dir)
        assert code == 0, err
        info = sf.info(str(tmp_path / "back.flac"))
        assert (info.format, info.channels, info.frames) == ("FLAC", 2, header.samples)
    else:
        lines = [json.loads(line) for line in out.read_text().splitlines()]
        assert [(r["source"], r["stream"], r["lm_offset"]) for r in lines] == [
            (str(src), 0, 128266),
            (str(src), 1, 128266),
        ]
        per_frame = model.codes_per_frame
        assert all(len(r["tokens"]) == len(r["lm_ids"]) == r["frames"] * per_frame for r in lines)
        tokens = lines[0]["tokens"]  # frame positions 0, 1, 2 (levels 0, 1, 1): ids offset + k * 64 + code
        assert lines[0]["lm_ids"][:4] == [
            128266 + tokens[0],
            128266 + 64 + tokens[1],
            128266 + 128 + tokens[2],
            128266 + tokens[3],
        ]


def test_tokens_of_a_directory_in_one_jsonl(capsys, tmp_path, inputs, model_dir):
    out = tmp_path / "train.jsonl"
    code, _, err = cli(
        capsys, "encode", inputs, "-o", out, "--model", model_dir, "--lm-offset", 10, "--jobs", 2
    )
    assert code == 0, err
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["source"] for r in lines) == ["stereo.wav", "sub/mono.flac", "sub/v.ogg"]
    assert all(min(r["lm_ids"]) >= 10 for r in lines)
    assert partials(tmp_path) == []


def test_skip_existing_and_batching_options(capsys, tmp_path, inputs, model_dir):
    one, batched = tmp_path / "one", tmp_path / "batched"
    assert cli(capsys, "encode", inputs, "-o", one, "--model", model_dir, "--jobs", 1)[0] == 0
    code, out, _ = cli(capsys, "encode", inputs, "-o", batched, "--model", model_dir, "--jobs", 3, "--json")
    assert code == 0 and max(map(int, json.loads(out)["forwards_by_batch_size"])) > 1  # really batched
    for p in one.rglob("*.snac"):
        (h1, c1), (h2, c2) = read_snac(p), read_snac(batched / p.relative_to(one))
        assert h1.samples == h2.samples
        assert_near_offline(c2, c1)  # float32: batched == one by one but for a rare near tie
    first = {p: p.read_bytes() for p in one.rglob("*.snac")}
    (one / "sub" / "v.snac").unlink()
    code, _, err = cli(
        capsys,
        "encode",
        inputs,
        "-o",
        one,
        "--model",
        model_dir,
        "--skip-existing",
        "--jobs",
        3,
        "--workers",
        2,
    )
    assert code == 0 and "encoded 1 file," in err and "skipped 2 (output exists)" in err
    assert {
        p: p.read_bytes() for p in one.rglob("*.snac")
    } == first  # the same file again, the others untouched
    for bad in (["--jobs", 0], ["--workers", 0]):
        code, _, err = cli(capsys, "encode", inputs, "-o", one, "--model", model_dir, *bad)
        assert code == 2 and "must be >= 1" in err


def wav_bytes(seconds: float, sr: int = 16000) -> bytes:
    import io

    f = io.BytesIO()
    sf.write(
        f,
        demo_signal(sr, seconds) if seconds else np.zeros(0, np.float32),
        sr,
        format="WAV",
        subtype="PCM_16",
    )
    return f.getvalue()


BAD_AUDIO = {
    "missing": (None, "missing.wav: no such file or directory"),
    "not_audio": (b"this is text, not audio " * 40, "not_audio.wav: not an audio file soundfile can read"),
    "empty": (b"", "empty.wav: not an audio file soundfile can read"),
    "zero_length": (wav_bytes(0.0), r"zero_length.wav: contains no audio \(0 samples\)"),
    "truncated": (wav_bytes(1.0)[:20000], "truncated.wav: truncated WAV: its header declares 32000 bytes"),
}


@pytest.mark.parametrize("case", sorted(BAD_AUDIO))
def test_bad_audio_inputs(capsys, tmp_path, inputs, model_dir, case):
    """Alone: a clear message, exit 1, no output. In a directory: the other files are still done."""
    data, message = BAD_AUDIO[case]
    bad = inputs / f"{case}.wav"
    if data is not None:
        bad.write_bytes(data)
    code, _, err = cli(capsys, "encode", bad, "-o", tmp_path / "one.snac", "--model", model_dir)
    assert code == 1 and not (tmp_path / "one.snac").exists()
    assert re.search(message, err), err
    if data is not None:
        code, out, err = cli(capsys, "encode", inputs, "-o", tmp_path / "all", "--model", model_dir, "--json")
        summary = json.loads(out)
        assert code == 1 and summary["files"] == 3 and summary["failed"] == 1, err
        assert summary["errors"][0]["input"] == f"{case}.wav"
        assert sorted(p.name for p in (tmp_path / "all").rglob("*.snac")) == [
            "mono.snac",
            "stereo.snac",
            "v.snac",
        ]
        assert "1 error:" in err
    assert partials(tmp_path) == []


def test_truncated_flac_inside_a_batch_leaves_nothing(capsys, tmp_path, inputs, model_dir):
    """Found mid-file, while other files share its batch: its output never appears."""
    x = demo_signal(16000, 4.0)
    sf.write(tmp_path / "long.flac", x, 16000)
    data = (tmp_path / "long.flac").read_bytes()
    (inputs / "cut.flac").write_bytes(data[: len(data) // 2])
    code, out, err = cli(capsys, "encode", inputs, "-o", tmp_path / "all", "--model", model_dir, "--json")
    assert code == 1
    assert json.loads(out)["errors"][0]["error"].startswith(f"{inputs / 'cut.flac'}: ")
    assert not (tmp_path / "all" / "cut.snac").exists() and partials(tmp_path) == []
    assert len(list((tmp_path / "all").rglob("*.snac"))) == 3


def test_unwritable_output(capsys, tmp_path, inputs, model_dir):
    (tmp_path / "file").write_text("a file where a directory should be")
    code, _, err = cli(
        capsys, "encode", inputs / "stereo.wav", "-o", tmp_path / "file" / "x.snac", "--model", model_dir
    )
    assert code == 1 and f"cannot write {tmp_path / 'file' / 'x.snac'}: {tmp_path / 'file'} is a file" in err
    code, _, err = cli(capsys, "encode", inputs, "-o", tmp_path / "file", "--model", model_dir)
    assert code == 2 and "is a file: several inputs (or a directory) need an output directory" in err
    with pytest.raises(SystemExit) as stop:  # a model that cannot load stops the command, as serve does
        cli(capsys, "encode", inputs / "stereo.wav", "-o", tmp_path / "m", "--model", tmp_path / "nomodel")
    assert stop.value.code == 2 and "cannot load model" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_bad_code_files(capsys, tmp_path, inputs, model_dir, model):
    """Another model, another version, a corrupted or truncated .snac: refused, named; others decoded."""
    d = tmp_path / "codes"
    assert cli(capsys, "encode", inputs, "-o", d, "--model", model_dir)[0] == 0
    good = (d / "stereo.snac").read_bytes()
    other = make_ours(small_config("odd"), torch.float32, seed=9)
    header, codes = read_snac(d / "stereo.snac")
    write_snac(d / "other_model.snac", codes, other)
    (d / "version.snac").write_bytes(good[:4] + b"\x07" + good[5:])
    flipped = bytearray(good)
    flipped[-2] ^= 1
    (d / "flipped.snac").write_bytes(bytes(flipped))
    (d / "truncated.snac").write_bytes(good[:-3])
    (d / "garbage.npz").write_bytes(b"PK\x03\x04 not really a zip")
    code, out, err = cli(capsys, "decode", d, "-o", tmp_path / "audio", "--model", model_dir, "--json")
    assert code == 1
    errors = {e["input"]: e["error"] for e in json.loads(out)["errors"]}
    assert "encoded with a different model: fingerprint" in errors["other_model.snac"]
    assert "--model" in errors["other_model.snac"]
    assert (
        "container version 7; this snac-stream reads version 1 (upgrade snac-stream)"
        in errors["version.snac"]
    )
    assert "do not match their checksum" in errors["flipped.snac"]
    assert "truncated: " in errors["truncated.snac"]
    assert "not a readable .npz" in errors["garbage.npz"]
    assert sorted(p.name for p in (tmp_path / "audio").rglob("*.wav")) == ["mono.wav", "stereo.wav", "v.wav"]
    assert partials(tmp_path) == []
    code, _, err = cli(
        capsys, "decode", tmp_path / "nothing.snac", "-o", tmp_path / "x.wav", "--model", model_dir
    )
    assert code == 1 and "nothing.snac: no such file or directory" in err


def test_interrupt_leaves_no_partial_output(capsys, tmp_path, inputs, model_dir, monkeypatch):
    from snac_stream.cli import file_jobs as progress

    calls = []

    def interrupt(self, seconds):
        calls.append(seconds)
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(progress.FileProgress, "advance", interrupt)
    sf.write(inputs / "long.wav", demo_signal(16000, 5.0), 16000)
    code, _, err = cli(
        capsys, "encode", inputs, "-o", tmp_path / "t.jsonl", "--model", model_dir, "--jobs", 1
    )
    assert code == 130 and "interrupted" in err
    assert not (tmp_path / "t.jsonl").exists() and partials(tmp_path) == []


def test_the_installed_command(tmp_path, inputs, model_dir):
    """The real entry point in a fresh process (no terminal: no bars, the summary on stderr)."""
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "snac_stream",
            "encode",
            str(inputs / "sub"),
            "-o",
            str(tmp_path / "c"),
            "--model",
            str(model_dir),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert run.returncode == 0, run.stderr
    assert "encoded 2 files" in run.stderr and run.stdout == ""
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["mono.snac", "v.snac"]
    assert struct.unpack_from("<4sB", (tmp_path / "c" / "v.snac").read_bytes()) == (b"SNAC", 1)


def test_progress_bars_on_a_terminal(capsys, tmp_path, inputs, model_dir, monkeypatch):
    """With a terminal: bars for files and for seconds of audio (rich), then the summary."""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.setenv("COLUMNS", "100")
    code, _, err = cli(capsys, "encode", inputs, "-o", tmp_path / "c", "--model", model_dir, "--jobs", 1)
    assert code == 0
    assert "files" in err and "audio s" in err and "3/3" in err
    assert err.rstrip().splitlines()[-2].startswith("encoded 3 files")  # then the conversions line

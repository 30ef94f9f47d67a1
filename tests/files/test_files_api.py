"""The file API: codes of files read block by block equal ``model.encode`` of the whole file, decoded
audio equals ``model.decode`` trimmed as ``forward`` trims; batched jobs equal one by one; formats
round-trip; memory does not grow with the file's length."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from streaming_helpers import FIXED_CONFIGS, assert_codes_equal, build_model

from snac_model import random_model
from snac_stream.audio.files import demo_signal, read_audio
from snac_stream.engine.tokens import codes_to_tokens, from_lm_ids
from snac_stream.files import (
    CorruptContainer,
    ModelMismatchError,
    decode_file,
    decode_files,
    encode_file,
    encode_files,
    iter_codes,
    plan_jobs,
    read_codes,
    read_npz,
    read_snac,
    token_records,
    write_npz,
    write_snac,
)
from snac_stream.files.plan import CODE_SUFFIXES, PlanError

ROOT = Path(__file__).resolve().parents[2]
WAV = (".wav", ".flac")


def offline_codes(model, path, channels="mix"):
    """``model.encode`` of the whole file (read whole, as ``read_audio`` returns it)."""
    audio = torch.from_numpy(read_audio(path, model.sample_rate, channels)).to(model.dtype)
    return model.encode(audio.reshape(-1, 1, audio.shape[-1]))


def stereo_file(path: Path, sr: int, seconds: float, seed: int = 0) -> Path:
    x = demo_signal(sr, seconds, seed)
    y = np.roll(demo_signal(sr, seconds, seed + 1), 37) * 0.7
    sf.write(path, np.stack([x, y], axis=1), sr, subtype="PCM_16")
    return path


@pytest.mark.parametrize("name", sorted(FIXED_CONFIGS))
def test_codes_of_a_file_read_in_blocks_equal_offline_float64(tmp_path, name):
    """Resampled (44.1 kHz stereo in), mixed or one stream per channel, small blocks: identical codes."""
    model = build_model(FIXED_CONFIGS[name], torch.float64)
    path = stereo_file(tmp_path / "in.wav", 44100, 1.37)
    for channels in ("mix", "each"):
        want = offline_codes(model, path, channels)
        for block_seconds in (0.013, 0.4):
            parts = list(iter_codes(path, model, channels=channels, block_seconds=block_seconds))
            got = [torch.cat([p[i] for p in parts], dim=-1) for i in range(model.n_codebooks)]
            assert_codes_equal(got, want)
        assert_codes_equal(encode_file(path, model, channels=channels), want)
    assert want[0].shape[0] == 2 and any(not torch.equal(c[0], c[1]) for c in want)  # channels differ


@pytest.mark.parametrize("name", ["odd_attn", "deep"])
def test_decoded_audio_equals_offline_decode_trimmed(tmp_path, name):
    model = build_model(FIXED_CONFIGS[name], torch.float64)
    path = stereo_file(tmp_path / "in.wav", model.sample_rate, 0.91)
    codes = offline_codes(model, path, "each")
    n = sf.info(str(path)).frames
    write_snac(tmp_path / "c.snac", codes, model, channels=2, samples=n, length=n)
    got = decode_file(tmp_path / "c.snac", model, seed=7)
    full = model.decode(codes, seed=7)
    _, want = model.forward(
        torch.from_numpy(read_audio(path, model.sample_rate, "each")).double()[:, None], seed=7
    )
    assert got.shape == (2, n) and full.shape[-1] > n  # trimmed to the original length, as forward trims
    np.testing.assert_allclose(got, full[:, 0, :n].numpy(), atol=1e-6, rtol=0)
    assert_codes_equal(want, codes)
    # the same through the batched runner, written as WAV
    jobs, _ = plan_jobs([tmp_path / "c.snac"], tmp_path / "out.wav", ".wav", CODE_SUFFIXES)
    summary = decode_files(jobs, model, seed=7)
    assert not summary.failed
    back, sr = sf.read(tmp_path / "out.wav", dtype="float32", always_2d=True)
    assert sr == model.sample_rate
    np.testing.assert_array_equal(back.T, got)


def test_published_24khz_architecture_float32(tmp_path):
    """The published 24 kHz architecture (seeded random weights), float32 as the CLI runs it."""
    model = random_model("24khz").fold_weight_norm().eval()
    path = stereo_file(tmp_path / "in.flac", 44100, 1.7)
    want = offline_codes(model, path)
    got = encode_file(path, model)
    flips = sum(int((a != b).sum()) for a, b in zip(got, want, strict=True))
    total = sum(c.numel() for c in want)
    assert [c.shape for c in got] == [c.shape for c in want]
    assert flips <= total // 100, f"{flips} of {total} codes differ from offline (near ties only)"
    n = read_audio(path, 24000).shape[0]
    write_snac(tmp_path / "c.snac", got, model, samples=n)
    audio = decode_file(tmp_path / "c.snac", model, seed=1)
    ref = model.decode(got, seed=1)[0, :, :n].numpy()
    assert audio.shape == (1, n)
    np.testing.assert_allclose(audio, ref, atol=1e-4, rtol=0)


def test_batched_jobs_equal_offline_per_file(tmp_path):
    """Files of different lengths and channel counts, batched 4 at a time on 2 workers: each file's
    codes equal its own offline encode, and batches really formed."""
    model = build_model(FIXED_CONFIGS["plain"], torch.float64)
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    lengths = [0.3, 1.1, 0.7, 2.2, 0.5, 1.1]
    for i, sec in enumerate(lengths):
        sf.write(src / ("sub" if i % 2 else "") / f"c{i}.wav", demo_signal(8000, sec, i), 8000)
    stereo_file(src / "st.wav", 16000, 0.8)
    for batch, workers in ((1, 1), (4, 2)):
        out = tmp_path / f"out{batch}"
        jobs, others = plan_jobs([src], out, ".snac", WAV)
        assert others == [] and len(jobs) == 7
        summary = encode_files(jobs, model, batch=batch, workers=workers, channels="each")
        assert not summary.failed and len(summary.done) == 7
        assert set(summary.batches) == {1} if batch == 1 else max(summary.batches) > 1
        for job in jobs:
            header, codes = read_snac(job.output)
            assert_codes_equal(codes, offline_codes(model, job.source, "each"))
            assert header.samples == read_audio(job.source, 8000).shape[0]
    assert sorted(
        p.relative_to(tmp_path / "out4").as_posix() for p in (tmp_path / "out4").rglob("*.snac")
    ) == [
        "c0.snac",
        "c2.snac",
        "c4.snac",
        "st.snac",
        "sub/c1.snac",
        "sub/c3.snac",
        "sub/c5.snac",
    ]


def test_files_of_equal_length_step_as_one_batch_start_to_end(tmp_path):
    """Jobs start in order of length, and a file's last block gets offline encode's zero padding:
    files of one length (shuffled among others) run every step, first and last, as one batch."""
    model = build_model(FIXED_CONFIGS["plain"], torch.float64)
    (tmp_path / "in").mkdir()
    for i, sec in enumerate([0.9, 0.4, 0.9, 0.4, 0.9, 0.4, 0.9, 0.4]):
        sf.write(tmp_path / "in" / f"c{i}.wav", demo_signal(8000, sec, i), 8000)
    jobs, _ = plan_jobs([tmp_path / "in"], tmp_path / "codes", ".snac", WAV)
    enc = encode_files(jobs, model, batch=4, workers=1)
    assert set(enc.batches) == {4}, enc.batches
    for job in jobs:
        assert_codes_equal(read_snac(job.output)[1], offline_codes(model, job.source))
    jobs, _ = plan_jobs([tmp_path / "codes"], tmp_path / "audio", ".wav", CODE_SUFFIXES)
    dec = decode_files(jobs, model, batch=4, workers=1, seed=2)
    assert set(dec.batches) == {4} and not dec.failed, dec.batches


def test_npz_and_tokens_round_trip(tmp_path):
    model = build_model(FIXED_CONFIGS["odd_attn"], torch.float64)
    path = stereo_file(tmp_path / "a.wav", 16000, 0.6)
    codes = offline_codes(model, path, "each")
    for fmt, suffix in (("snac", ".snac"), ("npz", ".npz"), ("tokens", ".jsonl")):
        jobs, _ = plan_jobs([path], tmp_path / f"a{suffix}", suffix, WAV)
        assert not encode_files(jobs, model, format=fmt, channels="each", lm_offset=1000).failed
    h1, c1 = read_codes(tmp_path / "a.snac")
    h2, c2 = read_codes(tmp_path / "a.npz")
    assert (
        dataclasses.replace(h1, crc32=0) == h2 and h1.streams == 2 and h1.channels == 2 and h1.length == 9600
    )
    assert_codes_equal(c1, codes)
    assert_codes_equal(c2, codes)
    with np.load(tmp_path / "a.npz", allow_pickle=False) as z:
        assert sorted(z.files) == ["codes_0", "codes_1", "codes_2", "header"]
        assert z["codes_1"].dtype == np.int32 and z["codes_1"].shape == tuple(codes[1].shape)
    lines = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert [r["stream"] for r in lines] == [0, 1]
    flat = codes_to_tokens(codes, model.vq_strides)
    for s, r in enumerate(lines):
        assert r["source"] == str(path) and r["lm_offset"] == 1000 and r["samples"] == h1.samples
        assert r["tokens"] == flat[s].tolist()
        ids = torch.tensor([r["lm_ids"]])
        assert from_lm_ids(ids, model.vq_strides, model.codebook_size, offset=1000)[0].tolist() == r["tokens"]
    assert token_records(h1, codes, "x", 5)[1]["lm_ids"][0] == 5 + codes[0][1, 0].item()
    # npz written by hand with the wrong shapes / no header
    write_npz(tmp_path / "b.npz", h1, codes)
    np.savez(tmp_path / "c.npz", codes_0=np.zeros((1, 3)))
    with pytest.raises(CorruptContainer, match="c.npz: no 'header' array"):
        read_npz(tmp_path / "c.npz")
    data = (tmp_path / "b.npz").read_bytes()
    (tmp_path / "d.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptContainer, match="d.npz: not a readable .npz"):
        read_npz(tmp_path / "d.npz")


def test_decode_refuses_another_model(tmp_path):
    a = build_model(FIXED_CONFIGS["plain"], torch.float64, seed=0)
    b = build_model(FIXED_CONFIGS["plain"], torch.float64, seed=1)
    c = build_model({**FIXED_CONFIGS["plain"], "sampling_rate": 16000}, torch.float64)
    codes = [torch.zeros(1, 4 * r, dtype=torch.long) for r in (1, 2, 4, 4)]
    write_snac(tmp_path / "a.snac", codes, a)
    with pytest.raises(ModelMismatchError, match=r"a.snac was encoded with a different model: fingerprint"):
        decode_file(tmp_path / "a.snac", b)
    with pytest.raises(
        ModelMismatchError, match=r"sample_rate 8000 \(file\) != 16000 \(model\); fingerprint"
    ):
        decode_file(tmp_path / "a.snac", c)


def test_plan_jobs(tmp_path):
    (tmp_path / "d" / "x").mkdir(parents=True)
    for name in ("d/a.wav", "d/x/b.flac", "d/x/b.wav", "d/notes.txt", "d/.hidden.wav", "one.wav"):
        (tmp_path / name).write_bytes(b"")
    jobs, others = plan_jobs([tmp_path / "one.wav"], tmp_path / "o.snac", ".snac", WAV)
    assert [j.output for j in jobs] == [tmp_path / "o.snac"] and others == []
    jobs, _ = plan_jobs([tmp_path / "one.wav"], str(tmp_path / "outdir") + "/", ".snac", WAV)
    assert jobs[0].output == tmp_path / "outdir" / "one.snac"
    jobs, others = plan_jobs([tmp_path / "d"], tmp_path / "o", ".snac", WAV)
    assert [j.name for j in jobs] == ["a.wav", "x/b.flac"]
    assert [j.output.relative_to(tmp_path).as_posix() for j in jobs] == ["o/a.snac", "o/x/b.snac"]
    assert len(others) == 1 and "x/b.wav and" in others[0].error and "would both write" in others[0].error
    jobs, others = plan_jobs(
        [tmp_path / "d", tmp_path / "one.wav", tmp_path / "nope"], tmp_path / "o", ".npz", WAV
    )
    assert {j.output.relative_to(tmp_path).as_posix() for j in jobs} == {
        "o/d/a.npz",
        "o/d/x/b.npz",
        "o/one.npz",
    }
    assert any(r.error == f"{tmp_path / 'nope'}: no such file or directory" for r in others)
    (tmp_path / "o" / "one.npz").parent.mkdir(parents=True)
    (tmp_path / "o" / "one.npz").write_bytes(b"x")
    jobs, others = plan_jobs([tmp_path / "one.wav"], tmp_path / "o", ".npz", WAV, skip_existing=True)
    assert jobs == [] and others[0].skipped
    with pytest.raises(PlanError, match="is a file: several inputs"):
        plan_jobs([tmp_path / "d"], tmp_path / "one.wav", ".snac", WAV)
    (tmp_path / "empty").mkdir()
    _, others = plan_jobs([tmp_path / "empty"], tmp_path / "o", ".snac", WAV)
    assert "no files ending in .wav, .flac" in others[0].error


MEMORY_PROBE = r"""
import resource, sys, torch
torch.set_num_threads(1)
from pathlib import Path
from streaming_helpers import FIXED_CONFIGS, build_model
from snac_stream.audio.files import WavWriter
from snac_stream.files import decode_files, encode_files, plan_jobs
seconds, d = float(sys.argv[1]), Path(sys.argv[2])
model = build_model(FIXED_CONFIGS["plain"], torch.float32)
rng = torch.Generator().manual_seed(0)
with WavWriter(d / "in.wav", 8000, subtype="PCM_16") as w:
    for _ in range(int(seconds)):
        x = 0.3 * torch.sin(torch.arange(8000) * 0.05) + 0.05 * torch.randn(8000, generator=rng)
        w.write(x.numpy())
jobs, _ = plan_jobs([d / "in.wav"], d / "c.snac", ".snac", (".wav",))
assert not encode_files(jobs, model).failed
encoded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
jobs, _ = plan_jobs([d / "c.snac"], d / "out.wav", ".wav", (".snac",))
assert not decode_files(jobs, model).failed
print(encoded, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_length(tmp_path):
    """Peak RSS (fresh processes) of encoding + decoding 5 s and 60 s of audio: the same within a
    few MB. The offline model on the whole file adds ~70 MB (encode) and ~130 MB (decode) at 60 s."""
    peaks = []
    for seconds in (5, 60):
        d = tmp_path / str(seconds)
        d.mkdir()
        out = subprocess.run(
            [sys.executable, "-c", MEMORY_PROBE, str(seconds), str(d)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}"},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0, out.stderr
        peaks.append([int(v) for v in out.stdout.split()])
        assert sf.info(str(d / "out.wav")).frames == seconds * 8000
    (enc_short, dec_short), (enc_long, dec_long) = peaks
    assert enc_long - enc_short < 10_000, peaks  # KiB
    assert dec_long - dec_short < 10_000, peaks

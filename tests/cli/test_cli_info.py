"""``snac-stream info``: in-process (JSON) and as a real subprocess (table)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_ours, small_config

from snac_model import random_model
from snac_stream.cli.main import main

ROOT = Path(__file__).resolve().parents[2]


def test_info_json_random_24khz(capsys):
    assert main(["info", "random:24khz", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["model"] == "random:24khz"
    assert info["sample_rate"] == 24000
    assert info["hop_length"] == 512
    assert info["vq_strides"] == [4, 2, 1]
    assert info["n_codebooks"] == 3
    assert info["frame_rates_hz"] == pytest.approx([11.71875, 23.4375, 46.875])
    assert info["codes_per_coarse_frame"] == 7
    assert info["coarse_frame_samples"] == 2048
    assert info["coarse_frame_ms"] == pytest.approx(2048 / 24)
    assert info["bitrate_bps"] == pytest.approx(984.375)
    from snac_stream import kernels

    chosen = kernels.select("cpu")
    assert info["kernels"]["kernels"] == chosen.name and info["kernels"]["reason"] == chosen.reason
    assert info["native_kernels"] == chosen.describe().get("native_library")
    assert info["huge_pages"] is (os.environ.get("THP_MEM_ALLOC_ENABLE") == "1")
    assert round(info["bitrate_kbps"], 3) == 0.984
    assert info["attn_window_size"] is None
    assert 19.5e6 < info["parameters"] < 20.1e6
    assert info["fingerprint"] == random_model("24khz").fingerprint().hex()
    assert len(info["fingerprint"]) == 16


def test_info_local_checkpoint(tmp_path, capsys):
    model = make_ours(small_config("deep"), seed=4)
    model.save_pretrained(str(tmp_path))
    assert main(["info", str(tmp_path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["sample_rate"] == 12000 and info["hop_length"] == 12
    assert info["vq_strides"] == [4, 4, 2, 1, 1]
    assert info["codes_per_coarse_frame"] == 1 + 1 + 2 + 4 + 4
    assert info["attn_window_size"] == 2
    assert info["codebook_size"] == 128 and info["bits_per_code"] == 7
    assert info["bitrate_bps"] == pytest.approx(sum(1000 / s for s in (4, 4, 2, 1, 1)) * 7)
    assert info["parameters"] == sum(p.numel() for p in model.parameters())
    assert info["fingerprint"] == model.fingerprint().hex()


def test_info_default_model_offline_falls_back_loudly(no_network, capsys):
    assert main(["info", "--json"]) == 0
    captured = capsys.readouterr()
    assert "WARNING" in captured.err and "RANDOM" in captured.err
    info = json.loads(captured.out)
    assert info["model"] == "hubertsiuzdak/snac_24khz"
    assert info["sample_rate"] == 24000
    assert info["fingerprint"] == random_model("24khz").fingerprint().hex()


def test_info_bad_model_is_an_error_not_a_traceback(tmp_path, capsys):
    assert main(["info", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "error" in err and "Traceback" not in err
    assert main(["info", "random:8khz"]) == 2
    assert "unknown architecture" in capsys.readouterr().err


def test_info_subprocess_random_32khz():
    exe = shutil.which("snac-stream")
    cmd = [exe] if exe else [sys.executable, "-m", "snac_stream"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [*cmd, "info", "random:32khz"], capture_output=True, text=True, timeout=120, cwd=ROOT, env=env
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    lines = dict(re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in out.splitlines())
    assert "32000 Hz" in lines["sample rate"]
    assert lines["hop"].strip().startswith("384 samples")
    assert "10.4167 / 20.8333 / 41.6667 / 83.3333 Hz" in lines["frame rates"]
    assert lines["codes per coarse frame"].strip() == "15"
    assert "3072 samples = 96.00 ms" in lines["coarse frame"]
    assert "1875.0 bps (1.875 kbps)" in lines["bitrate"]
    assert "32 latent frames" in lines["attention window"]
    assert "54.5 M" in lines["parameters"]
    assert re.fullmatch(r"[0-9a-f]{16}", lines["fingerprint"].strip())
    assert proc.stderr.strip() == ""

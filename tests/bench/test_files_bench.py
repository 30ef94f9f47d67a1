"""``python -m benchmarks.files --quick`` runs every section end to end and writes the JSON it
promises. Shapes and internal consistency only, never whether a timing meets a number."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_files_benchmark_quick(tmp_path):
    out = tmp_path / "files.json"
    args = ["--quick", "--minutes", "0.1", "--ref-seconds", "1,2", "--clips", "4", "--json", str(out)]
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.files", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert json.loads(run.stdout) == result
    assert result["machine"]["cpu"] and result["machine"]["cpu_capability"]
    long = result["long_file"]
    assert long["audio_seconds"] == 6.0 and long["decoded_length_matches"] is True
    for part in ("encode", "decode"):
        r = long[part]
        assert r["peak_rss_mib"] > 50 and isinstance(r["under_1_gib"], bool)
        assert r["rtf"] == pytest.approx(r["wall_s"] / 6.0) and r["process_wall_s"] >= r["wall_s"] > 0
    assert long["snac_bytes"] > (6.0 * 984.375 / 8)  # the packed codes plus a header
    ref = result["reference_offline_encode"]
    assert [r["seconds"] for r in ref["runs"]] == [1.0, 2.0] and ref["failed"] == []
    assert ref["runs"][1]["peak_rss_kib"] > ref["runs"][1]["before_encode_rss_kib"]
    assert ref["one_hour_needs_mib"] > ref["longest_measured_peak_mib"]
    clips = result["clips"]
    assert clips["clips"] == 4
    for part in ("encode", "decode"):
        modes = clips[part]
        assert set(modes) == {"one_by_one", "batched", "gain_batched", "cpu_gain_batched"}
        assert modes["one_by_one"]["forwards_by_batch_size"].keys() == {"1"}
        assert max(map(int, modes["batched"]["forwards_by_batch_size"])) > 1  # it really batched
        assert modes["gain_batched"] == pytest.approx(
            modes["one_by_one"]["wall_s"] / modes["batched"]["wall_s"]
        )

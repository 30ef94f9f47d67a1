"""``snac-stream bench serving --quick`` runs end to end: every decoder at every N, and the
properties that do not depend on timing (first audio in tokens, samples lost, exactness).
No timing is asserted."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_serving_quick(tmp_path):
    out = tmp_path / "serving.json"
    threads = os.environ.get("SNAC_TEST_THREADS", "1")
    cmd = [sys.executable, "-m", "snac_stream", "bench", "serving", "--quick", "--threads", threads]
    cmd += ["--json", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(out.read_text())

    g = r["granularity"]
    assert g["first_audio_tokens"] == {"tick_hop": 18, "frame_hop": 21, "orpheus_window": 28}
    assert g["per_token_equals_per_frame_max_abs"] == 0.0  # the same steps, whatever the push size
    for key in ("per_token_over_per_frame", "per_token_tick_hop_over_per_frame", "dropin_over_per_frame"):
        for part in ("ratios", "cpu_ratios"):
            assert math.isfinite(g[part][key]) and g[part][key] > 0
    assert g["dropin_samples"] == round(g["audio_s"] * 24000)

    runs = {(s["method"], s["streams"]): s for s in r["serving"]}
    assert set(runs) == {(m, n) for m in ("ours", "orpheus", "batched_windows") for n in (1, 2)}
    for (method, _), s in runs.items():
        for part in ("first_audio", "frame_buffered"):
            assert set(s[part]["ttfa_ms"]) >= {"p50", "p95", "p99"}
        assert s["audio_s"] > 0 and s["compute_per_audio_s"] > 0 and s["compute_cpu_per_audio_s"] > 0
        ex = s["exactness"]
        if method == "ours":  # every sample, int16 of the exact decode (float32: within 1 LSB)
            assert ex["samples_lost"] == 0 and ex["checked_requests"] == s["completed"] >= 1
            assert ex["max_lsb"] <= 1
        else:  # the first coarse frame and the last two of every request never come out
            assert ex["samples_lost"] == 3 * 2048 * ex["requests"]
    w = r["window_exactness"]
    assert (w["missing_start_samples"], w["missing_end_samples"]) == (2048, 4096) and w["max_abs"] > 0
    assert (
        r["machine"]["cpu"] in proc.stdout
        and "Granularity" in proc.stdout
        and "batched_windows" in proc.stdout
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_serving_cuda_without_cuda_is_a_clear_error():
    cmd = [sys.executable, "-m", "benchmarks.serving", "--quick", "--device", "cuda"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "CUDA is not available" in proc.stderr

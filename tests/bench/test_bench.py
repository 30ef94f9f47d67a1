"""``snac-stream bench --quick`` runs end to end and writes the JSON and PNG it promises.

Only shapes and types are checked, never whether a timing meets a number. The benchmark
runs in a subprocess (its own torch threads, allocator and event loop), with one torch
thread unless SNAC_TEST_THREADS says otherwise: on a crowded 2-core machine, 2 threads
make small streaming steps many times slower.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

NUMERIC_KEYS = [
    "latency.encoder_algorithmic_ms",
    "latency.decoder_algorithmic_ms",
    "latency.encoder_probe_ms",
    "latency.decoder_probe_ms",
    "latency.e2e_ms_p50",
    "latency.e2e_ms_p95",
    "latency.e2e_streams_ms_p50",
    "cost.offline_encode_rtf",
    "cost.stream_encode_rtf",
    "cost.offline_decode_rtf",
    "cost.stream_decode_rtf",
    "cost.sliding_window_decode_rtf",
    "cost.naive_chunks_decode_rtf",
    "cost.ratios.stream_over_offline_encode",
    "cost.ratios.stream_over_offline_decode",
    "cost.ratios.sliding_window_over_stream_decode",
    "exactness.stream_decode_max_abs",
    "exactness.sliding_window_max_abs",
    "exactness.naive_chunks_max_abs",
    "exactness.stream_decode_seeded_max_abs",
    "per_hop_ms.p50",
    "per_hop_ms.p95",
    "per_hop_ms.p99",
    "per_hop_ms.encode.p50",
    "per_hop_ms.decode.p99",
    "wire.nominal_bps",
    "wire.measured_bps",
    "machine.threads",
    "model.sample_rate",
]


def get(d: dict, dotted: str):
    for part in dotted.split("."):
        assert isinstance(d, dict) and part in d, f"missing key {dotted!r} (at {part!r})"
        d = d[part]
    return d


@pytest.mark.slow
def test_bench_quick_writes_json_table_and_plot(tmp_path):
    out_json, out_png = tmp_path / "bench.json", tmp_path / "bench.png"
    threads = os.environ.get("SNAC_TEST_THREADS", "1")
    cmd = [sys.executable, "-m", "snac_stream", "bench", "--quick", "--threads", threads]
    cmd += ["--streams", "2", "--tune-malloc", "--json", str(out_json), "--plot", str(out_png)]
    env = {**os.environ, "COLUMNS": "150", "MPLBACKEND": "Agg"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    result = json.loads(out_json.read_text())
    for key in NUMERIC_KEYS:
        value = get(result, key)
        assert isinstance(value, int | float) and not isinstance(value, bool), (key, value)
        assert math.isfinite(value) and value >= 0, (key, value)
    assert get(result, "latency.e2e_ms_p95") >= get(result, "latency.e2e_ms_p50")
    assert get(result, "per_hop_ms.p99") >= get(result, "per_hop_ms.p50")
    assert get(result, "exactness.stream_encode_code_mismatches") >= 0
    assert get(result, "latency.e2e_streams") == 2
    assert result["quick"] is True

    machine = result["machine"]
    for key in ("cpu", "torch", "device", "allocator", "threads"):
        assert key in machine, key
    assert machine["device"] == "cpu" and machine["threads"] == int(threads)
    assert isinstance(machine["allocator"]["summary"], str) and machine["allocator"]["summary"]
    assert machine["allocator"]["mallopt_applied"] is (platform.libc_ver()[0] == "glibc")
    model = result["model"]
    assert model["spec"] == "random:24khz" and model["random_weights"] is True
    assert model["config"]["sampling_rate"] == model["sample_rate"] == 24000

    methods = {(m["op"], m["name"], m["hop"]) for m in result["cost"]["methods"]}
    for wanted in [
        ("encode", "offline", "whole"),
        ("encode", "ours", "tick"),
        ("encode", "ours", "frame"),
        ("encode", "ours", "4 frames"),
        ("decode", "offline", "whole"),
        ("decode", "ours", "frame"),
        ("decode", "sliding window", "window"),
        ("decode", "naive chunks", "frame"),
    ]:
        assert wanted in methods, wanted
    for component in ("algorithmic", "encode", "transport", "queue", "decode"):
        assert component in result["e2e"]["single"]["components_ms"]

    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Cost and exactness" in proc.stdout and "Latency" in proc.stdout
    assert "bench" in proc.stderr  # the progress bar goes to stderr

"""``snac-stream bench browser_latency --quick`` measures the browser path in a real Chromium and
writes the JSON it promises (shapes and types only; no timing is asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.browser_latency import CHROMIUM

ROOT = Path(__file__).resolve().parents[2]

try:
    import playwright  # noqa: F401

    HAVE_PLAYWRIGHT = True
except ImportError:  # pragma: no cover - CI installs it
    HAVE_PLAYWRIGHT = False


@pytest.mark.skipif(not HAVE_PLAYWRIGHT, reason="playwright is not installed (pip install playwright)")
@pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason="chromium is not installed (apt-get install chromium)"
)
@pytest.mark.timeout(300)
def test_browser_latency_quick_reports_every_part(tmp_path: Path) -> None:
    out = tmp_path / "browser.json"
    proc = subprocess.run(
        [sys.executable, "-m", "snac_stream", "bench", "browser_latency", "--quick", "--json", str(out)],
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr
    assert "pre-buffer" in proc.stdout and "page heard" in proc.stdout
    result = json.loads(out.read_text())
    assert result["machine"]["cpu"] and result["model"]["sample_rate"] == 16000
    (run,) = result["runs"]
    assert run["prebuffer_ms"] == 100
    for key in ("cli_e2e_ms", "page_arrival_e2e_ms", "page_heard_e2e_ms", "page_buffer_and_output_ms"):
        assert run[key]["n"] > 0 and run[key]["p50"] > 0, key
    # the page hears a sample after it arrived, and it arrived after it was encoded
    assert run["page_heard_e2e_ms"]["p50"] > run["page_arrival_e2e_ms"]["p50"] > 0
    assert run["page"]["frames_lost"] == 0 and run["page"]["samples_received"] > 0
    assert abs(run["page_clock_offset_ms"]) < 1000  # one machine, one wall clock

"""Huge pages for the weights: the ``snac-stream`` commands switch torch's huge-page
allocation on before torch loads, and with it a streaming engine's weights really end up in
transparent huge pages (checked in /proc, in a fresh process)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from snac_stream import cli

THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")

PROBE = """
import re
from snac_model import random_model
from snac_stream import StreamingDecoder, kernels

kernels.tune_allocator()
decoder = StreamingDecoder(random_model("24khz"))
smaps = open("/proc/self/smaps_rollup").read()
print(int(re.search(r"AnonHugePages:\\s+(\\d+) kB", smaps).group(1)))
"""


def test_cli_switches_huge_pages_on_unless_told_otherwise(monkeypatch, capsys):
    monkeypatch.delenv(cli.HUGE_PAGES_ENV, raising=False)
    assert cli.main(["info", "random:24khz"]) == 0
    assert os.environ[cli.HUGE_PAGES_ENV] == "1"
    monkeypatch.setenv(cli.HUGE_PAGES_ENV, "0")  # a user's own choice stands
    assert cli.main(["info", "random:24khz"]) == 0
    assert os.environ[cli.HUGE_PAGES_ENV] == "0"
    capsys.readouterr()


@pytest.mark.skipif(
    not THP_SETTING.exists() or "[never]" in THP_SETTING.read_text(),
    reason="transparent huge pages are off on this kernel",
)
def test_weights_land_in_huge_pages_when_switched_on():
    env = {**os.environ, cli.HUGE_PAGES_ENV: "1"}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    huge_kib = int(out.stdout.split()[-1])
    assert huge_kib >= 32 * 1024, huge_kib  # the 24 kHz decoder alone holds ~52 MB of weights

"""Huge pages for the weights: the ``snac-stream`` command switches torch's huge-page
allocation on (unless the user chose otherwise), and with it the weights really end up in
transparent huge pages (checked in /proc, in fresh processes)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from snac_stream import cli

THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")
THP_ON = THP_SETTING.exists() and "[never]" not in THP_SETTING.read_text()

PROBE = r"""
import os, re, sys
from snac_stream import cli

if sys.argv[1] == "cli":  # as the snac-stream command runs (it sets the switch itself)
    cli.main(["info", "random:24khz"])
else:  # a library user who set the switch
    from snac_model import random_model
    from snac_stream import StreamingDecoder, kernels

    kernels.tune_allocator()
    decoder = StreamingDecoder(random_model("24khz"))
smaps = open("/proc/self/smaps_rollup").read()
print(os.environ.get(cli.HUGE_PAGES_ENV), re.search(r"AnonHugePages:\s+(\d+) kB", smaps).group(1))
"""


def probe(how: str, switch: str | None) -> tuple[str, int]:
    """(the switch as the process ended, KiB in huge pages) of a fresh process."""
    env = {k: v for k, v in os.environ.items() if k != cli.HUGE_PAGES_ENV}
    if switch is not None:
        env[cli.HUGE_PAGES_ENV] = switch
    out = subprocess.run(
        [sys.executable, "-c", PROBE, how], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    value, huge_kib = out.stdout.split()[-2:]
    return value, int(huge_kib)


def test_cli_keeps_a_users_own_choice(monkeypatch, capsys):
    monkeypatch.setenv(cli.HUGE_PAGES_ENV, "0")
    assert cli.main(["info", "random:24khz"]) == 0
    assert os.environ[cli.HUGE_PAGES_ENV] == "0"
    capsys.readouterr()


@pytest.mark.skipif(not THP_ON, reason="transparent huge pages are off on this kernel")
def test_the_cli_puts_the_weights_in_huge_pages():
    switch, huge_kib = probe("cli", None)
    assert switch == "1" and huge_kib >= 32 * 1024, (switch, huge_kib)  # the 24 kHz model: ~80 MB


@pytest.mark.skipif(not THP_ON, reason="transparent huge pages are off on this kernel")
def test_a_library_user_gets_them_with_the_switch():
    switch, huge_kib = probe("library", "1")
    assert switch == "1" and huge_kib >= 32 * 1024, huge_kib  # the 24 kHz decoder holds ~52 MB

"""Process-wide settings only where an application starts: ``snac-stream`` commands (and a
library user who calls :func:`snac_stream.runtime.configure`) put the weights in transparent
huge pages, checked in /proc in fresh processes; the environment is left as it was, so child
processes inherit nothing; a library user who calls nothing gets none of it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from snac_stream.cli.main import main
from snac_stream.runtime import HUGE_PAGES_ENV

THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")
THP_ON = THP_SETTING.exists() and "[never]" not in THP_SETTING.read_text()

PROBE = r"""
import os, re, sys
env_before = dict(os.environ)
if sys.argv[1] == "cli":  # as the snac-stream command runs
    from snac_stream.cli.main import main
    main(["info", "random:24khz"])
else:
    if sys.argv[1] == "configure":  # a library user who asks for it, before torch loads
        import snac_stream.runtime
        snac_stream.runtime.configure()
    from snac_model import random_model
    from snac_stream import StreamingDecoder
    decoder = StreamingDecoder(random_model("24khz"))
smaps = open("/proc/self/smaps_rollup").read()
print(dict(os.environ) == env_before, re.search(r"AnonHugePages:\s+(\d+) kB", smaps).group(1))
"""


def probe(how: str, switch: str | None = None) -> tuple[bool, int]:
    """(environment unchanged, KiB in huge pages) of a fresh process."""
    env = {k: v for k, v in os.environ.items() if k != HUGE_PAGES_ENV}
    if switch is not None:
        env[HUGE_PAGES_ENV] = switch
    out = subprocess.run(
        [sys.executable, "-c", PROBE, how], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    same, huge_kib = out.stdout.split()[-2:]
    return same == "True", int(huge_kib)


def test_cli_keeps_a_users_own_choice(monkeypatch, capsys):
    monkeypatch.setenv(HUGE_PAGES_ENV, "0")
    assert main(["info", "random:24khz"]) == 0
    assert os.environ[HUGE_PAGES_ENV] == "0"
    capsys.readouterr()


@pytest.mark.skipif(not THP_ON, reason="transparent huge pages are off on this kernel")
def test_the_cli_puts_the_weights_in_huge_pages_without_touching_the_environment():
    same, huge_kib = probe("cli")
    assert same and huge_kib >= 32 * 1024, (same, huge_kib)  # the 24 kHz model: ~80 MB


@pytest.mark.skipif(not THP_ON, reason="transparent huge pages are off on this kernel")
def test_a_library_user_gets_them_by_calling_configure():
    same, huge_kib = probe("configure")
    assert same and huge_kib >= 32 * 1024, huge_kib  # the 24 kHz decoder holds ~52 MB


@pytest.mark.skipif(not THP_ON, reason="transparent huge pages are off on this kernel")
def test_a_library_user_who_asks_for_nothing_gets_nothing():
    same, huge_kib = probe("library")
    assert same and huge_kib < 8 * 1024, huge_kib
    same, huge_kib = probe("library", "1")  # or sets torch's own switch: then it is torch's doing
    assert same and huge_kib >= 32 * 1024, huge_kib

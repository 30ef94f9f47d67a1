"""``benchmarks.compare_old``: old engine against new, each in its own process.

CI has no git history to check the old engine out from, so the run here compares this checkout
with itself (``--old`` = this tree): the same code in two fresh processes must import the tree it
was pointed at, load the same weights, use the same kernels and give bit-identical streams, both
equal to the offline model. Only shapes and consistency of the timings are checked, never a speed.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.compare_old import engine_lines, main

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_quick_run_against_this_tree_itself(tmp_path):
    out = tmp_path / "compare.json"
    cmd = [sys.executable, "-m", "snac_stream", "bench", "compare_old", "--old", str(ROOT), "--quick"]
    proc = subprocess.run(
        [*cmd, "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["quick"] is True and r["rounds"] == 2
    for side in ("old", "new"):
        c = r["checkouts"][side]
        assert Path(c["snac_stream_file"]).resolve().is_relative_to(ROOT)
        assert {"kernels", "gemm", "snake"} <= set(c["kernels"])
        assert r["settings"]["threads"][side] == 1
        assert len(r["settings"]["anon_huge_pages_kib"][side]) == 2
    assert r["checkouts"]["old"]["kernels"] == r["checkouts"]["new"]["kernels"]
    assert r["same_weights"] is True and r["exact"] is True
    assert r["settings"]["env"]["THP_MEM_ALLOC_ENABLE"] == "1"
    assert set(r["configs"]) == {"decode_frame", "decode_tick", "encode_frame"}
    for name, row in r["configs"].items():
        assert row["hop_samples"] == (512 if name == "decode_tick" else 2048)
        for side in ("old", "new"):
            s = row[side]
            assert s["hops"] > 0 and len(s["round_p50_ms"]) == 2 and s["exact"] is True
            assert 0 < s["p50_ms"] <= s["p99_ms"] and math.isfinite(s["p99_ms"])
            assert s["best_round_p50_ms"] == min(s["round_p50_ms"]) > 0
        assert row["ratio_p50"] == pytest.approx(row["new"]["p50_ms"] / row["old"]["p50_ms"])
        assert row["ratio_p99"] == pytest.approx(row["new"]["p99_ms"] / row["old"]["p99_ms"])
        old, new = row["old"]["round_p50_ms"], row["new"]["round_p50_ms"]
        paired = sorted(n / o for o, n in zip(old, new, strict=True))
        assert row["ratio_p50_paired"] == pytest.approx((paired[0] + paired[1]) / 2)  # median of two
        cross = row["old_vs_new"]
        if row["part"] == "decode":  # one code, two processes: the same samples
            assert cross["same_shape"] and cross["max_abs"] == 0.0
            assert row["old"]["max_abs_vs_offline"] == row["new"]["max_abs_vs_offline"] <= 1e-4
        else:
            assert cross["same_shape"] and cross["code_mismatches"] == 0
    lines = r["engine_lines"]
    assert lines["old"] == lines["new"] and lines["ratio_new_over_old"] == 1.0
    assert lines["new"]["layout"].startswith("restructured") and lines["new"]["total"] > 0
    assert "| decode, 1 tick (512 samples)" in proc.stdout and "engine lines" in proc.stdout


def test_a_folder_that_is_no_checkout_is_refused_with_what_to_do(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--old", str(tmp_path), "--quick"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"--old {tmp_path}: not a snac-stream checkout" in err and "worktree add" in err


def write(path: Path, lines: int, blank: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("x = 1\n" * lines + "\n  \n" * blank)


def test_engine_lines_count_non_blank_py_and_c_in_either_layout(tmp_path):
    old, new = tmp_path / "old" / "snac_stream", tmp_path / "new" / "snac_stream"
    names = "streaming conv attention noise fastops build quantizer kernels encoder decoder "
    names += "token_decoder tokens latency multistream batcher"
    for i, name in enumerate(names.split()):
        write(old / f"{name}.py", i + 1, blank=2)
    write(old / "native" / "__init__.py", 10)
    write(old / "native" / "snake.c", 7, blank=3)
    write(old / "server.py", 100)  # not the engine
    write(old / "native" / "notes.txt", 50)  # neither .py nor .c
    for sub in ("ops", "kernels", "engine"):
        write(new / sub / "a.py", 4, blank=1)
    write(new / "kernels" / "native" / "snake.c", 9)
    write(new / "net" / "server.py", 100)
    got_old, got_new = engine_lines(old.parent), engine_lines(new.parent)
    assert got_old["layout"].startswith("pre-restructure") and got_new["layout"].startswith("restructured")
    assert (got_old["py"], got_old["c"], got_old["total"]) == (120 + 10, 7, 137)
    assert (got_new["py"], got_new["c"], got_new["total"]) == (12, 9, 21)
    assert len(got_old["files"]) == 17 and "snac_stream/server.py" not in got_old["files"]
    assert engine_lines(tmp_path / "nothing")["layout"] == "unknown"

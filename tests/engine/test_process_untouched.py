"""A library user's process is left as it was: importing snac_stream, building engines and
pushing audio and codes from two threads at once changes neither torch's thread count nor
the environment (in a fresh interpreter, away from the test suite's own settings)."""

from __future__ import annotations

import subprocess
import sys

PROBE = r"""
import os, threading
import torch
torch.set_num_threads(2)
env_before, threads_before = dict(os.environ), torch.get_num_threads()
import snac_stream
from snac_model import random_model
from snac_stream import MultiStreamDecoder, StreamingDecoder, StreamingEncoder, TokenDecoder

model = random_model("24khz")
seen, errors = [], []

def work(seed):
    try:
        enc, dec = StreamingEncoder(model), StreamingDecoder(model, seed=seed)
        multi = MultiStreamDecoder(model)
        multi.open("a", seed=seed)
        for k in range(3):
            codes = enc.push(torch.randn(1, 1, 2048) * 0.1)
            dec.push(codes)
            multi.step({"a": [c[0] for c in codes]})
            seen.append(torch.get_num_threads())
        enc.flush(), dec.flush(), multi.flush("a")
        TokenDecoder(model, seed=0).push([1, 2, 3, 4, 5, 6, 7])
    except Exception as e:
        errors.append(repr(e))

workers = [threading.Thread(target=work, args=(i,)) for i in range(2)]
for w in workers: w.start()
for w in workers: w.join()
same_threads = torch.get_num_threads() == threads_before
print(errors == [], dict(os.environ) == env_before, same_threads, sorted(set(seen)))
"""


def test_engines_leave_threads_and_environment_alone():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    ok, env_same, threads_same, seen = out.stdout.strip().split(" ", 3)
    assert ok == "True", out.stderr[-3000:]
    assert env_same == "True" and threads_same == "True", out.stdout
    assert seen == "[2]", f"the worker threads saw torch thread counts {seen}, not the process setting 2"

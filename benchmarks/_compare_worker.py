"""One side of ``benchmarks.compare_old``: per-hop times of one snac-stream checkout, in its own process.

``python benchmarks/_compare_worker.py --seconds S --out DIR`` (run by path, with ``PYTHONPATH``
at the checkout under test, by :mod:`benchmarks.compare_old`): streams a seeded signal through the
24 kHz architecture (``random_model("24khz")``, float32) of whatever ``snac_stream`` is importable,
at the hops of :data:`CONFIGS`, timing every ``push``. It uses only the engine API that the old and
the new engine share (``StreamingDecoder(model, seed=0)``, ``StreamingEncoder(model)``, ``push``,
``flush``) and imports nothing of the checkout's ``benchmarks/``; its shared helpers come from this
file's own ``bench_common.py``, loaded by path. Writes ``DIR/result.json`` (times in ms, which files
were imported, the kernels, exactness against the offline model) and each stream's output as
``.npy`` files (``DIR/decode_frame.npy``, ...) for the parent to compare across checkouts.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

# (name, part, hop in ticks); encode hops are whole coarse frames only (a tick of audio is no hop)
CONFIGS = (("decode_frame", "decode", 4), ("decode_tick", "decode", 1), ("encode_frame", "encode", 4))
STEADY_TICKS = 32  # hops whose input starts before this tick are not timed (the chain still fills)
WARMUP_S = 1.0  # a throw-away stream per configuration first (library loads, first-call costs)


def _bench_common():
    path = Path(__file__).with_name("bench_common.py")
    spec = importlib.util.spec_from_file_location("_compare_bench_common", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


common = _bench_common()


def kernels_used(engine) -> dict:
    """The kernel set ``engine`` runs: ``describe()`` of the new engine's set; for the old engine
    (no kernel sets), the same keys from its module-level fast path."""
    chosen = getattr(engine, "kernels", None)
    if chosen is not None and hasattr(chosen, "describe"):
        return chosen.describe()
    from snac_stream import kernels, native  # the pre-restructure layout

    lib = native.load()
    return {
        "kernels": "fast (pre-restructure, fast=True)",
        "gemm": "onednn-packed" if kernels._onednn_linear() else "torch",
        "snake": "native-c" if lib is not None else "numpy-sin",
        "native_library": None if lib is None else str(lib.path),
    }


def hops(model, part: str, ticks: int, audio: torch.Tensor, codes: list[torch.Tensor]) -> list:
    """The inputs of one stream: audio chunks of ``ticks`` latent frames, or the codes of ``ticks`` ticks."""
    if part == "encode":
        size = ticks * model.hop_length
        return [audio[..., i : i + size] for i in range(0, audio.shape[-1], size)]
    n_ticks = codes[-1].shape[-1] * model.vq_strides[-1]
    return [common.slice_ticks(codes, model.vq_strides, t, t + ticks) for t in range(0, n_ticks, ticks)]


def stream(model, part: str, inputs: list) -> tuple[list[float], object]:
    """Push every input (each timed, ms) and flush; the times and the joined output."""
    from snac_stream import StreamingDecoder, StreamingEncoder

    engine = StreamingDecoder(model, seed=0) if part == "decode" else StreamingEncoder(model)
    times, parts = [], []
    for x in inputs:
        start = time.perf_counter()
        parts.append(engine.push(x))
        times.append(1000 * (time.perf_counter() - start))
    parts.append(engine.flush())
    if part == "decode":
        return times, torch.cat(parts, dim=-1)
    return times, [torch.cat(level, dim=-1) for level in zip(*parts, strict=True)]


def huge_pages_kib() -> int | None:
    """``AnonHugePages`` of this process (kB), the evidence that torch put buffers in huge pages."""
    try:
        for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
            if line.startswith("AnonHugePages:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def run(seconds: float, out: Path) -> dict:
    import snac_model
    import snac_stream
    from snac_stream import StreamingDecoder

    torch.set_num_threads(1)
    model = snac_model.random_model("24khz")
    sr, frame = model.sample_rate, model.frame_size
    n = max(1, round(seconds * sr / frame)) * frame

    def signal(s: float, seed: int) -> torch.Tensor:
        return torch.from_numpy(common.make_signal(sr, s, seed=seed)).view(1, 1, -1)

    audio = signal(n / sr, 0)
    with torch.inference_mode():
        codes = model.encode(audio)
        reference = model.decode(codes, seed=0)
        warm_audio = signal(WARMUP_S, 1)
        warm_codes = model.encode(warm_audio)
    result: dict = {
        "snac_stream_file": snac_stream.__file__,
        "snac_model_file": snac_model.__file__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "env": {k: v for k, v in os.environ.items() if k.startswith(("MALLOC_", "THP_", "OMP_", "MKL_"))},
        "fingerprint": model.fingerprint().hex(),
        "sample_rate": sr,
        "audio_samples": n,
        "kernels": kernels_used(StreamingDecoder(model, seed=0)),
        "configs": {},
    }
    for name, part, ticks in CONFIGS:
        stream(model, part, hops(model, part, ticks, warm_audio, warm_codes))
        times, got = stream(model, part, hops(model, part, ticks, audio, codes))
        entry = {"part": part, "hop_ticks": ticks, "hop_samples": ticks * model.hop_length}
        entry["ms"] = times[math.ceil(STEADY_TICKS / ticks) :]
        if part == "decode":
            entry["max_abs_vs_offline"] = common.max_abs(got, reference)
            entry["length"], entry["offline_length"] = got.shape[-1], reference.shape[-1]
            np.save(out / f"{name}.npy", got.numpy())
        else:
            entry["code_mismatches"] = sum(int((a != b).sum()) for a, b in zip(got, codes, strict=True))
            entry["codes"] = sum(c.numel() for c in codes)
            entry["shapes_equal"] = all(a.shape == b.shape for a, b in zip(got, codes, strict=True))
            for level, c in enumerate(got):
                np.save(out / f"{name}_{level}.npy", c.numpy())
        result["configs"][name] = entry
    result["anon_huge_pages_kib"] = huge_pages_kib()
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, required=True, help="seconds of audio streamed per configuration")
    p.add_argument("--out", type=Path, required=True, help="existing folder for result.json and the outputs")
    args = p.parse_args()
    result = run(args.seconds, args.out)
    (args.out / "result.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

"""Shared pieces of ``snac-stream bench``: the test signal, code slicing, timing, the machine.

Everything here is cheap to import except through the functions that need torch.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import sys
import time
from collections.abc import Iterator, Sequence

import numpy as np
import torch

ALLOCATOR_ENV = (
    "MALLOC_MMAP_MAX_",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_ARENA_MAX",
    "MALLOC_TOP_PAD_",
    "THP_MEM_ALLOC_ENABLE",
    "LD_PRELOAD",
    "PYTORCH_CUDA_ALLOC_CONF",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
)

# ----------------------------------------------------------------------------- process


def rerun_with_huge_pages(module: str, argv: Sequence[str]) -> None:
    """Re-execute ``python -m module argv`` with torch's huge-page allocation on (as the
    ``snac-stream`` commands run; torch reads the variable only when it loads), unless it is
    already set. Returns only when nothing had to be done."""
    from snac_stream.runtime import HUGE_PAGES_ENV

    if HUGE_PAGES_ENV in os.environ:
        return
    os.environ[HUGE_PAGES_ENV] = "1"
    sys.stdout.flush()
    os.execv(sys.executable, [sys.executable, "-m", module, *argv])


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads, restoring the count after (a benchmark
    is an application: it sets the process-wide count itself, the engines never do)."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def write_json(path: str | os.PathLike, result, **dump_options) -> None:
    """``result`` as JSON (and a final newline) to ``path``, written under a temporary name beside
    it and renamed: a results file is never half-written. ``dump_options`` go to ``json.dump``."""
    import json

    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            json.dump(result, f, **{"indent": 1, **dump_options})
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# ----------------------------------------------------------------------------- signal


def make_signal(sample_rate: int, seconds: float, seed: int = 0) -> np.ndarray:
    """A deterministic test signal of ``seconds``: a log chirp 80 Hz -> 0.4*sr, a harmonic tone
    (220 Hz and 7 harmonics, slow tremolo) and 40 ms noise bursts every 0.55 s. float32, peak < 0.9."""
    n = int(round(seconds * sample_rate))
    t = np.arange(n, dtype=np.float64) / sample_rate
    dur = max(seconds, 1e-3)
    f0, f1 = 80.0, 0.4 * sample_rate
    k = math.log(f1 / f0) / dur
    chirp = 0.3 * np.sin(2 * np.pi * f0 * (np.exp(k * t) - 1) / k)
    tone = sum((0.25 / h) * np.sin(2 * np.pi * 220.0 * h * t + 0.7 * h) for h in range(1, 9))
    tone *= 0.6 + 0.4 * np.sin(2 * np.pi * 3.0 * t)
    rng = np.random.default_rng(seed)
    bursts = np.zeros(n)
    burst_len = int(0.04 * sample_rate)
    for start in range(int(0.1 * sample_rate), n, max(1, int(0.55 * sample_rate))):
        stop = min(n, start + burst_len)
        bursts[start:stop] = 0.25 * rng.standard_normal(stop - start) * np.hanning(burst_len)[: stop - start]
    x = chirp + tone + bursts
    peak = float(np.max(np.abs(x))) if n else 1.0
    return (0.85 * x / max(peak, 1e-9)).astype(np.float32)


# ----------------------------------------------------------------------------- codes


def codes_per_frame_level(model) -> list[int]:
    """Codes of each level in one coarse frame (24 kHz: 1, 2, 4)."""
    return [model.vq_strides[0] // s for s in model.vq_strides]


def slice_frames(codes: Sequence[torch.Tensor], per: Sequence[int], j0: int, j1: int) -> list[torch.Tensor]:
    """Codes of coarse frames ``j0 .. j1-1`` (per level ``[B, (j1-j0)*per_i]``)."""
    return [c[:, j0 * r : j1 * r] for c, r in zip(codes, per, strict=True)]


def slice_ticks(
    codes: Sequence[torch.Tensor], strides: Sequence[int], t0: int, t1: int
) -> list[torch.Tensor]:
    """Tokens arriving with ticks ``t0 .. t1-1``: level i tokens ``ceil(t0/s_i) .. ceil(t1/s_i)-1``."""
    return [c[:, -(-t0 // s) : -(-t1 // s)] for c, s in zip(codes, strides, strict=True)]


def n_frames(codes: Sequence[torch.Tensor]) -> int:
    return int(codes[0].shape[-1])


def frames_of(model, codes: Sequence[torch.Tensor]) -> list[list[torch.Tensor]]:
    """Codes split into coarse frames (one streaming hop each)."""
    per = codes_per_frame_level(model)
    return [slice_frames(codes, per, j, j + 1) for j in range(n_frames(codes))]


# ----------------------------------------------------------------------------- models


def noise_free_twin(model):
    """The same weights with ``noise=False`` (NoiseBlocks removed), same device and dtype.

    NoiseBlocks sit inside the decoder blocks' ``nn.Sequential``, so the twin's parameter
    names shift; parameters are matched in registration order and checked by shape.
    """
    from snac_model import SNAC
    from snac_model.layers import NoiseBlock

    noise_prefixes = tuple(f"{name}." for name, m in model.named_modules() if isinstance(m, NoiseBlock))
    twin = SNAC(**{**model.config, "noise": False}).eval()
    src = [(k, v) for k, v in model.state_dict().items() if not k.startswith(noise_prefixes)]
    dst = twin.state_dict()
    if len(src) != len(dst):
        raise RuntimeError(f"noise-free twin has {len(dst)} tensors, the model {len(src)} without noise")
    mapped = {}
    for (dk, dv), (sk, sv) in zip(dst.items(), src, strict=True):
        if dv.shape != sv.shape or dk.rsplit(".", 1)[-1] != sk.rsplit(".", 1)[-1]:
            raise RuntimeError(f"cannot map {sk} {tuple(sv.shape)} onto {dk} {tuple(dv.shape)}")
        mapped[dk] = sv
    twin.load_state_dict(mapped)
    return twin.to(device=model.device, dtype=model.dtype).eval()


def model_summary(model, spec: str) -> dict:
    info = model.describe()
    return {
        "spec": spec,
        "config": dict(model.config),
        "random_weights": spec.startswith("random:"),
        "fingerprint": model.fingerprint().hex(),
        "latent_rate_hz": model.latent_rate,
        "decoder_hop": model.decoder_hop,
        "pad_multiple": model.pad_multiple,
        **{k: v for k, v in info.items() if k not in ("vq_strides", "sample_rate")},
        "sample_rate": model.sample_rate,
        "vq_strides": list(model.vq_strides),
        "dtype": str(model.dtype).replace("torch.", ""),
    }


# ----------------------------------------------------------------------------- timing


class Clock:
    """``perf_counter`` that synchronises CUDA first (so a reading covers queued kernels)."""

    def __init__(self, device: torch.device | str):
        self.cuda = torch.device(device).type == "cuda"

    def __call__(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()


def percentiles(values, qs=(50, 95, 99)) -> dict:
    """``{"p50": .., "p95": .., "p99": .., "mean": .., "max": .., "n": ..}`` (None when empty)."""
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size == 0:
        return {**{f"p{q}": None for q in qs}, "mean": None, "max": None, "n": 0}
    out = {f"p{q}": float(np.percentile(arr, q)) for q in qs}
    out.update(mean=float(arr.mean()), max=float(arr.max()), n=int(arr.size))
    return out


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    n = min(a.shape[-1], b.shape[-1])
    if n == 0:
        return 0.0
    return float((a[..., :n].double().cpu() - b[..., :n].double().cpu()).abs().max())


# ----------------------------------------------------------------------------- machine


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def allocator_info(malloc_tuned: bool) -> dict:
    env = {k: os.environ[k] for k in ALLOCATOR_ENV if k in os.environ}
    tuned_env = os.environ.get("MALLOC_MMAP_MAX_") == "0" or os.environ.get("THP_MEM_ALLOC_ENABLE") == "1"
    if malloc_tuned:
        summary = "glibc mallopt at run time: M_MMAP_MAX=0, M_TRIM_THRESHOLD=2^31-1 (no mmap churn)"
    elif tuned_env:
        summary = "tuned through the environment: " + ", ".join(f"{k}={v}" for k, v in env.items())
    else:
        summary = "default glibc malloc (mmap for large blocks: offline timings include page-fault churn)"
    return {
        "env": env,
        "mallopt_applied": malloc_tuned,
        "tuned": malloc_tuned or tuned_env,
        "summary": summary,
    }


def machine_info(device: str, threads: int, malloc_tuned: bool) -> dict:
    info = {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "interop_threads": torch.get_num_interop_threads(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device,
        "gpu": torch.cuda.get_device_name(0) if torch.device(device).type == "cuda" else None,
        "allocator": allocator_info(malloc_tuned),
        "loadavg_start": loadavg(),
    }
    try:
        import websockets

        info["websockets"] = websockets.__version__
    except ImportError:  # pragma: no cover
        info["websockets"] = None
    return info

"""Fused float32 Snake kernels in C, built on first use with the system C compiler.

:func:`load` compiles ``snake.c`` (``cc -O3 -march=native``, about a second) into a cache
directory (``$SNAC_STREAM_CACHE``, else ``~/.cache/snac-stream``), loads it with ctypes and
checks it against the reference formula once. Where that fails (no compiler, another OS,
``SNAC_STREAM_NATIVE=0``), it returns None and :mod:`snac_stream.kernels` keeps its
NumPy/torch passes; results agree to float rounding either way.

Measured on the project machine (1 thread, fp32, through :mod:`snac_stream.kernels`): Snake
over 64 ch x 2048 frames 112 -> 43 us, depthwise k7 + Snake 258 -> 98 us (one pass over memory
instead of eleven).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sysconfig
import tempfile
from pathlib import Path

import torch

log = logging.getLogger("snac_stream.native")

SOURCE = Path(__file__).with_name("snake.c")
FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-shared", "-fPIC"]
DISABLE_ENV = "SNAC_STREAM_NATIVE"
CACHE_ENV = "SNAC_STREAM_CACHE"

_P, _N = ctypes.c_void_p, ctypes.c_ssize_t


class NativeKernels:
    """The loaded library. Tensors are float32 on the CPU with channels innermost."""

    def __init__(self, path: Path):
        self.path = path
        lib = ctypes.CDLL(str(path))
        lib.snake_rows.argtypes = [_P, _P, _P, _P, _N, _N, _N, _N, _N]
        lib.snake_rows.restype = None
        lib.dw_snake_rows.argtypes = [_P, _P, _P, _P, _P, _P, _N, _N, _N, _N, _N, _N]
        lib.dw_snake_rows.restype = None
        self._lib = lib

    def snake(self, x: torch.Tensor, alpha: torch.Tensor, inv_alpha: torch.Tensor, out: torch.Tensor) -> None:
        """``out = snake(x)`` for ``x, out [B, T, C]`` whose rows are contiguous within an item."""
        B, T, C = x.shape
        self._lib.snake_rows(
            x.data_ptr(), out.data_ptr(), alpha.data_ptr(), inv_alpha.data_ptr(),
            B, T, C, x.stride(0), out.stride(0),
        )  # fmt: skip

    def dw_snake(
        self,
        u: torch.Tensor,
        taps: torch.Tensor,
        bias: torch.Tensor | None,
        alpha: torch.Tensor,
        inv_alpha: torch.Tensor,
        dilation: int,
        n_out: int,
    ) -> torch.Tensor:
        """Snake of the depthwise conv of contiguous ``u [B, n, C]``, ``taps [k, C]`` -> ``[B, n_out, C]``."""
        B, n, C = u.shape
        out = torch.empty(B, n_out, C, dtype=u.dtype)
        self._lib.dw_snake_rows(
            u.data_ptr(), out.data_ptr(), taps.data_ptr(), 0 if bias is None else bias.data_ptr(),
            alpha.data_ptr(), inv_alpha.data_ptr(), B, n, n_out, C, taps.shape[0], dilation,
        )  # fmt: skip
        return out


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), sysconfig.get_config_var("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name.split()[0]):
            return name.split()[0]
    return None


def _cpu_key() -> str:
    """What ``-march=native`` depends on: the CPU's feature flags (Linux), else the machine name."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.machine() + platform.processor()


def _cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    try:
        return Path.home() / ".cache" / "snac-stream"
    except RuntimeError:  # no home directory (some containers)
        return Path(tempfile.gettempdir()) / f"snac-stream-{os.getuid() if hasattr(os, 'getuid') else 0}"


def _build(cc: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        built = Path(tmp) / target.name
        subprocess.run(
            [cc, *FLAGS, "-o", str(built), str(SOURCE), "-lm"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        os.replace(built, target)  # atomic: concurrent builders never load a half-written file


def _check(kernels: NativeKernels) -> bool:
    """The kernels against the reference formulas (in float64), with arguments up to ~1e4
    (range reduction)."""
    from snac_stream.kernels import dw_snake_reference, snake_reference  # kernels imports native

    gen = torch.Generator().manual_seed(0)
    u = torch.randn(2, 20, 24, generator=gen) * torch.logspace(-3, 3, 24)
    alpha = torch.rand(24, generator=gen) * 5 + 0.05
    inv = (alpha + 1e-9).reciprocal()
    taps, bias = torch.randn(7, 24, generator=gen), torch.randn(24, generator=gen)
    u64, alpha64, inv64 = u.double(), alpha.double(), (alpha.double() + 1e-9).reciprocal()

    out = torch.empty_like(u)
    kernels.snake(u, alpha, inv, out)
    got = kernels.dw_snake(u, taps, bias, alpha, inv, 2, 8)
    want = dw_snake_reference(u64, taps.double(), bias.double(), alpha64, inv64, 2, 8)
    ok = torch.allclose(out.double(), snake_reference(u64, alpha64), rtol=1e-5, atol=1e-5)
    return ok and torch.allclose(got.double(), want, rtol=1e-5, atol=1e-4)


@functools.cache
def load() -> NativeKernels | None:
    """The native kernels, built if needed; None where unavailable (see the module doc)."""
    if os.environ.get(DISABLE_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    cc = _compiler()
    if cc is None:
        log.debug("no C compiler found: using the NumPy/torch Snake")
        return None
    key = hashlib.sha256(
        SOURCE.read_bytes() + " ".join([cc, *FLAGS]).encode() + _cpu_key().encode()
    ).hexdigest()[:16]
    cache = _cache_dir()
    target = cache / f"snake-{key}{sysconfig.get_config_var('SHLIB_SUFFIX') or '.so'}"
    try:
        if not target.exists():
            _build(cc, target)
        try:
            kernels = NativeKernels(target)
        except OSError:  # unreadable or foreign file under our name: build it again, once
            _build(cc, target)
            kernels = NativeKernels(target)
        if not _check(kernels):
            log.warning("native Snake kernels disagree with the reference: not used")
            return None
        return kernels
    except (OSError, subprocess.SubprocessError) as e:
        log.debug("native Snake kernels unavailable: %s", e)
        return None


__all__ = ["NativeKernels", "load", "DISABLE_ENV", "CACHE_ENV"]

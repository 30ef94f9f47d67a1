"""Fused float32 Snake kernels in C, built at run time into a private per-user cache.

:func:`load` compiles ``snake.c`` with the system C compiler (``-O3 -march=native``: the
library is built on, and keyed by, the CPU that runs it) into the cache directory
(``$SNAC_STREAM_CACHE``, else ``$XDG_CACHE_HOME/snac-stream``, else ``~/.cache/snac-stream``,
else ``$TMPDIR/snac-stream-UID``). That directory is created with mode 0700; before anything
is loaded, the directory and the library must be owned by this user and writable by nobody
else, and the library is loaded through the descriptor that was checked (no swap between
check and load). The loaded library is checked against the reference formulas once.

Where any of that fails (no compiler, an unsafe cache, a failed self-check), :func:`load`
raises :class:`NativeUnavailable` saying why, and the kernel selection
(:mod:`snac_stream.kernels`) runs the torch passes instead.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import stat
import subprocess
import sysconfig
import tempfile
from pathlib import Path

import torch

from ..reference import dw_snake_reference, snake_reference

SOURCE = Path(__file__).with_name("snake.c")
FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-shared", "-fPIC"]
CACHE_ENV = "SNAC_STREAM_CACHE"

_P, _N = ctypes.c_void_p, ctypes.c_ssize_t


class NativeUnavailable(RuntimeError):
    """The native kernels cannot be used here; the message says why."""


class NativeKernels:
    """The loaded library. Tensors are float32 on the CPU with channels innermost."""

    def __init__(self, path: Path, handle: str | None = None):
        self.path = path
        lib = ctypes.CDLL(handle or str(path))
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


def compiler() -> str | None:
    """The C compiler to use (``$CC``, Python's, ``cc``, ``gcc``, ``clang``), or None."""
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


def cache_dir() -> Path:
    """Where the library is cached (see the module doc); not created here."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "snac-stream"
    try:
        return Path.home() / ".cache" / "snac-stream"
    except RuntimeError:  # no home directory (some containers)
        return Path(tempfile.gettempdir()) / f"snac-stream-{os.getuid()}"


def _check_private(st: os.stat_result, path: Path, what: str) -> None:
    if st.st_uid != os.getuid():
        raise NativeUnavailable(
            f"{what} {path} belongs to uid {st.st_uid}, not to this user (uid {os.getuid()}): "
            f"refusing to load native code from it; remove it or set {CACHE_ENV} to a private directory"
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise NativeUnavailable(
            f"{what} {path} is writable by other users (mode {stat.filemode(st.st_mode)}): refusing to "
            f"load native code from it; chmod go-w it or set {CACHE_ENV} to a private directory"
        )


def private_dir(path: Path) -> Path:
    """``path`` as a directory of this user's alone: created with mode 0700, else checked (a
    real directory, owned by this user, writable by nobody else; a readable one is tightened
    to 0700, since nobody else can have written into it)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as e:
        raise NativeUnavailable(f"cannot create the kernel cache {path}: {e}") from None
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise NativeUnavailable(f"kernel cache {path} is not a directory (a link or a file): refusing it")
    _check_private(st, path, "kernel cache")
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def _build(cc: str, target: Path) -> None:
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        built = Path(tmp) / target.name
        try:
            subprocess.run(
                [cc, *FLAGS, "-o", str(built), str(SOURCE), "-lm"],
                check=True,
                capture_output=True,
                timeout=120,
            )
        except subprocess.CalledProcessError as e:
            msg = e.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
            raise NativeUnavailable(f"{cc} failed to build {SOURCE.name}: {msg[0]}") from None
        except (OSError, subprocess.SubprocessError) as e:
            raise NativeUnavailable(f"{cc} failed to build {SOURCE.name}: {e}") from None
        os.replace(built, target)  # atomic: concurrent builders never load a half-written file


def _open_checked(path: Path) -> NativeKernels:
    """Load ``path`` through a descriptor that was checked (regular file, ours, not writable by others)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NativeUnavailable(f"{path} is not a regular file: refusing to load it")
        _check_private(st, path, "kernel library")
        handle = f"/proc/self/fd/{fd}"
        return NativeKernels(path, handle if os.path.exists(handle) else None)
    finally:
        os.close(fd)


def self_check(kernels: NativeKernels) -> bool:
    """The kernels against the reference formulas (in float64), arguments up to ~1e4 (range reduction)."""
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


def load() -> NativeKernels:
    """The native kernels, built if needed; raises :class:`NativeUnavailable` saying why not."""
    kernels, reason = probe()
    if kernels is None:
        raise NativeUnavailable(reason)
    return kernels


@functools.cache
def probe() -> tuple[NativeKernels | None, str]:
    """``(kernels, "")`` or ``(None, why not)``; tried once per process (``probe.cache_clear()`` to retry)."""
    try:
        return _load(), ""
    except NativeUnavailable as e:
        return None, str(e)
    except OSError as e:
        return None, f"native kernels unavailable: {e}"


def _load() -> NativeKernels:
    cc = compiler()
    if cc is None:
        raise NativeUnavailable("no C compiler found (set CC, or install gcc)")
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join([cc, *FLAGS]).encode() + _cpu_key().encode())
    cache = private_dir(cache_dir())
    target = cache / f"snake-{key.hexdigest()[:16]}{sysconfig.get_config_var('SHLIB_SUFFIX') or '.so'}"
    if not target.exists():
        _build(cc, target)
    try:
        kernels = _open_checked(target)
    except OSError:  # unreadable or broken file under our name: build it again, once
        _build(cc, target)
        kernels = _open_checked(target)
    if not self_check(kernels):
        raise NativeUnavailable(f"{target} disagrees with the reference formulas: not used")
    return kernels


__all__ = [
    "NativeKernels",
    "NativeUnavailable",
    "load",
    "probe",
    "cache_dir",
    "private_dir",
    "compiler",
    "CACHE_ENV",
]

"""The fused C Snake kernels (snac_stream.kernels.native): built here into a private cache,
equal to the float64 formulas to float32 rounding, used by the CPU kernel set, and optional
(missing compiler or unsafe cache -> the torch passes, with the reason)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from snac_stream.kernels import CpuKernels, native, reference
from snac_stream.kernels.generic import GenericKernels

HAVE_CC = native.compiler() is not None


def snake64(y: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    y, a = y.double(), alpha.double()
    return y + (a + 1e-9).reciprocal() * torch.sin(a * y).pow(2)


def bound(y: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """float32 rounding of the output and of ``alpha * y``, with headroom."""
    inv = (alpha.double() + 1e-9).reciprocal()
    return 4e-7 * (y.double().abs() + inv * (1 + (alpha.double() * y.double()).abs() * 1e-3)) + 1e-7


@pytest.fixture(scope="module")
def lib() -> native.NativeKernels:
    k, why = native.probe()
    if k is None:
        pytest.skip(f"the native kernels cannot be built here: {why}")
    return k


@pytest.fixture(scope="module")
def fast(lib) -> CpuKernels:
    return CpuKernels(lib, packing=False)


def test_kernels_are_built_where_a_compiler_exists():
    assert shutil.which("cc") or shutil.which("gcc") or not HAVE_CC
    if HAVE_CC:
        assert native.probe()[0] is not None, native.probe()[1]  # CI has gcc: the fast path must use them


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 3),
    st.integers(0, 40),
    st.integers(1, 40),
    st.sampled_from([1e-2, 1.0, 30.0, 3e3]),
    st.integers(0, 3),
    st.integers(0, 2**31),
)
def test_snake_matches_the_formula(lib, fast, B, T, C, scale, extra_rows, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, C, generator=gen) * scale
    alpha = torch.rand(C, generator=gen) * 4 + 0.02
    inv = (alpha + 1e-9).reciprocal()
    # out is a view into a taller buffer (as the residual unit writes behind its history)
    buf = torch.full((B, T + extra_rows, C), float("nan"))
    out = buf[:, extra_rows:]
    lib.snake(x, alpha, inv, out)
    err = (out.double() - snake64(x, alpha)).abs()
    assert (err <= bound(x, alpha)).all(), err.max()
    assert buf[:, :extra_rows].isnan().all()  # nothing written outside out
    # the CPU kernel set dispatches float32 to it
    assert torch.equal(fast.snake(x, alpha, inv), out)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 3),
    st.integers(1, 7),
    st.integers(1, 9),
    st.integers(0, 30),
    st.integers(1, 33),
    st.booleans(),
    st.integers(0, 2**31),
)
def test_dw_snake_matches_the_formula(lib, fast, B, k, dilation, n_out, C, with_bias, seed):
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(B, n_out + (k - 1) * dilation, C, generator=gen)
    taps = torch.randn(k, C, generator=gen)
    bias = torch.randn(C, generator=gen) if with_bias else None
    alpha = torch.rand(C, generator=gen) * 4 + 0.02
    inv = (alpha + 1e-9).reciprocal()
    got = lib.dw_snake(u, taps, bias, alpha, inv, dilation, n_out)
    y = reference.depthwise_reference(
        u.double(), taps.double(), None if bias is None else bias.double(), dilation, n_out
    )
    err = (got.double() - snake64(y, alpha)).abs()
    assert got.shape == (B, n_out, C)
    scale = u.abs().amax(dim=(0, 1)) if u.numel() else torch.zeros(C)  # rounding of the 7-term sum
    assert (err <= bound(y, alpha) + 1e-6 * (scale * taps.abs().sum(0)).double()).all()
    assert torch.equal(fast.dw_snake(u, taps, bias, alpha, inv, dilation, n_out), got)


def test_non_float32_or_strided_inputs_take_the_torch_passes(fast):
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    alpha = torch.rand(8, dtype=torch.float64) + 0.5
    inv = (alpha + 1e-9).reciprocal()
    assert torch.allclose(fast.snake(x, alpha, inv), snake64(x, alpha), rtol=0, atol=1e-14)
    strided = torch.randn(2, 8, 5).transpose(1, 2)  # channels not innermost
    a32 = alpha.float()
    assert fast._native_for(strided, a32) is None
    got = fast.snake(strided, a32, (a32 + 1e-9).reciprocal())
    assert (got.double() - snake64(strided, a32)).abs().max() < 1e-5


def run_python(code: str, **env: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


LOAD = (
    "from snac_stream.kernels import native; k, why = native.probe(); print(k.path if k else 'None: ' + why)"
)


@pytest.mark.skipif(not HAVE_CC, reason="needs a C compiler")
def test_built_into_a_private_cache_dir_and_reused(tmp_path):
    cache = tmp_path / "cache"
    path = run_python(LOAD, SNAC_STREAM_CACHE=str(cache))
    assert path.startswith(str(cache)) and os.path.exists(path)
    assert stat.S_IMODE(os.stat(cache).st_mode) == 0o700  # created private
    assert run_python(LOAD, SNAC_STREAM_CACHE=str(cache)) == path  # reused, not rebuilt


@pytest.mark.skipif(not HAVE_CC, reason="needs a C compiler")
def test_an_unsafe_cache_is_refused_with_the_reason(tmp_path):
    cache = tmp_path / "shared"
    cache.mkdir()
    os.chmod(cache, 0o777)  # anybody could have put a library here
    out = run_python(LOAD, SNAC_STREAM_CACHE=str(cache))
    assert out.startswith("None: kernel cache") and "writable by other users" in out
    assert not list(cache.iterdir())  # nothing was built or loaded there
    os.chmod(cache, 0o755)  # ours and readable only: tightened to 0700, then used
    assert run_python(LOAD, SNAC_STREAM_CACHE=str(cache)).startswith(str(cache))
    assert stat.S_IMODE(os.stat(cache).st_mode) == 0o700
    lib = next(cache.iterdir())
    os.chmod(lib, 0o666)  # a library others may have rewritten
    out = run_python(LOAD, SNAC_STREAM_CACHE=str(cache))
    assert out.startswith("None: kernel library") and "writable by other users" in out
    link = tmp_path / "link"
    link.symlink_to(cache)
    assert "is not a directory (a link or a file)" in run_python(LOAD, SNAC_STREAM_CACHE=str(link))


def test_someone_elses_cache_is_refused(tmp_path, monkeypatch):
    cache = tmp_path / "theirs"
    cache.mkdir(mode=0o700)
    monkeypatch.setattr(os, "getuid", lambda: os.stat(cache).st_uid + 1)
    with pytest.raises(native.NativeUnavailable, match="belongs to uid .* not to this user"):
        native.private_dir(cache)


@pytest.mark.skipif(not HAVE_CC, reason="needs a C compiler")
def test_a_broken_cached_library_is_rebuilt(tmp_path):
    path = run_python(LOAD, SNAC_STREAM_CACHE=str(tmp_path / "c"))
    with open(path, "wb") as f:  # e.g. a truncated file; a fresh process finds it
        f.write(b"not a shared library")
    assert run_python(LOAD, SNAC_STREAM_CACHE=str(tmp_path / "c")) == path
    with open(path, "rb") as f:
        assert f.read(4) == b"\x7fELF"


def test_missing_compiler_means_fallback(monkeypatch):
    monkeypatch.setattr(native, "compiler", lambda: None)
    native.probe.cache_clear()
    try:
        kernels, why = native.probe()
        assert kernels is None and why.startswith("no C compiler found")
        fallback = CpuKernels(None, packing=False)
        x = torch.randn(1, 4, 3)
        alpha = torch.rand(3) + 0.5
        got = fallback.snake(x, alpha, (alpha + 1e-9).reciprocal())
        assert (got.double() - snake64(x, alpha)).abs().max() < 1e-5
        torch.testing.assert_close(got, GenericKernels().snake(x, alpha, (alpha + 1e-9).reciprocal()))
    finally:
        native.probe.cache_clear()

"""The fused C Snake kernels (snac_stream.native): built here, equal to the float64 formulas
to float32 rounding, used by the fast path, and optional (disabled or missing -> fallback)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from snac_stream import kernels, native

HAVE_CC = native._compiler() is not None


def snake64(y: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    y, a = y.double(), alpha.double()
    return y + (a + 1e-9).reciprocal() * torch.sin(a * y).pow(2)


def bound(y: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """float32 rounding of the output and of ``alpha * y``, with headroom."""
    inv = (alpha.double() + 1e-9).reciprocal()
    return 4e-7 * (y.double().abs() + inv * (1 + (alpha.double() * y.double()).abs() * 1e-3)) + 1e-7


@pytest.fixture(scope="module")
def lib() -> native.NativeKernels:
    k = native.load()
    if k is None:
        pytest.skip("no C compiler: the native kernels cannot be built here")
    return k


def test_kernels_are_built_where_a_compiler_exists():
    assert shutil.which("cc") or shutil.which("gcc") or not HAVE_CC
    if HAVE_CC:
        assert native.load() is not None  # CI has gcc: the fast path must really use them


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 3),
    st.integers(0, 40),
    st.integers(1, 40),
    st.sampled_from([1e-2, 1.0, 30.0, 3e3]),
    st.integers(0, 3),
    st.integers(0, 2**31),
)
def test_snake_matches_the_formula(lib, B, T, C, scale, extra_rows, seed):
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
    # kernels.snake dispatches float32 to it and agrees with the torch passes on float64
    assert torch.equal(kernels.snake(x, alpha, inv), out)


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
def test_dw_snake_matches_the_formula(lib, B, k, dilation, n_out, C, with_bias, seed):
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(B, n_out + (k - 1) * dilation, C, generator=gen)
    taps = torch.randn(k, C, generator=gen)
    bias = torch.randn(C, generator=gen) if with_bias else None
    alpha = torch.rand(C, generator=gen) * 4 + 0.02
    inv = (alpha + 1e-9).reciprocal()
    got = lib.dw_snake(u, taps, bias, alpha, inv, dilation, n_out)
    y = kernels.depthwise(u.double(), taps.double(), None if bias is None else bias.double(), dilation, n_out)
    err = (got.double() - snake64(y, alpha)).abs()
    assert got.shape == (B, n_out, C)
    scale = u.abs().amax(dim=(0, 1)) if u.numel() else torch.zeros(C)  # rounding of the 7-term sum
    assert (err <= bound(y, alpha) + 1e-6 * (scale * taps.abs().sum(0)).double()).all()
    assert torch.equal(kernels.dw_snake(u, taps, bias, alpha, inv, dilation, n_out), got)


def test_non_float32_or_strided_inputs_take_the_torch_passes(lib):
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    alpha = torch.rand(8, dtype=torch.float64) + 0.5
    inv = (alpha + 1e-9).reciprocal()
    assert torch.allclose(kernels.snake(x, alpha, inv), snake64(x, alpha), rtol=0, atol=1e-14)
    strided = torch.randn(2, 8, 5).transpose(1, 2)  # channels not innermost
    a32 = alpha.float()
    assert kernels._native_for(strided, a32) is None
    got = kernels.snake(strided, a32, (a32 + 1e-9).reciprocal())
    assert (got.double() - snake64(strided, a32)).abs().max() < 1e-5


def run_python(code: str, **env: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def test_disabled_by_environment_and_built_into_the_cache_dir(tmp_path):
    code = "from snac_stream import native; k = native.load(); print(None if k is None else k.path)"
    assert run_python(code, SNAC_STREAM_NATIVE="0") == "None"
    if HAVE_CC:
        path = run_python(code, SNAC_STREAM_CACHE=str(tmp_path))
        assert path.startswith(str(tmp_path)) and os.path.exists(path)
        assert run_python(code, SNAC_STREAM_CACHE=str(tmp_path)) == path  # reused, not rebuilt


@pytest.mark.skipif(not HAVE_CC, reason="needs a C compiler")
def test_a_broken_cached_library_is_rebuilt(tmp_path):
    code = "from snac_stream import native; k = native.load(); print(None if k is None else k.path)"
    path = run_python(code, SNAC_STREAM_CACHE=str(tmp_path))
    with open(path, "wb") as f:  # e.g. a truncated file; a fresh process finds it
        f.write(b"not a shared library")
    assert run_python(code, SNAC_STREAM_CACHE=str(tmp_path)) == path
    with open(path, "rb") as f:
        assert f.read(4) == b"\x7fELF"


def test_missing_compiler_means_fallback(monkeypatch):
    monkeypatch.setattr(native, "_compiler", lambda: None)
    native.load.cache_clear()
    try:
        assert native.load() is None
        x = torch.randn(1, 4, 3)
        alpha = torch.rand(3) + 0.5
        got = kernels.snake(x, alpha, (alpha + 1e-9).reciprocal())
        assert (got.double() - snake64(x, alpha)).abs().max() < 1e-5
    finally:
        native.load.cache_clear()

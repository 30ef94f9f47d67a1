"""Kernel sets behind one interface: each against the reference formulas (float64), the
selection (environment, device, what the CPU supports) and every opt-in's fallback.

No test here times anything (see ``benchmarks/fastpath.py`` for the numbers)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from streaming_helpers import examples

from snac_stream import kernels
from snac_stream.kernels import cpu, native, reference
from snac_stream.kernels.cpu import CpuKernels, PackedLinear
from snac_stream.kernels.generic import GenericKernels, Linear

F64 = torch.float64
SETS = {"generic": GenericKernels(), "native": kernels.select("cpu", "auto")}


def rand(*shape, seed=0, dtype=F64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.fixture(params=sorted(SETS))
def ks(request) -> GenericKernels:
    return SETS[request.param]


def test_snake_matches_reference_formula_float64(ks):
    x, alpha = rand(2, 37, 16, seed=1), 0.5 + rand(16, seed=2).abs()
    inv = (alpha + 1e-9).reciprocal()
    want = reference.snake_reference(x, alpha)
    torch.testing.assert_close(ks.snake(x, alpha, inv), want, rtol=0, atol=1e-12)
    out = torch.empty_like(x)
    assert ks.snake(x, alpha, inv, out=out) is out
    torch.testing.assert_close(out, want, rtol=0, atol=1e-12)
    from snac_model.layers import snake  # the model's layer (channels first) agrees

    torch.testing.assert_close(snake(x.transpose(1, 2), alpha.view(1, -1, 1)).transpose(1, 2), want)


def test_snake_float32_is_within_rounding(ks):
    x, alpha = rand(1, 300, 64, seed=3) * 3, 0.5 + rand(64, seed=4).abs()
    want = reference.snake_reference(x, alpha)  # float64
    got = ks.snake(x.float(), alpha.float(), (alpha + 1e-9).reciprocal().float())
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-6)


@given(
    channels=st.integers(1, 9),
    n_out=st.integers(1, 20),
    dilation=st.sampled_from([1, 2, 3, 9]),
    kernel=st.sampled_from([1, 3, 7]),
    batch=st.integers(1, 3),
    bias=st.booleans(),
    name=st.sampled_from(sorted(SETS)),
)
@settings(max_examples=examples(30), deadline=None)
def test_depthwise_and_dw_snake_match_grouped_conv(channels, n_out, dilation, kernel, batch, bias, name):
    ks = SETS[name]
    n = n_out + (kernel - 1) * dilation
    x, w = rand(batch, n, channels, seed=n), rand(channels, 1, kernel, seed=kernel)
    b = rand(channels, seed=7) if bias else None
    want = F.conv1d(x.transpose(1, 2), w, b, dilation=dilation, groups=channels).transpose(1, 2)
    taps = w[:, 0, :].t().contiguous()
    torch.testing.assert_close(ks.depthwise(x, taps, b, dilation, n_out), want, rtol=0, atol=1e-12)
    alpha = 0.5 + rand(channels, seed=8).abs()
    inv = (alpha + 1e-9).reciprocal()
    got = ks.dw_snake(x, taps, b, alpha, inv, dilation, n_out)
    torch.testing.assert_close(got, reference.dw_snake_reference(x, taps, b, alpha, inv, dilation, n_out))


def test_linear_packed_and_plain(ks):
    w, b = rand(40, 24, seed=1), rand(40, seed=2)
    x = rand(3, 5, 24, seed=3)
    want = x @ w.t() + b
    torch.testing.assert_close(ks.linear(w, b)(x), want, rtol=0, atol=1e-12)  # float64: F.linear
    lin32 = ks.linear(w.float(), b.float())
    torch.testing.assert_close(lin32(x.float()).double(), want, rtol=1e-5, atol=1e-5)
    assert lin32(x.float()[:, :0]).shape == (3, 0, 40)


def test_generic_kernels_run_off_the_cpu():
    # 'meta' stands in for CUDA: not CPU, no data; NumPy, the C kernels or oneDNN would raise
    for ks in SETS.values():
        x, alpha = torch.empty(1, 300, 64, device="meta"), torch.empty(64, device="meta")
        assert ks.snake(x, alpha, alpha).shape == x.shape
        u, taps = torch.empty(2, 40, 64, device="meta"), torch.empty(7, 64, device="meta")
        y = ks.dw_snake(u, taps, alpha, alpha, alpha, 3, 22)
        assert y.shape == (2, 22, 64) and y.device.type == "meta"
        linear = ks.linear(torch.empty(8, 64, device="meta"), None)
        assert not isinstance(linear, PackedLinear) and linear(torch.empty(3, 64, device="meta")).shape == (
            3,
            8,
        )
    assert kernels.select("meta").name == "generic"
    with pytest.raises(kernels.KernelsUnavailable, match="CPU only"):
        kernels.select("meta", "native")


def test_selection_by_argument_and_environment(monkeypatch):
    monkeypatch.delenv(kernels.KERNELS_ENV, raising=False)
    assert kernels.requested() == "auto"
    monkeypatch.setenv(kernels.KERNELS_ENV, "generic")
    assert kernels.select("cpu").name == "generic"
    assert kernels.select("cpu", "auto").name in ("native", "generic")  # the argument wins
    monkeypatch.setenv(kernels.KERNELS_ENV, "fastest")
    with pytest.raises(ValueError, match="SNAC_STREAM_KERNELS='fastest' is not a kernel set"):
        kernels.select("cpu")
    with pytest.raises(ValueError, match="kernels='x' is not a kernel set; use one of auto, native, generic"):
        kernels.select("cpu", "x")


def test_environment_forces_generic_for_the_whole_process():
    code = (
        "import torch; from snac_model import random_model; from snac_stream import StreamingDecoder;"
        "print(StreamingDecoder(random_model('24khz')).kernels.name)"
    )
    env = {**os.environ, kernels.KERNELS_ENV: "generic"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "generic"


def test_without_private_ops_gemms_fall_back_to_torch(monkeypatch, caplog):
    # as on a torch build without the oneDNN ops, or a CPU without them: the probe says why
    def missing(*args):
        raise AttributeError("'_OpNamespace' 'mkldnn' object has no attribute '_reorder_linear_weight'")

    monkeypatch.setattr(torch.ops.mkldnn, "_reorder_linear_weight", missing)
    cpu.onednn_linear.cache_clear()
    try:
        why = cpu.onednn_linear(torch.float32)
        assert why.startswith("oneDNN packed linear unavailable for torch.float32")
        ks = CpuKernels(None, packing=True)
        w, b, x = rand(8, 6, seed=1).float(), rand(8, seed=2).float(), rand(2, 3, 6, seed=3).float()
        with caplog.at_level(logging.WARNING, "snac_stream.kernels"):
            lin = ks.linear(w, b)
        assert type(lin) is Linear and "running those GEMMs unpacked" in caplog.text
        torch.testing.assert_close(lin(x), x @ w.t() + b)
        chosen = kernels.select("cpu", "auto")
        assert chosen.name == "generic" or not chosen.describe()["gemm"] == "onednn-packed"
    finally:
        cpu.onednn_linear.cache_clear()


def test_bf16_gemms_without_cpu_support_fall_back_with_a_reason(monkeypatch, caplog):
    # the AVX2-only case: oneDNN's bf16 reorder raises "bf16 path needs the cpu support ..."
    def reorder(w, batch):
        if w.dtype == torch.bfloat16:
            raise RuntimeError(
                "mkldnn_reorder_linear_weight: bf16 path needs the cpu support avx_ne_convert or avx512bw, "
                "avx512vl and avx512dq"
            )
        return real(w, batch)

    real = torch.ops.mkldnn._reorder_linear_weight
    monkeypatch.setattr(torch.ops.mkldnn, "_reorder_linear_weight", reorder)
    cpu.onednn_linear.cache_clear()
    try:
        ks = CpuKernels(None, packing=True)
        w, x = rand(8, 6, seed=1).float(), rand(2, 3, 6, seed=3).float()
        with caplog.at_level(logging.WARNING, "snac_stream.kernels"):
            lin = ks.linear(w, None, torch.bfloat16)
        assert "bf16 path needs the cpu support" in caplog.text
        assert type(lin) is Linear and lin.weight.dtype == torch.bfloat16
        y = lin(x)
        assert y.dtype == torch.float32
        torch.testing.assert_close(y, x @ w.t(), rtol=2e-2, atol=2e-2)
    finally:
        cpu.onednn_linear.cache_clear()


def test_bf16_packing_where_supported():
    if cpu.onednn_linear(torch.bfloat16):
        pytest.skip(f"this CPU has no oneDNN bf16 path: {cpu.onednn_linear(torch.bfloat16)}")
    ks = CpuKernels(None, packing=True)
    w, x = rand(8, 6, seed=1).float(), rand(2, 3, 6, seed=3).float()
    lin = ks.linear(w, None, torch.bfloat16)
    assert isinstance(lin, PackedLinear)
    torch.testing.assert_close(lin(x), x @ w.t(), rtol=2e-2, atol=2e-2)


def test_native_forced_without_the_library_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(native, "probe", lambda: (None, "no C compiler found (set CC, or install gcc)"))
    with pytest.raises(
        kernels.KernelsUnavailable, match="SNAC_STREAM_KERNELS=native, but no C compiler found"
    ):
        kernels.select("cpu", "native")
    chosen = kernels.select("cpu", "auto")  # auto: the rest of the fast path, the reason said
    assert chosen.describe()["snake"] == "numpy-sin" and "no C compiler" in chosen.reason

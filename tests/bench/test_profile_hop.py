"""The hop profiler of ``benchmarks/profile_hop.py``: it sees every GEMM of a hop (FLOPs
checked against a count from the architecture), changes no result and puts the kernels
back. No test here asserts a timing."""

from __future__ import annotations

import json

import pytest
import torch
from streaming_helpers import build_model

import snac_model
from benchmarks.profile_hop import HopProfiler, hop_inputs, main, profile_hops
from snac_stream import StreamingDecoder, kernels
from snac_stream.kernels import CpuKernels, GenericKernels, Linear

PATCHED = [(Linear, "__call__")] + [
    (c, n) for c in (GenericKernels, CpuKernels) for n in ("snake", "dw_snake")
]


def methods() -> list:
    return [vars(cls)[name] for cls, name in PATCHED]


def decoder_gemm_flops_per_hop(cfg: dict) -> int:
    """GEMM FLOPs of one coarse frame through a depthwise, noisy, attention-free SNAC decoder."""
    latent = cfg.get("latent_dim") or cfg["encoder_dim"] * 2 ** len(cfg["encoder_rates"])
    frames, width = cfg["vq_strides"][0], cfg["decoder_dim"]
    flops = 2 * frames * latent * width  # 1x1 conv after the depthwise input conv
    for i, stride in enumerate(cfg["decoder_rates"]):
        c_in, c_out = width >> i, width >> (i + 1)
        flops += 2 * frames * c_in * 2 * stride * c_out  # transposed conv: 2s output rows per frame
        frames *= stride
        flops += 4 * 2 * frames * c_out * c_out  # noise projection and three residual 1x1 convs
    # output conv, 7 taps to one channel: its GEMM also covers the 6 rows of history each hop
    return flops + 2 * (frames + 6) * c_out * 7


def test_gemm_flops_match_the_architecture_single_and_batched(small_config):
    cfg = small_config("plain", noise=True)
    model = build_model(cfg, torch.float32)
    want = decoder_gemm_flops_per_hop(cfg) / 1e6
    single = profile_hops(model, "decode", 1, hops=3)
    batched = profile_hops(model, "decode", 3, hops=2)
    assert abs(single["gemm_mflop"] - want) < 1e-9 * want
    assert abs(batched["gemm_mflop"] - want) < 1e-9 * want  # per stream
    for r in (single, batched):
        assert r["gemm_ms"] > 0 and r["snake_ms"] > 0
        assert abs(r["gemm_ms"] + r["snake_ms"] + r["rest_ms"] - r["total_ms"]) < 1e-9
        assert abs(sum(g["ms"] for g in r["gemm"].values()) - r["gemm_ms"]) < 1e-9


@pytest.mark.parametrize("choice", ["native", "generic"])
def test_profiling_changes_no_output_and_restores_the_kernels(small_config, choice):
    if choice == "native" and kernels.native.probe()[0] is None:
        pytest.skip("no native kernels on this machine")
    model = build_model(small_config("plain", noise=True), torch.float32)
    originals = methods()
    frames = hop_inputs(model, "decode", 5)
    plain = StreamingDecoder(model, seed=3, kernels=choice)
    profiled = StreamingDecoder(model, seed=3, kernels=choice)
    assert plain.kernels.name == choice
    want = [plain.push(f) for f in frames] + [plain.flush()]
    with HopProfiler() as prof:
        assert all(a is not b for a, b in zip(methods(), originals, strict=True))
        got = [profiled.push(f) for f in frames] + [profiled.flush()]
    for a, b in zip(want, got, strict=True):
        assert torch.equal(a, b)
    assert {"snake", "dw+snake"} <= set(prof.seconds)
    assert any(k.startswith("gemm ") for k in prof.flops)
    assert methods() == originals


def test_cli_profiles_the_published_24khz_decoder(tmp_path, capsys):
    out = tmp_path / "profile.json"
    result = main(["--batch", "2", "--hops", "2", "--malloc", "default", "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    want = decoder_gemm_flops_per_hop(snac_model.PUBLISHED_CONFIGS["24khz"]) / 1e6
    assert abs(result["decode"]["single"]["gemm_mflop"] - want) < 1e-9 * want
    assert result["gemm_peak_gflops"] > 0
    for mode in ("decode", "encode"):
        m = result[mode]
        assert m["batched"]["batch"] == 2 and m["gain_ceiling"] > 0
    assert "ceiling" in capsys.readouterr().out


@pytest.mark.parametrize("kernel_set", [GenericKernels(), CpuKernels(None, packing=False)])
def test_nested_kernel_calls_are_counted_once(kernel_set):
    # float64 takes the torch passes, where dw_snake calls snake (CpuKernels: through its parent's
    # methods, themselves patched): time it as dw+snake only, once
    u, taps = torch.randn(1, 20, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    alpha = torch.rand(4, dtype=torch.float64) + 0.5
    with HopProfiler() as prof:
        want = kernel_set.dw_snake(u, taps, None, alpha, 1 / alpha, 2, 16)
        kernel_set.snake(want, alpha, 1 / alpha)
    assert set(prof.seconds) == {"dw+snake", "snake"}
    assert prof.seconds["dw+snake"] > 0
    with HopProfiler() as prof:
        got = kernel_set.dw_snake(u, taps, None, alpha, 1 / alpha, 2, 16)
    assert set(prof.seconds) == {"dw+snake"}
    assert torch.equal(got, want)

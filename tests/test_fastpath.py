"""The fast path: kernels against the reference formulas (float64), the time-major stream
operators against the offline layers, and encoder/decoder built with it against offline.

No test here times anything (see ``benchmarks/fastpath.py`` for the numbers)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from streaming_helpers import (
    assert_codes_equal,
    build_model,
    examples,
    random_codes,
    sample_chunks,
    signal,
    small_configs,
    stream_decode,
    stream_encode,
    tick_chunks,
)

from snac_model import random_model
from snac_stream import StreamingDecoder, StreamingEncoder, kernels
from snac_stream.fastops import TCConv, TCConvTranspose, TimeMajor
from snac_stream.streaming import compact

F64 = torch.float64


def rand(*shape, seed=0, dtype=F64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ---------------------------------------------------------------------------- kernels
def test_snake_matches_reference_formula_float64():
    x, alpha = rand(2, 37, 16, seed=1), 0.5 + rand(16, seed=2).abs()
    inv = (alpha + 1e-9).reciprocal()
    want = kernels.snake_reference(x, alpha)
    torch.testing.assert_close(kernels.snake(x, alpha, inv), want, rtol=0, atol=1e-12)
    out = torch.empty_like(x)
    assert kernels.snake(x, alpha, inv, out=out) is out
    torch.testing.assert_close(out, want, rtol=0, atol=1e-12)
    # the model's own layer (channels first) agrees with the time-major formula
    from snac_model.layers import snake

    torch.testing.assert_close(snake(x.transpose(1, 2), alpha.view(1, -1, 1)).transpose(1, 2), want)


def test_snake_float32_numpy_sine_is_within_rounding():
    x, alpha = rand(1, 300, 64, seed=3) * 3, 0.5 + rand(64, seed=4).abs()
    want = kernels.snake_reference(x, alpha)  # float64
    got = kernels.snake(x.float(), alpha.float(), (alpha + 1e-9).reciprocal().float())
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-6)


def test_kernels_keep_tensors_off_the_cpu_away_from_numpy_and_c():
    # 'meta' stands in for CUDA: same dispatch (not CPU), no data; NumPy or the C kernels would raise
    x, alpha = torch.empty(1, 300, 64, device="meta"), torch.empty(64, device="meta")
    assert kernels.snake(x, alpha, alpha).shape == x.shape
    u, taps = torch.empty(2, 40, 64, device="meta"), torch.empty(7, 64, device="meta")
    y = kernels.dw_snake(u, taps, alpha, alpha, alpha, 3, 22)
    assert y.shape == (2, 22, 64) and y.device.type == "meta"
    linear = kernels.Linear(torch.empty(8, 64, device="meta"), None)  # oneDNN packing is CPU-only
    assert linear.packed is None and linear(torch.empty(3, 64, device="meta")).shape == (3, 8)


@given(
    channels=st.integers(1, 9),
    n_out=st.integers(1, 20),
    dilation=st.sampled_from([1, 2, 3, 9]),
    kernel=st.sampled_from([1, 3, 7]),
    batch=st.integers(1, 3),
    bias=st.booleans(),
)
@settings(max_examples=examples(25), deadline=None)
def test_depthwise_matches_grouped_conv(channels, n_out, dilation, kernel, batch, bias):
    n = n_out + (kernel - 1) * dilation
    x, w = rand(batch, n, channels, seed=n), rand(channels, 1, kernel, seed=kernel)
    b = rand(channels, seed=7) if bias else None
    want = F.conv1d(x.transpose(1, 2), w, b, dilation=dilation, groups=channels).transpose(1, 2)
    got = kernels.depthwise(x, w[:, 0, :].t().contiguous(), b, dilation, n_out)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_dw_snake_and_cat_snake_reference_formulas():
    u, taps, b = rand(2, 30, 8, seed=1), rand(7, 8, seed=2), rand(8, seed=3)
    alpha = 0.5 + rand(8, seed=4).abs()
    inv = (alpha + 1e-9).reciprocal()
    want = kernels.snake(kernels.depthwise(u, taps, b, 3, 12), alpha, inv)
    torch.testing.assert_close(kernels.dw_snake_reference(u, taps, b, alpha, inv, 3, 12), want)
    hist = rand(2, 4, 8, seed=5)
    got = kernels.cat_snake_reference(hist, u, alpha, inv)
    torch.testing.assert_close(got, torch.cat((hist, kernels.snake(u, alpha, inv)), dim=1))


def test_linear_packed_and_plain():
    w, b = rand(40, 24, seed=1), rand(40, seed=2)
    x = rand(3, 5, 24, seed=3)
    want = x @ w.t() + b
    torch.testing.assert_close(kernels.Linear(w, b)(x), want, rtol=0, atol=1e-12)  # float64: F.linear
    lin32 = kernels.Linear(w.float(), b.float(), pack=True)
    torch.testing.assert_close(lin32(x.float()).double(), want, rtol=1e-5, atol=1e-5)
    assert lin32(x.float()[:, :0]).shape == (3, 0, 40)


def test_intra_op_threads_restores_setting():
    before = torch.get_num_threads()
    with kernels.intra_op_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with kernels.intra_op_threads(None):
        assert torch.get_num_threads() == before


def test_compact_copies_small_views_only():
    big = torch.zeros(1000, 100)
    assert compact(big) is big
    view = compact(big[-2:])
    assert view.untyped_storage().nbytes() == 2 * 100 * 4
    assert torch.equal(view, big[-2:])


# ---------------------------------------------------------------------------- operators
def _stream(op, x: torch.Tensor, sizes) -> torch.Tensor:
    """Stream ``x [B, C, T]`` through a (wrapped time-major) operator in chunks, then flush."""
    state, parts, t = op.init_state(x.shape[0], x.device, x.dtype), [], 0
    for n in sizes:
        parts.append(op.step(state, x[..., t : t + n]))
        t += n
    parts.append(op.flush(state, x[..., :0]))
    return torch.cat(parts, dim=-1)


@given(
    mode=st.sampled_from(["depthwise", "gather", "im2col", "strided", "grouped"]),
    sizes=st.lists(st.integers(0, 9), min_size=1, max_size=8),
    dilation=st.sampled_from([1, 3]),
)
@settings(max_examples=examples(30), deadline=None)
def test_time_major_conv_equals_offline(mode, sizes, dilation):
    c_in, c_out, k, stride, groups = {
        "depthwise": (6, 6, 7, 1, 6),
        "gather": (16, 2, 7, 1, 1),  # k * C_out <= C_in: GEMM first, then shift-add
        "im2col": (3, 5, 7, 1, 1),
        "strided": (4, 6, 8, 4, 1),  # an encoder downsampler: kernel 2s, stride s
        "grouped": (4, 6, 3, 1, 2),  # F.conv1d fallback
    }[mode]
    d = 1 if stride > 1 else dilation
    pad = (stride + 1) // 2 if stride > 1 else (k - 1) * d // 2
    w, b = rand(c_out, c_in // groups, k, seed=1), rand(c_out, seed=2)
    op = TCConv(w, b, stride, d, pad, groups)
    assert op.mode == {"strided": "im2col", "grouped": "conv1d"}.get(mode, mode)
    x = rand(2, c_in, sum(sizes), seed=3)
    if x.shape[-1] + 2 * pad >= op.span:
        want = F.conv1d(x, w, b, stride, pad, d, groups)
    else:  # too short for a single output (offline raises)
        want = x.new_zeros(2, c_out, 0)
    torch.testing.assert_close(_stream(TimeMajor(op), x, sizes), want, rtol=0, atol=1e-12)


@given(stride=st.integers(2, 5), sizes=st.lists(st.integers(0, 5), min_size=1, max_size=6))
@settings(max_examples=examples(25), deadline=None)
def test_time_major_conv_transpose_equals_offline(stride, sizes):
    c_in, c_out, pad = 5, 3, (stride + 1) // 2
    w, b = rand(c_in, c_out, 2 * stride, seed=1), rand(c_out, seed=2)
    x = rand(2, c_in, sum(sizes), seed=3)
    if x.shape[-1]:
        want = F.conv_transpose1d(x, w, b, stride, pad, output_padding=stride % 2)
    else:
        want = x.new_zeros(2, c_out, 0)
    got = _stream(TimeMajor(TCConvTranspose(w, b, stride, pad)), x, sizes)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------- encoder / decoder
@settings(max_examples=examples(20), deadline=None)
@given(data=st.data())
def test_fast_and_reference_paths_equal_offline_small_configs(data):
    cfg = data.draw(small_configs())
    model = build_model(cfg)
    n = data.draw(st.integers(0, 3 * model.pad_multiple + 5))
    x = signal(2, n, seed=n)
    sizes = data.draw(sample_chunks(n, model.frame_size, model.pad_multiple))
    want = model.encode(x)
    for fast in (True, False):
        assert_codes_equal(stream_encode(StreamingEncoder(model, 2, fast=fast), x, sizes), want)
    n_ticks = data.draw(st.integers(0, 4 * model.vq_strides[0] + 3))
    codes = random_codes(model, 2, n_ticks, seed=n_ticks)
    ticks = data.draw(tick_chunks(n_ticks, model.vq_strides[0]))
    audio = model.decode(codes, seed=[5, 6])
    for fast in (True, False):
        got = stream_decode(StreamingDecoder(model, 2, seed=[5, 6], fast=fast), codes, ticks)
        torch.testing.assert_close(got, audio, rtol=0, atol=1e-9)


def test_fast_path_published_24khz_float64():
    model = random_model("24khz").double()
    x = signal(1, 5 * model.frame_size + 123, seed=4)
    sizes = [model.frame_size] * 5 + [1, 122]
    assert_codes_equal(stream_encode(StreamingEncoder(model), x, sizes), model.encode(x))
    codes = random_codes(model, 1, 6 * model.vq_strides[0], seed=5)
    want = model.decode(codes, seed=9)
    got = stream_decode(StreamingDecoder(model, seed=9), codes, [model.vq_strides[0]] * 6)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-9)


def test_fast_path_float32_close_to_offline():
    model = random_model("24khz")
    codes = random_codes(model, 1, 12, seed=1)
    got = stream_decode(StreamingDecoder(model, seed=3), codes, [4, 4, 4])
    torch.testing.assert_close(got, model.decode(codes, seed=3), rtol=0, atol=1e-4)


def test_bf16_gemms_are_opt_in_and_close():
    model = random_model("24khz")
    codes = random_codes(model, 1, 8, seed=2)
    exact = stream_decode(StreamingDecoder(model, seed=3), codes, [4, 4])
    approx = stream_decode(StreamingDecoder(model, seed=3, gemm_dtype=torch.bfloat16), codes, [4, 4])
    assert approx.dtype == torch.float32 and approx.shape == exact.shape
    assert not torch.equal(approx, exact)
    snr = 10 * torch.log10(exact.pow(2).sum() / (approx - exact).pow(2).sum())
    assert snr > 20, f"bf16 GEMM decode SNR {snr:.1f} dB"


def test_options_need_the_fast_path():
    model = random_model("24khz")
    for cls in (StreamingEncoder, StreamingDecoder):
        try:
            cls(model, fast=False, gemm_dtype=torch.bfloat16)
        except ValueError:
            continue
        raise AssertionError(f"{cls.__name__} accepted gemm_dtype without the fast path")

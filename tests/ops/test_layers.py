"""The stream operators against the offline layers, on both kernel sets; encoder/decoder built
from them against offline; fixed hops keep static state buffers; bf16 is opt-in and close.

No test here times anything (see ``benchmarks/fastpath.py`` for the numbers)."""

from __future__ import annotations

import pytest
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
from snac_stream.engine.multistream import MultiStreamDecoder, MultiStreamEncoder
from snac_stream.ops import Conv, ConvTranspose, TimeMajor, keep, walk

F64 = torch.float64
KERNELS = ("generic", "native")
SETS = {name: kernels.select("cpu", "auto" if name == "native" else name) for name in KERNELS}


def rand(*shape, seed=0, dtype=F64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ---------------------------------------------------------------------------- operators
def _stream(op, x: torch.Tensor, sizes) -> torch.Tensor:
    """Stream ``x [B, C, T]`` through a (wrapped time-major) operator in chunks, then flush."""
    state, parts, t = op.init_state(x.shape[0], x.device, x.dtype), [], 0
    for n in sizes:
        parts.append(op.step(state, x[..., t : t + n]))
        t += n
    parts.append(op.flush(state, x[..., :0]))
    return torch.cat(parts, dim=-1)


def test_keep_updates_in_place_or_copies():
    buf = torch.zeros(2, 3, 4)
    rows = torch.randn(2, 3, 4)
    assert keep(buf, rows) is buf and torch.equal(buf, rows)  # same shape: in place
    big = torch.randn(2, 100, 4)
    kept = keep(buf, big[:, -5:])  # another shape: a compact copy, not a view of the big tensor
    assert kept.shape == (2, 5, 4) and torch.equal(kept, big[:, -5:])
    assert kept.untyped_storage().nbytes() == 2 * 5 * 4 * 4


@given(
    mode=st.sampled_from(["depthwise", "gather", "im2col", "strided", "grouped"]),
    sizes=st.lists(st.integers(0, 9), min_size=1, max_size=8),
    dilation=st.sampled_from([1, 3]),
    name=st.sampled_from(KERNELS),
)
@settings(max_examples=examples(40), deadline=None)
def test_time_major_conv_equals_offline(mode, sizes, dilation, name):
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
    op = Conv(SETS[name], w, b, stride, d, pad, groups)
    assert op.mode == {"strided": "im2col", "grouped": "conv1d"}.get(mode, mode)
    x = rand(2, c_in, sum(sizes), seed=3)
    if x.shape[-1] + 2 * pad >= op.span:
        want = F.conv1d(x, w, b, stride, pad, d, groups)
    else:  # too short for a single output (offline raises)
        want = x.new_zeros(2, c_out, 0)
    torch.testing.assert_close(_stream(TimeMajor(op), x, sizes), want, rtol=0, atol=1e-12)


@given(
    stride=st.integers(2, 5),
    sizes=st.lists(st.integers(0, 5), min_size=1, max_size=6),
    name=st.sampled_from(KERNELS),
)
@settings(max_examples=examples(30), deadline=None)
def test_time_major_conv_transpose_equals_offline(stride, sizes, name):
    c_in, c_out, pad = 5, 3, (stride + 1) // 2
    w, b = rand(c_in, c_out, 2 * stride, seed=1), rand(c_out, seed=2)
    x = rand(2, c_in, sum(sizes), seed=3)
    if x.shape[-1]:
        want = F.conv_transpose1d(x, w, b, stride, pad, output_padding=stride % 2)
    else:
        want = x.new_zeros(2, c_out, 0)
    got = _stream(TimeMajor(ConvTranspose(SETS[name], w, b, stride, pad)), x, sizes)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------- encoder / decoder
@settings(max_examples=examples(20), deadline=None)
@given(data=st.data())
def test_both_kernel_sets_equal_offline_small_configs(data):
    cfg = data.draw(small_configs())
    model = build_model(cfg)
    n = data.draw(st.integers(0, 3 * model.pad_multiple + 5))
    x = signal(2, n, seed=n)
    sizes = data.draw(sample_chunks(n, model.frame_size, model.pad_multiple))
    want = model.encode(x)
    for name in KERNELS:
        assert_codes_equal(stream_encode(StreamingEncoder(model, 2, kernels=name), x, sizes), want)
    n_ticks = data.draw(st.integers(0, 4 * model.vq_strides[0] + 3))
    codes = random_codes(model, 2, n_ticks, seed=n_ticks)
    ticks = data.draw(tick_chunks(n_ticks, model.vq_strides[0]))
    audio = model.decode(codes, seed=[5, 6])
    for name in KERNELS:
        got = stream_decode(StreamingDecoder(model, 2, seed=[5, 6], kernels=name), codes, ticks)
        torch.testing.assert_close(got, audio, rtol=0, atol=1e-9)


@pytest.mark.parametrize("name", KERNELS)
def test_published_24khz_float64(name):
    model = random_model("24khz").double()
    x = signal(1, 5 * model.frame_size + 123, seed=4)
    sizes = [model.frame_size] * 5 + [1, 122]
    assert_codes_equal(stream_encode(StreamingEncoder(model, kernels=name), x, sizes), model.encode(x))
    codes = random_codes(model, 1, 6 * model.vq_strides[0], seed=5)
    want = model.decode(codes, seed=9)
    got = stream_decode(StreamingDecoder(model, seed=9, kernels=name), codes, [model.vq_strides[0]] * 6)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-9)


@pytest.mark.parametrize("name", KERNELS)
def test_float32_close_to_offline(name):
    model = random_model("24khz")
    codes = random_codes(model, 1, 12, seed=1)
    got = stream_decode(StreamingDecoder(model, seed=3, kernels=name), codes, [4, 4, 4])
    torch.testing.assert_close(got, model.decode(codes, seed=3), rtol=0, atol=1e-4)


@pytest.mark.parametrize("name", KERNELS)
def test_bf16_gemms_are_opt_in_and_close(name):
    # runs on every CPU: packed in bf16 where oneDNN has the bf16 path, else F.linear in bf16
    model = random_model("24khz")
    codes = random_codes(model, 1, 8, seed=2)
    exact = stream_decode(StreamingDecoder(model, seed=3, kernels=name), codes, [4, 4])
    dec = StreamingDecoder(model, seed=3, kernels=name, gemm_dtype=torch.bfloat16)
    approx = stream_decode(dec, codes, [4, 4])
    assert approx.dtype == torch.float32 and approx.shape == exact.shape
    assert not torch.equal(approx, exact)
    snr = 10 * torch.log10(exact.pow(2).sum() / (approx - exact).pow(2).sum())
    assert snr > 20, f"bf16 GEMM decode SNR {snr:.1f} dB"


# ---------------------------------------------------------------------------- static fixed hops
def state_buffers(layers, state) -> list[torch.Tensor]:
    """Every tensor of an operator chain's state tree (kept per stream)."""
    found = []

    def collect(obj):
        if isinstance(obj, torch.Tensor):
            found.append(obj)
        elif hasattr(obj, "__dataclass_fields__"):
            for name in obj.__dataclass_fields__:
                collect(getattr(obj, name))
        elif isinstance(obj, list | tuple):
            for item in obj:
                collect(item)

    for _, s in walk(layers, state):
        if not hasattr(s, "children"):
            collect(s)
    return found


def layout(tensors: list[torch.Tensor]) -> list[tuple]:
    return [(t.data_ptr(), tuple(t.shape), t.stride()) for t in tensors]


@pytest.mark.parametrize("hop", ["frame", "tick"])
@pytest.mark.parametrize("arch", ["24khz", "32khz"])
def test_fixed_hops_keep_state_buffers_in_place(arch, hop):
    """After warm-up, a fixed hop (one coarse frame, or one tick) reallocates no state buffer
    and changes no shape: the state is updated in place (what CUDA graph capture needs).
    With windowed attention (32 kHz) the pattern repeats every window: compare whole periods."""
    model = random_model(arch)
    s0 = model.vq_strides[0]
    period = (model.attn_window_size or 1) if hop == "tick" else max(1, (model.attn_window_size or 1) // s0)
    ticks_per_hop = s0 if hop == "frame" else 1
    dec = StreamingDecoder(model, seed=0)
    codes = random_codes(model, 1, ticks_per_hop * period * 24, seed=1)
    hops = [
        [
            c[:, -(-t * ticks_per_hop // s) : -(-(t + 1) * ticks_per_hop // s)]
            for c, s in zip(codes, model.vq_strides, strict=True)
        ]
        for t in range(period * 24)
    ]
    seen = []
    for h in hops:
        dec.push(h)
        seen.append(layout(state_buffers(dec.layers, dec.state)))
    warm = seen[12 * period :]  # past the warm-up (the decoder fills its lookahead, ~10 ticks at 24 kHz)
    for k in range(period, len(warm)):
        assert warm[k] == warm[k - period], f"decoder state moved or changed shape at hop {k}"
    if hop == "frame":
        enc = StreamingEncoder(model)
        x = signal(1, model.frame_size * period * 5, seed=2).float()
        seen = []
        for k in range(period * 5):
            enc.push(x[..., k * model.frame_size : (k + 1) * model.frame_size])
            seen.append(layout(state_buffers(enc.layers, enc.state)))
        warm = seen[2 * period :]
        for k in range(period, len(warm)):
            assert warm[k] == warm[k - period], f"encoder state moved or changed shape at hop {k}"


def test_multistream_packs_keep_state_in_place():
    model = random_model("24khz")
    dec, enc = MultiStreamDecoder(model), MultiStreamEncoder(model)
    for i in range(3):
        dec.open(i, seed=i)
        enc.open(i)
    codes = random_codes(model, 1, 4 * 8, seed=3)
    x = signal(1, model.frame_size * 8, seed=4).float()
    dec_seen, enc_seen = [], []
    for k in range(8):
        frame = [c[:, k * r : (k + 1) * r] for c, r in zip(codes, (1, 2, 4), strict=True)]
        dec.step({i: frame for i in range(3)})
        enc.step({i: x[..., k * model.frame_size : (k + 1) * model.frame_size] for i in range(3)})
        (pack,) = {id(s.pack): s.pack for s in dec.streams.values()}.values()
        dec_seen.append(layout(state_buffers(dec.layers, pack.state)))
        (pack,) = {id(s.pack): s.pack for s in enc.streams.values()}.values()
        enc_seen.append(layout(state_buffers(enc.layers, pack.state[0])))
    assert dec_seen[3:] == [dec_seen[3]] * 5 and enc_seen[3:] == [enc_seen[3]] * 5
    assert dec.stats.restacks == 1 and enc.stats.restacks == 1

"""Exactness of StreamingEncoder / StreamingDecoder against the offline model.

The contract: for any split of a signal into chunks (empty, one-sample, straddling frames and
attention windows, one big chunk), everything streamed plus the flush equals the offline
result -- identical codes in float64, decoded audio within 1e-9 in float64 (noise on,
seeded), the same lengths. Checked by hypothesis over random chunkings AND random small
configurations, and on the published configurations with random weights.

Float32: the decoder stays within ``F32_AUDIO_TOL`` of offline; encoder codes agree except
for rare near-ties (flips of the nearest codeword when two are almost equally near), whose
fraction is bounded by ``F32_MAX_FLIP_FRACTION``.

Every test runs on both kernel sets, chosen by ``SNAC_STREAM_KERNELS``: ``auto`` (the CPU
fast path, each part where this CPU supports it) and ``generic`` (plain torch ops, as on any
other device).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from streaming_helpers import (
    FIXED_CONFIGS,
    assert_codes_equal,
    build_model,
    examples,
    finish_chunks,
    random_codes,
    sample_chunks,
    signal,
    small_configs,
    split_codes,
    stream_decode,
    stream_encode,
    tick_chunks,
)

from snac_model import random_model
from snac_stream import StreamingDecoder, StreamingEncoder
from snac_stream.kernels import KERNELS_ENV

F64_AUDIO_TOL = 1e-9
# float32, measured: max |stream - offline| 8.0e-7 over 375 random small configs, 5.7e-7 (24 kHz)
# and 8.8e-7 (32 kHz) decoding 4 s; no flipped code in ~9600 (small configs) + ~1000 (24/32 kHz,
# 4 s) codes -- the nearest-codeword margins are ~1e-4 and up, the latents differ by ~1e-6.
# The bounds leave two orders of magnitude of margin.
F32_AUDIO_TOL = 1e-4
F32_MAX_FLIP_FRACTION = 0.01

seeds = st.integers(0, 2**31 - 1)


@pytest.fixture(autouse=True, scope="module", params=["auto", "generic"])
def kernel_set(request):
    """The whole module once per kernel set, chosen as a user would: by the environment."""
    mp = pytest.MonkeyPatch()
    mp.setenv(KERNELS_ENV, request.param)
    yield request.param
    mp.undo()


def test_the_kernel_set_asked_for_runs(kernel_set):
    model = random_model("24khz")
    want = {"generic"} if kernel_set == "generic" else {"native", "generic"}  # generic: no fast part here
    assert StreamingEncoder(model).kernels.name in want and StreamingDecoder(model).kernels.name in want
    if kernel_set == "auto":
        from snac_stream.kernels.cpu import onednn_linear

        assert StreamingDecoder(model).kernels.name == (
            "generic" if onednn_linear(torch.float32) else "native"
        )


def period_ticks(model) -> int:
    return math.lcm(model.vq_strides[0], model.attn_window_size or 1)


def covered_ticks(n_ticks: int, strides) -> int:
    """Ticks that the codes of ticks ``0 .. n_ticks-1`` decode to: where no level has stride 1,
    the ticks after the last token are indistinguishable, and both offline ``decode`` and the
    stream take the largest tick count consistent with the code lengths."""
    return min(math.ceil(n_ticks / s) * s for s in strides)


def noise_seed(data, batch: int):
    """An int seed, or one seed per batch item."""
    return data.draw(st.one_of(seeds, st.lists(seeds, min_size=batch, max_size=batch)))


# ============================================================================ property tests
@settings(max_examples=examples(100), deadline=None)
@given(cfg=small_configs(), data=st.data())
def test_encoder_exact_random_configs_float64(cfg, data):
    model = build_model(cfg, torch.float64, seed=data.draw(st.integers(0, 1000)))
    batch = data.draw(st.integers(1, 3))
    n = data.draw(st.integers(1, 3 * model.pad_multiple + model.frame_size))
    x = signal(batch, n, torch.float64, seed=data.draw(seeds))
    sizes = data.draw(sample_chunks(n, model.frame_size, model.pad_multiple))

    offline = model.encode(x)
    streamed = stream_encode(StreamingEncoder(model, batch), x, sizes)
    assert_codes_equal(streamed, offline)


@settings(max_examples=examples(100), deadline=None)
@given(cfg=small_configs(), data=st.data())
def test_decoder_exact_random_configs_float64(cfg, data):
    """Random tick chunkings, including partial coarse frames and streams ending inside one."""
    model = build_model(cfg, torch.float64, seed=data.draw(st.integers(0, 1000)))
    batch = data.draw(st.integers(1, 3))
    n_ticks = data.draw(st.integers(0, 3 * period_ticks(model) + model.vq_strides[0] + 1))
    codes = random_codes(model, batch, n_ticks, seed=data.draw(seeds))
    ticks = data.draw(tick_chunks(n_ticks, model.vq_strides[0]))
    seed = noise_seed(data, batch)

    offline = model.decode(codes, seed=seed)
    dec = StreamingDecoder(model, batch, seed=seed)
    streamed = stream_decode(dec, codes, ticks)
    n_ticks = covered_ticks(n_ticks, model.vq_strides)
    assert streamed.shape == offline.shape == (batch, 1, n_ticks * model.decoder_hop)
    assert dec.ticks == n_ticks
    if n_ticks:
        assert (streamed - offline).abs().max().item() <= F64_AUDIO_TOL


_f32_stats = {"codes": 0, "flips": 0, "max_audio_diff": 0.0}


@settings(max_examples=examples(40), deadline=None)
@given(cfg=small_configs(), data=st.data())
def test_float32_random_configs(cfg, data):
    """float32: decoder close to offline; encoder codes equal except rare near-ties."""
    model = build_model(cfg, torch.float32, seed=data.draw(st.integers(0, 1000)))
    batch = data.draw(st.integers(1, 3))
    n = data.draw(st.integers(1, 3 * model.pad_multiple))
    x = signal(batch, n, torch.float32, seed=data.draw(seeds))
    offline = model.encode(x)
    streamed = stream_encode(
        StreamingEncoder(model, batch), x, data.draw(sample_chunks(n, model.frame_size, model.pad_multiple))
    )
    for a, b in zip(streamed, offline, strict=True):
        assert a.shape == b.shape
        _f32_stats["codes"] += b.numel()
        _f32_stats["flips"] += int((a != b).sum())
    # a flip cascades into the finer levels of its block, so bound per example, loosely
    flips = sum(int((a != b).sum()) for a, b in zip(streamed, offline, strict=True))
    assert flips <= max(2 * model.n_codebooks, 0.1 * sum(b.numel() for b in offline))

    n_ticks = data.draw(st.integers(1, 2 * period_ticks(model) + 1))
    codes = random_codes(model, batch, n_ticks, seed=data.draw(seeds))
    offline_audio = model.decode(codes, seed=3)
    audio = stream_decode(
        StreamingDecoder(model, batch, seed=3), codes, data.draw(tick_chunks(n_ticks, model.vq_strides[0]))
    )
    assert audio.shape == offline_audio.shape
    diff = (audio - offline_audio).abs().max().item()
    _f32_stats["max_audio_diff"] = max(_f32_stats["max_audio_diff"], diff)
    assert diff <= F32_AUDIO_TOL


def test_float32_flip_fraction_bounded():
    """Runs after ``test_float32_random_configs``: the total fraction of flipped codes is small."""
    if _f32_stats["codes"] == 0:
        pytest.skip("the float32 property test did not run in this session")
    frac = _f32_stats["flips"] / _f32_stats["codes"]
    print(f"float32 random configs: {_f32_stats}")
    assert frac <= F32_MAX_FLIP_FRACTION, _f32_stats


# ============================================================================ published configs
@pytest.fixture(scope="module")
def published():
    """Published architectures with seeded random weights, float64 (built once per module)."""
    cache: dict[str, object] = {}

    def get(name: str, dtype=torch.float64):
        key = f"{name}/{dtype}"
        if key not in cache:
            cache[key] = random_model(name).to(dtype)
        return cache[key]

    return get


def published_chunkings(model, n: int) -> list[list[int]]:
    frame, hop = model.frame_size, model.hop_length
    ones = min(n, 2 * hop + 3)  # one-sample chunks for a short prefix only (they are slow)
    return [
        finish_chunks([1] * ones + [0, frame - 1], n, frame + 1),
        finish_chunks([hop - 1, 0, 2, frame, 3 * frame + 5, 0, hop], n, 2 * frame + 7),
        [n],
    ]


@pytest.mark.parametrize(
    "name,length",
    [("24khz", 3 * 2048 - 300), ("32khz", 12288 + 500), ("44khz", 12288 - 1000)],
)
def test_published_encoder_exact_float64(published, name, length):
    model = published(name)
    x = signal(1, length, torch.float64, seed=4)
    offline = model.encode(x)
    assert max(int(c.unique().numel()) for c in offline) >= 3  # codes are not trivial
    chunkings = published_chunkings(model, length)
    if name != "24khz":
        chunkings = chunkings[:2]  # the one-chunk case is offline itself; keep time down
    for sizes in chunkings:
        enc = StreamingEncoder(model)
        assert_codes_equal(stream_encode(enc, x, sizes), offline)


@pytest.mark.parametrize("name,n_ticks", [("24khz", 4 * 5 + 3), ("32khz", 32 + 13), ("44khz", 32)])
def test_published_decoder_exact_float64(published, name, n_ticks):
    model = published(name)
    codes = random_codes(model, 1, n_ticks, seed=9)
    offline = model.decode(codes, seed=21)
    s0 = model.vq_strides[0]
    tickings = [finish_chunks([1] * 5 + [0, s0 - 1, 2 * s0 + 3, 1], n_ticks, s0), [n_ticks]]
    if name == "44khz":
        tickings = tickings[:1]
    for ticks in tickings:
        streamed = stream_decode(StreamingDecoder(model, 1, seed=21), codes, ticks)
        assert streamed.shape == offline.shape == (1, 1, n_ticks * model.decoder_hop)
        assert (streamed - offline).abs().max().item() <= F64_AUDIO_TOL


def test_published_24khz_float32(published):
    model = published("24khz", torch.float32)
    batch = 2
    x = signal(batch, 4 * 2048 - 5, torch.float32, seed=8)
    offline = model.encode(x)
    sizes = finish_chunks([1] * 40 + [0, 1500, 2048, 3001], x.shape[-1], 777)
    streamed = stream_encode(StreamingEncoder(model, batch), x, sizes)
    flips = sum(int((a != b).sum()) for a, b in zip(streamed, offline, strict=True))
    total = sum(b.numel() for b in offline)
    print(f"24 kHz float32 encoder: {flips} of {total} codes differ")
    for a, b in zip(streamed, offline, strict=True):
        assert a.shape == b.shape
    assert flips <= max(model.codes_per_frame, F32_MAX_FLIP_FRACTION * total)  # one near-tie cascades

    codes = random_codes(model, batch, 4 * 4 + 2, seed=1)
    audio = stream_decode(StreamingDecoder(model, batch, seed=[1, 2]), codes, [1, 0, 3, 5, 4, 2, 3])
    ref = model.decode(codes, seed=[1, 2])
    diff = (audio - ref).abs().max().item()
    print(f"24 kHz float32 decoder: max |stream - offline| = {diff:.3g}")
    assert audio.shape == ref.shape
    assert diff <= F32_AUDIO_TOL


# ============================================================================ end to end, reset, edges
@pytest.mark.parametrize("name", ["odd_attn", "plain", "deep", "24khz"])
def test_encode_then_stream_decode_matches_forward(published, name):
    """Streamed encoder -> streamed decoder == offline ``forward`` (trimmed to the input length).
    ``forward`` decodes the straight-through ``z_q`` (equal to the codewords' only to ~1e-12)."""
    model = published(name) if name == "24khz" else build_model(FIXED_CONFIGS[name], torch.float64)
    assert model.hop_length == model.decoder_hop
    batch = 2
    n = 2 * model.pad_multiple + model.hop_length // 2 + 1
    x = signal(batch, n, torch.float64, seed=5)
    out, offline_codes = model(x, seed=17)
    codes = stream_encode(
        StreamingEncoder(model, batch), x, finish_chunks([3, 0, 1], n, model.frame_size + 3)
    )
    assert_codes_equal(codes, offline_codes)
    dec = StreamingDecoder(model, batch, seed=17)
    audio = stream_decode(dec, codes, finish_chunks([1, 2], codes[0].shape[-1] * model.vq_strides[0], 5))
    assert audio.shape[-1] >= n
    audio = audio[..., :n]
    assert audio.shape == out.shape == x.shape
    assert (audio - out).abs().max().item() <= 1e-9


@pytest.mark.parametrize("name", ["odd_attn", "deep"])
def test_reset_equals_fresh_object(name):
    model = build_model(FIXED_CONFIGS[name], torch.float64, seed=2)
    n = 2 * model.pad_multiple + 7
    a, b = signal(2, n, seed=1), signal(2, n, seed=2)
    sizes = finish_chunks([1, 5, 0], n, model.frame_size - 1)
    fresh = stream_encode(StreamingEncoder(model, 2), b, sizes)

    enc = StreamingEncoder(model, 2)
    enc.push(a[..., : n // 2])  # abandoned mid-stream
    enc.reset()
    assert_codes_equal(stream_encode(enc, b, sizes), fresh)
    enc.reset()  # and after a flush
    assert_codes_equal(stream_encode(enc, b, sizes), fresh)

    n_ticks = fresh[0].shape[-1] * model.vq_strides[0]
    ticks = finish_chunks([1, 2, 0], n_ticks, 3)
    dec_fresh = stream_decode(StreamingDecoder(model, 2, seed=[4, 5]), fresh, ticks)
    dec = StreamingDecoder(model, 2, seed=[4, 5])
    other = random_codes(model, 2, n_ticks, seed=3)
    dec.push(split_codes(other, model.vq_strides, 0, n_ticks - 1))  # abandoned mid-stream
    dec.reset()
    assert dec.ticks == 0
    assert torch.equal(stream_decode(dec, fresh, ticks), dec_fresh)
    dec.reset()
    assert torch.equal(stream_decode(dec, fresh, ticks), dec_fresh)


@pytest.mark.parametrize("n_ticks", [1, 5, 6, 7])
def test_stream_ending_inside_a_coarse_frame(n_ticks):
    """The decoder's flush at a partial coarse frame equals ``model.decode`` of the same codes."""
    model = build_model(FIXED_CONFIGS["plain"], torch.float64)  # coarse stride 4
    codes = random_codes(model, 1, n_ticks, seed=n_ticks)
    assert [c.shape[-1] for c in codes] == [math.ceil(n_ticks / s) for s in model.vq_strides]
    offline = model.decode(codes, seed=2)
    assert offline.shape[-1] == n_ticks * model.decoder_hop
    streamed = stream_decode(StreamingDecoder(model, 1, seed=2), codes, [1] * n_ticks)
    assert streamed.shape == offline.shape
    assert (streamed - offline).abs().max().item() <= F64_AUDIO_TOL


EMPTY_CONFIGS = {
    **FIXED_CONFIGS,
    # an encoder rate-1 block (stride 1, kernel 2, padding 1) lengthens the latent by one frame
    "rate1": dict(FIXED_CONFIGS["plain"], encoder_rates=[2, 1], vq_strides=[1, 1]),
}


@pytest.mark.parametrize("name", sorted(EMPTY_CONFIGS))
def test_empty_stream(name):
    model = build_model(EMPTY_CONFIGS[name], torch.float64)
    x = torch.zeros(2, 1, 0, dtype=torch.float64)
    assert [c.shape for c in model.encode(x)] == [(2, 0)] * model.n_codebooks

    enc = StreamingEncoder(model, 2)
    codes = enc.flush()
    assert [c.shape for c in codes] == [(2, 0)] * model.n_codebooks, "flush of an empty stream made codes"
    assert all(c.dtype == torch.long for c in codes)
    enc.reset()
    assert [c.shape for c in stream_encode(enc, x, [0, 0])] == [(2, 0)] * model.n_codebooks

    dec = StreamingDecoder(model, 2, seed=1)
    assert dec.flush().shape == (2, 1, 0)
    dec.reset()
    empty_codes = [torch.zeros(2, 0, dtype=torch.long) for _ in model.vq_strides]
    assert dec.push(empty_codes).shape == (2, 1, 0)
    assert dec.flush().shape == (2, 1, 0)

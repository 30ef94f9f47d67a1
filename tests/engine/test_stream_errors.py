"""Bad input to a stream: a clear exception, and the stream carries on as if it never happened.

Every rejected ``push`` is followed by the rest of the stream; the final output must still
equal the offline result (so validation happens before any state changes). Also: pushing
after ``flush`` and flushing twice raise ``StreamFinished``, and the state a stream holds is
bounded (independent of the stream's length).
"""

from __future__ import annotations

import pytest
import torch
from streaming_helpers import (
    FIXED_CONFIGS,
    assert_codes_equal,
    build_model,
    finish_chunks,
    random_codes,
    signal,
    split_codes,
    state_size,
)

from snac_model import random_model
from snac_stream import StreamFinished, StreamingDecoder, StreamingEncoder
from snac_stream.ops import walk

BATCH = 2


@pytest.fixture(scope="module")
def model():
    # strides [4, 2, 1, 1], codebook_size 32, no attention, noise on
    return build_model(FIXED_CONFIGS["plain"], torch.float64, seed=3)


def _bad_audio(model):
    n = 30
    good = signal(BATCH, n, torch.float64, seed=9)
    nan = good.clone()
    nan[1, 0, 7] = float("nan")
    inf = good.clone()
    inf[0, 0, 0] = float("inf")
    return [
        (good[:, 0, :].tolist(), TypeError, r"torch\.Tensor"),
        (good[:, 0, :], ValueError, r"\[batch, 1, samples\].*channel axis"),
        (good[0, 0, :], ValueError, r"\[batch, 1, samples\]"),
        (good.repeat(1, 2, 1), ValueError, r"mono.*2 channels"),
        (good[..., None], ValueError, r"\[batch, 1, samples\]"),
        ((good * 32767).to(torch.int16), TypeError, r"floating point.*int16"),
        (good[:1], ValueError, r"batch is 1.*batch_size=2"),
        (good.repeat(2, 1, 1), ValueError, r"batch is 4.*batch_size=2"),
        (nan, ValueError, r"NaN or infinite"),
        (inf, ValueError, r"NaN or infinite"),
    ]


def test_encoder_rejects_bad_audio_and_keeps_state(model):
    x = signal(BATCH, 3 * model.pad_multiple + 11, torch.float64, seed=1)
    offline = model.encode(x)
    enc = StreamingEncoder(model, BATCH)
    bad = _bad_audio(model)
    sizes = finish_chunks([5, 0, 1], x.shape[-1], 17)
    assert len(sizes) > len(bad)
    parts, pos = [], 0
    for i, size in enumerate(sizes):
        if i < len(bad):
            audio, exc, match = bad[i]
            with pytest.raises(exc, match=match):
                enc.push(audio)
        parts.append(enc.push(x[..., pos : pos + size]))
        pos += size
    with pytest.raises(ValueError, match="batch"):  # and once more right before the end
        enc.push(x[:1, :, :0])
    parts.append(enc.flush())
    streamed = [torch.cat([p[i] for p in parts], dim=-1) for i in range(model.n_codebooks)]
    assert_codes_equal(streamed, offline)


def test_encoder_accepts_other_float_dtypes(model):
    """float32 audio into a float64 stream is converted, like offline ``encode`` does."""
    x = signal(1, model.pad_multiple + 3, torch.float32, seed=2)
    enc = StreamingEncoder(model, 1)
    codes = enc.encode([x[..., :10], x[..., 10:]])
    assert_codes_equal(codes, model.encode(x))


def _bad_codes(model, start_tick: int):
    """Invalid pushes at ``start_tick`` (strides [4, 2, 1, 1], codebook_size 32)."""
    assert model.vq_strides == [4, 2, 1, 1] and start_tick % 4 == 1
    ok = random_codes(model, BATCH, 8, seed=1)
    one = split_codes(ok, model.vq_strides, start_tick, start_tick + 1)  # one tick: [0, 0, 1, 1]
    assert [c.shape[-1] for c in one] == [0, 0, 1, 1]

    def replace(level, tensor):
        return [tensor if i == level else c for i, c in enumerate(one)]

    neg = replace(3, torch.full((BATCH, 1), -1))
    big = replace(2, torch.full((BATCH, 1), model.codebook_size))
    return [
        (torch.stack(one[2:]), TypeError, r"list of 4 tensors"),
        (one[:3], ValueError, r"expected codes for 4 levels.*got 3"),
        (one + [one[3]], ValueError, r"expected codes for 4 levels.*got 5"),
        (neg, ValueError, rf"value -1 outside \[0, {model.codebook_size}\)"),
        (big, ValueError, rf"value {model.codebook_size} outside \[0, {model.codebook_size}\)"),
        (replace(1, one[1].double()), TypeError, r"codes\[1\] must be an integer tensor"),
        (replace(1, one[1].bool()), TypeError, r"codes\[1\] must be an integer tensor"),
        (replace(2, one[2][0]), ValueError, r"codes\[2\] must have shape \[batch, frames\]"),
        (replace(2, one[2].tolist()), TypeError, r"codes\[2\] must be a torch\.Tensor"),
        ([c[:1] for c in one], ValueError, r"codes batch is 1.*batch_size=2"),
        (replace(3, one[3][:1]), ValueError, r"same batch size"),
        # partial ticks: level lengths that do not form whole ticks from this tick
        (replace(2, one[2][:, :0]), ValueError, r"do not form whole ticks"),
        (replace(0, ok[0][:, :1]), ValueError, r"do not form whole ticks"),
        (replace(1, ok[1][:, :2]), ValueError, r"do not form whole ticks"),
    ]


def test_decoder_rejects_bad_codes_and_keeps_state(model):
    n_ticks = 4 * 5 + 2  # ends inside a coarse frame
    codes = random_codes(model, BATCH, n_ticks, seed=4)
    offline = model.decode(codes, seed=[7, 8])
    dec = StreamingDecoder(model, BATCH, seed=[7, 8])
    parts = [dec.push(split_codes(codes, model.vq_strides, 0, 1))]
    for bad, exc, match in _bad_codes(model, start_tick=1):
        with pytest.raises(exc, match=match):
            dec.push(bad)
        assert dec.ticks == 1
    with pytest.raises(ValueError, match="whole ticks"):  # two coarse codes, one tick of the rest
        dec.push([codes[0][:, :2], codes[1][:, :1], codes[2][:, 1:2], codes[3][:, 1:2]])
    t = 1
    for t1 in (2, 3, 3, 9, 13, n_ticks):
        parts.append(dec.push(split_codes(codes, model.vq_strides, t, t1)))
        t = t1
        with pytest.raises(ValueError, match="outside"):
            dec.push([torch.full((BATCH, 1), 99)] * 4)
    parts.append(dec.flush())
    streamed = torch.cat(parts, dim=-1)
    assert streamed.shape == offline.shape
    assert (streamed - offline).abs().max().item() <= 1e-9


def test_constructor_errors(model):
    with pytest.raises(ValueError, match="batch_size"):
        StreamingEncoder(model, batch_size=0)
    with pytest.raises(ValueError, match="batch_size"):
        StreamingDecoder(model, batch_size=0)
    with pytest.raises(ValueError, match="3 noise seeds for a batch of 2"):
        StreamingDecoder(model, batch_size=2, seed=[1, 2, 3])


def test_push_or_flush_after_flush(model):
    x = signal(1, 50, torch.float64)
    enc = StreamingEncoder(model)
    enc.push(x)
    enc.flush()
    with pytest.raises(StreamFinished, match=r"reset\(\)"):
        enc.push(x)
    with pytest.raises(StreamFinished, match=r"reset\(\)"):
        enc.flush()
    with pytest.raises(StreamFinished, match=r"reset\(\)"):
        enc.push(x[..., :0])
    assert issubclass(StreamFinished, RuntimeError)
    enc.reset()  # and the object is usable again
    assert_codes_equal(enc.encode([x]), model.encode(x))

    codes = random_codes(model, 1, 4, seed=2)
    dec = StreamingDecoder(model, seed=0)
    dec.push(codes)
    dec.flush()
    with pytest.raises(StreamFinished, match=r"reset\(\)"):
        dec.push(codes)
    with pytest.raises(StreamFinished, match=r"reset\(\)"):
        dec.flush()
    dec.reset()
    assert (dec.decode([codes]) - model.decode(codes, seed=0)).abs().max().item() <= 1e-9


# ============================================================================ bounded state
def encoder_state_size(enc):
    return state_size(*(s for _, s in walk(enc.layers, enc.state)), enc.block_state)


def decoder_state_size(dec):
    return state_size(*(s for _, s in walk(dec.layers, dec.state)), dec.tick_state)


def test_encoder_state_is_bounded():
    model = random_model("24khz")  # float32, as deployed
    frame = model.frame_size
    pattern = [700, 1, 0, frame - 701]  # one coarse frame per period of pushes
    x = signal(1, 40 * frame, torch.float32, seed=6)
    enc = StreamingEncoder(model)
    sizes, pos = [], 0
    for _ in range(40):
        for n in pattern:
            enc.push(x[..., pos : pos + n])
            pos += n
            sizes.append(encoder_state_size(enc))
    p = len(pattern)
    after_10, after_40 = sizes[10 * p - 1], sizes[40 * p - 1]
    assert after_10 == after_40, (after_10, after_40)
    assert sizes[20 * p : 40 * p] == sizes[10 * p : 30 * p]  # periodic: nothing accumulates
    elements, nbytes, storage = max(sizes)
    assert 0 < elements < 200_000
    print(
        f"24 kHz encoder state (float32): {after_40[0]} elements = {after_40[1]} bytes at a frame boundary, "
        f"max {nbytes} bytes (storage {storage} bytes) over a frame"
    )


def test_decoder_state_is_bounded():
    model = random_model("24khz")
    s0 = model.vq_strides[0]
    codes = random_codes(model, 1, 40 * s0, seed=5)
    pattern = [1, 0, 2, 1]  # one coarse frame per period of pushes
    dec = StreamingDecoder(model, seed=0)
    sizes, t = [], 0
    for _ in range(40):
        for n in pattern:
            dec.push(split_codes(codes, model.vq_strides, t, t + n))
            t += n
            sizes.append(decoder_state_size(dec))
    p = len(pattern)
    after_10, after_40 = sizes[10 * p - 1], sizes[40 * p - 1]
    assert after_10 == after_40, (after_10, after_40)
    assert sizes[20 * p : 40 * p] == sizes[10 * p : 30 * p]
    elements, nbytes, storage = max(sizes)
    assert 0 < elements < 2_000_000
    print(
        f"24 kHz decoder state (float32, noise cache included): {after_40[0]} elements = {after_40[1]} bytes "
        f"at a frame boundary, max {nbytes} bytes (storage {storage} bytes) over a frame"
    )


def test_state_storage_does_not_scale_with_chunk_size():
    """Between pushes a stream should hold its small state, not the buffers of the last chunk.

    A state tensor that is a view (``buf[..., k:]``) of a chunk-sized intermediate keeps that
    whole buffer alive: after one big push the held storage then grows with the chunk (all
    layers' activations of it), although the logical state is the same. Compare the storage
    held after 4 s pushed in one chunk with the same 4 s pushed frame by frame.
    """
    model = random_model("24khz")
    frame = model.frame_size
    x = signal(1, 47 * frame, torch.float32, seed=1)  # ~4 s
    small, big = StreamingEncoder(model), StreamingEncoder(model)
    for pos in range(0, x.shape[-1], frame):
        small.push(x[..., pos : pos + frame])
    big.push(x)
    (el_s, by_s, st_s), (el_b, by_b, st_b) = encoder_state_size(small), encoder_state_size(big)
    assert el_s == el_b  # same logical state
    assert st_b <= 2 * st_s + (1 << 20), (
        f"encoder: {st_b / 1e6:.1f} MB of storage held after one {x.shape[-1]}-sample push for a state of "
        f"{by_b / 1e6:.2f} MB ({st_s / 1e6:.1f} MB for {by_s / 1e6:.2f} MB when pushed frame by frame)"
    )

    s0 = model.vq_strides[0]
    codes = random_codes(model, 1, 47 * s0, seed=2)
    small, big = StreamingDecoder(model, seed=0), StreamingDecoder(model, seed=0)
    for t in range(0, 47 * s0, s0):
        small.push(split_codes(codes, model.vq_strides, t, t + s0))
    big.push(codes)
    (el_s, by_s, st_s), (el_b, by_b, st_b) = decoder_state_size(small), decoder_state_size(big)
    assert el_s == el_b
    assert st_b <= 2 * st_s + (1 << 20), (
        f"decoder: {st_b / 1e6:.1f} MB of storage held after one {47 * s0}-tick push for a state of "
        f"{by_b / 1e6:.2f} MB ({st_s / 1e6:.1f} MB for {by_s / 1e6:.2f} MB when pushed frame by frame)"
    )

"""Wrong inputs and invalid configurations fail early with errors that name the problem."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_ours, small_config

from snac_model import SNAC


@pytest.fixture(scope="module")
def model():
    return make_ours(small_config("odd"), torch.float32)


@pytest.fixture(scope="module")
def codes(model):
    x = torch.randn(2, 1, model.pad_multiple, generator=torch.Generator().manual_seed(0)) * 0.3
    return model.encode(x)


# ---------------------------------------------------------------- audio


@pytest.mark.parametrize(
    "shape, match",
    [
        ((100,), r"\[batch, 1, samples\].*audio\[None, None, :\]"),
        ((2, 100), r"\[batch, 1, samples\].*audio\[:, None, :\]"),
        ((1, 2, 100), r"mono: got 2 channels"),
        ((1, 1, 1, 100), r"\[batch, 1, samples\], got \(1, 1, 1, 100\)"),
    ],
)
def test_wrong_audio_shape(model, shape, match):
    for fn in (model.encode, model.forward):
        with pytest.raises(ValueError, match=match):
            fn(torch.zeros(shape))


def test_integer_audio_is_refused(model):
    pcm = torch.zeros(1, 1, 100, dtype=torch.int16)
    with pytest.raises(TypeError, match=r"floating point.*int16.*32768"):
        model.encode(pcm)
    with pytest.raises(TypeError, match="floating point"):
        model(pcm)


def test_non_tensor_audio_is_refused(model):
    with pytest.raises(TypeError, match="torch.Tensor"):
        model.encode(np.zeros((1, 1, 100), dtype=np.float32))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_audio_is_refused(model, bad):
    x = torch.zeros(1, 1, 100)
    x[0, 0, 37] = bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        model.encode(x)
    with pytest.raises(ValueError, match="NaN or infinite"):
        model(x)


def test_empty_batch_is_refused(model):
    with pytest.raises(ValueError, match="batch"):
        model.encode(torch.zeros(0, 1, 100))


def test_other_float_dtypes_are_converted(model):
    x = torch.randn(1, 1, model.pad_multiple, generator=torch.Generator().manual_seed(1)) * 0.3
    ref = model.encode(x)
    for other in (x.double(), x.half().float()):
        codes = model.encode(other)
        assert [c.shape for c in codes] == [c.shape for c in ref]
    assert all(torch.equal(a, b) for a, b in zip(model.encode(x.double()), ref, strict=True))


# ---------------------------------------------------------------- codes


def test_codes_out_of_range(model, codes):
    big = [c.clone() for c in codes]
    big[1][0, 3] = model.codebook_size
    with pytest.raises(ValueError, match=rf"codes\[1\] has value {model.codebook_size} outside \[0, 64\)"):
        model.decode(big)
    neg = [c.clone() for c in codes]
    neg[0][1, 0] = -1
    with pytest.raises(ValueError, match=r"codes\[0\] has value -1 outside"):
        model.decode(neg)
    ok = [c.clone() for c in codes]
    ok[1][0, 3] = model.codebook_size - 1
    ok[0][1, 0] = 0
    assert model.decode(ok).shape[-1] > 0


def test_codes_wrong_dtype(model, codes):
    with pytest.raises(TypeError, match=r"codes\[0\] must be an integer tensor"):
        model.decode([codes[0].float(), codes[1]])
    with pytest.raises(TypeError, match=r"codes\[1\] must be an integer tensor"):
        model.decode([codes[0], codes[1].bool()])
    # other integer types are fine
    a = model.decode([codes[0].int(), codes[1].to(torch.int16)])
    assert a.shape[-1] == codes[1].shape[-1] * model.decoder_hop


def test_codes_wrong_number_of_levels(model, codes):
    with pytest.raises(ValueError, match=r"expected codes for 2 levels.*got 1"):
        model.decode(codes[:1])
    with pytest.raises(ValueError, match=r"expected codes for 2 levels.*got 3"):
        model.decode([*codes, codes[1]])


def test_codes_not_a_list(model, codes):
    with pytest.raises(TypeError, match="list of 2 tensors"):
        model.decode(codes[0])
    with pytest.raises(TypeError, match=r"codes\[1\] must be a torch.Tensor"):
        model.decode([codes[0], codes[1].tolist()])


def test_codes_mismatched_level_lengths(model, codes):
    # vq_strides [2, 1]: n coarse codes need 2n (or 2n-1) fine codes
    with pytest.raises(ValueError, match=r"code lengths \[\d+, \d+\] per level do not form whole ticks"):
        model.decode([codes[0], codes[1][:, :-3]])
    with pytest.raises(ValueError, match="do not form whole ticks"):
        model.decode([codes[0][:, :-2], codes[1]])


def test_codes_wrong_shape_and_batch(model, codes):
    with pytest.raises(ValueError, match=r"codes\[0\] must have shape \[batch, frames\]"):
        model.decode([codes[0][0], codes[1]])
    with pytest.raises(ValueError, match="same batch size"):
        model.decode([codes[0][:1], codes[1]])


def test_seed_list_must_match_batch(model, codes):
    noisy = SNAC(**small_config("odd", noise=True))
    with pytest.raises(ValueError, match="2 noise seeds for a batch of 1"):
        noisy.decode([c[:1] for c in codes], seed=[1, 2])


# ---------------------------------------------------------------- configs


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(vq_strides=[4, 3, 1]), r"must divide the coarsest one \(4\).*\[3\]"),
        (dict(vq_strides=[2, 4]), r"must divide the coarsest one"),
        (dict(vq_strides=[]), "vq_strides must not be empty"),
        (dict(vq_strides=[2, 0]), "vq_strides must be a list of positive integers"),
        (dict(encoder_dim=8), r"multiples of 64: encoder latent dim is 32"),
        (dict(decoder_dim=96), r"multiples of 64: decoder_dim is 96"),
        (dict(latent_dim=128), r"latent_dim=128 does not match the encoder output.*= 64"),
        (dict(decoder_dim=66, attn_window_size=None), r"decoder_dim=66 must be divisible by 2\*\*len"),
        (dict(encoder_rates=[3, -5]), "encoder_rates must be a list of positive integers"),
        (dict(encoder_rates=4), "encoder_rates must be a list"),
        (dict(attn_window_size=0), "attn_window_size must be a positive integer"),
        (dict(codebook_size=1), "codebook_size must be at least 2"),
        (dict(sampling_rate=16000.0), "sampling_rate must be a positive integer"),
        (dict(noise="yes"), "noise must be true or false"),
    ],
)
def test_invalid_config(overrides, match):
    with pytest.raises(ValueError, match=match):
        SNAC(**small_config("odd", **overrides))


def test_valid_edge_configs():
    # latent_dim given explicitly and equal to the encoder output is fine; attention off allows any dims
    assert SNAC(**small_config("odd", latent_dim=64)).latent_dim == 64
    m = SNAC(**small_config("odd", encoder_dim=6, decoder_dim=36, attn_window_size=None))
    assert m.latent_dim == 24

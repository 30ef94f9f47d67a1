"""snac_model.SNAC against the reference ``snac`` package: same weights, same outputs.

Published configurations run on short signals only (one to two ``pad_multiple``s); the
small configurations of ``conftest.SMALL_CONFIGS`` cover odd rates (transposed convs with
``output_padding``), attention windows of 2 and 4, and 2..5 levels.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import SMALL_CONFIGS, make_audio, make_ours, make_pair, small_config

from snac_model import PUBLISHED_CONFIGS, SNAC, random_model

DTYPES = [torch.float64, torch.float32]


def assert_codes_equal(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    assert len(a) == len(b)
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        assert x.dtype == y.dtype == torch.long, i
        assert x.shape == y.shape, (i, x.shape, y.shape)
        assert torch.equal(x, y), f"level {i}: {(x != y).sum().item()} codes differ"


def assert_nontrivial(codes: list[torch.Tensor]) -> None:
    """Parity on constant codes would prove little: the signal must reach several codewords."""
    assert max(int(c.unique().numel()) for c in codes) >= 3


# ---------------------------------------------------------------- parity: published


@pytest.mark.parametrize("name", sorted(PUBLISHED_CONFIGS))
def test_published_parity_float32(name):
    ref, ours = make_pair(PUBLISHED_CONFIGS[name], torch.float32)
    assert ours.noise is True
    pm = ours.pad_multiple
    # 24 kHz: 1.5 pad multiples; the (costlier, identically built) 32/44 kHz: just under one
    length = pm + pm // 2 if name == "24khz" else pm - 100
    padded = math.ceil(length / pm) * pm
    x = make_audio(1, length, torch.float32, seed=1)
    with torch.inference_mode():
        codes_ref = ref.encode(x)
    codes = ours.encode(x)
    assert_codes_equal(codes, codes_ref)
    assert_nontrivial(codes)
    assert [c.shape[-1] for c in codes] == [padded // (ours.hop_length * s) for s in ours.vq_strides]

    # seed=None draws torch.randn in the reference's order: the same global seed gives the same audio
    torch.manual_seed(123)
    with torch.inference_mode():
        audio_ref = ref.decode(codes_ref)
    torch.manual_seed(123)
    audio = ours.decode(codes)
    assert audio.dtype == torch.float32
    assert audio.shape == audio_ref.shape == (1, 1, padded)
    assert torch.equal(audio, audio_ref)


def test_published_24khz_forward_float64():
    ref, ours = make_pair(PUBLISHED_CONFIGS["24khz"], torch.float64, seed=3)
    x = make_audio(2, ours.pad_multiple + 77, torch.float64, seed=2)
    torch.manual_seed(7)
    with torch.inference_mode():
        out_ref, codes_ref = ref(x)
    torch.manual_seed(7)
    out, codes = ours(x)
    assert_codes_equal(codes, codes_ref)
    assert_nontrivial(codes)
    assert out.shape == x.shape
    assert out.dtype == torch.float64
    assert torch.equal(out, out_ref)


# ---------------------------------------------------------------- parity: small configs


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize("name", sorted(SMALL_CONFIGS))
def test_small_config_parity(name, dtype):
    cfg = small_config(name)
    ref, ours = make_pair(cfg, dtype)
    pm = ours.pad_multiple
    x = make_audio(2, 3 * pm + 5, dtype, seed=4)
    with torch.inference_mode():
        codes_ref = ref.encode(x)
        audio_ref = ref.decode(codes_ref)
        out_ref, fcodes_ref = ref(x)
    codes = ours.encode(x)
    assert_codes_equal(codes, codes_ref)
    assert_nontrivial(codes)
    audio = ours.decode(codes)
    assert audio.dtype == dtype
    assert audio.shape == audio_ref.shape == (2, 1, 4 * pm)
    assert torch.equal(audio, audio_ref)
    out, fcodes = ours(x)
    assert_codes_equal(fcodes, fcodes_ref)
    assert out.shape == out_ref.shape == x.shape
    assert torch.equal(out, out_ref)
    assert out.abs().max() > 1e-3  # not a silent decoder


def test_small_configs_cover_the_unusual_paths():
    """The parity matrix above is only worth something if these paths are in it."""
    cfgs = [small_config(n) for n in SMALL_CONFIGS]
    assert any(r % 2 for c in cfgs for r in c["decoder_rates"])  # output_padding = 1
    assert any(r % 2 for c in cfgs for r in c["encoder_rates"])
    assert {c["attn_window_size"] for c in cfgs} >= {None, 2, 4}
    assert {len(c["vq_strides"]) for c in cfgs} >= {2, 5}
    assert {c["depthwise"] for c in cfgs} == {True, False}
    models = {n: SNAC(**small_config(n)) for n in SMALL_CONFIGS}
    tconvs = [
        m for model in models.values() for m in model.modules() if isinstance(m, torch.nn.ConvTranspose1d)
    ]
    assert any(m.output_padding == (1,) for m in tconvs)


def test_batch_items_are_independent_without_noise():
    ours = make_ours(small_config("odd"))
    x = make_audio(3, 2 * ours.pad_multiple + 9, seed=5)
    out, codes = ours(x)
    for b in range(3):
        out_b, codes_b = ours(x[b : b + 1])
        assert_codes_equal([c[b : b + 1] for c in codes], codes_b)
        torch.testing.assert_close(out[b : b + 1], out_b, rtol=0, atol=1e-12)


# ---------------------------------------------------------------- lengths


@pytest.mark.parametrize("name", ["odd", "deep"])
def test_encode_pads_to_pad_multiple(name):
    ours = make_ours(small_config(name))
    pm = ours.pad_multiple
    assert pm == ours.hop_length * math.lcm(ours.vq_strides[0], ours.attn_window_size or 1)
    for length in (1, pm - 1, pm, pm + 1, 2 * pm + 3):
        x = make_audio(1, length, seed=length)
        codes = ours.encode(x)
        padded = math.ceil(length / pm) * pm
        assert [c.shape for c in codes] == [(1, padded // (ours.hop_length * s)) for s in ours.vq_strides]
        # padding is zeros: explicitly zero-padded audio gives the same codes
        zp = torch.nn.functional.pad(x, (0, padded - length))
        assert_codes_equal(ours.encode(zp), codes)
        audio = ours.decode(codes)
        assert audio.shape == (1, 1, padded // ours.hop_length * ours.decoder_hop)
        out, fcodes = ours(x)
        assert out.shape == x.shape  # forward trims to the input length
        assert_codes_equal(fcodes, codes)
        torch.testing.assert_close(out, audio[..., :length], rtol=0, atol=1e-12)


def test_decode_length_is_ticks_times_decoder_hop():
    ours = make_ours(small_config("plain"))  # vq_strides [3, 1]
    gen = torch.Generator().manual_seed(0)
    for coarse in (1, 2, 5):
        codes = [torch.randint(0, ours.codebook_size, (2, coarse * 3 // s), generator=gen) for s in (3, 1)]
        assert ours.decode(codes).shape == (2, 1, coarse * 3 * ours.decoder_hop)
    # a stream that ended inside a coarse frame: 5 ticks = 2 coarse codes + 5 fine codes
    codes = [torch.randint(0, ours.codebook_size, (1, n), generator=gen) for n in (2, 5)]
    assert ours.decode(codes).shape == (1, 1, 5 * ours.decoder_hop)


def test_empty_input_gives_empty_output():
    ours = make_ours(small_config("odd"))
    x = torch.zeros(2, 1, 0, dtype=torch.float64)
    codes = ours.encode(x)
    assert len(codes) == ours.n_codebooks
    assert all(c.shape == (2, 0) and c.dtype == torch.long for c in codes)
    audio = ours.decode(codes)
    assert audio.shape == (2, 1, 0) and audio.dtype == torch.float64
    out, fcodes = ours(x)
    assert out.shape == (2, 1, 0)
    assert all(c.shape == (2, 0) for c in fcodes)


# ---------------------------------------------------------------- properties


@pytest.fixture(scope="module")
def published_models():
    return {name: SNAC(**PUBLISHED_CONFIGS[name]).eval() for name in ("24khz", "32khz")}


def test_properties_24khz(published_models):
    m = published_models["24khz"]
    assert m.sample_rate == 24000
    assert m.hop_length == 512
    assert m.vq_strides == [4, 2, 1]
    assert m.n_codebooks == 3
    assert m.codebook_size == 4096
    assert m.frame_size == 2048
    assert m.codes_per_frame == 7
    assert m.pad_multiple == 2048
    assert m.latent_rate == pytest.approx(46.875)
    assert m.frame_rates == pytest.approx([11.71875, 23.4375, 46.875])
    assert m.bitrate == pytest.approx(984.375)
    assert round(m.bitrate / 1000, 3) == 0.984
    d = m.describe()
    assert d["sample_rate"] == 24000 and d["hop_length"] == 512
    assert d["codes_per_coarse_frame"] == 7 and d["coarse_frame_samples"] == 2048
    assert d["coarse_frame_ms"] == pytest.approx(85.333, abs=1e-3)
    assert d["bitrate_bps"] == pytest.approx(984.375)
    assert d["attn_window_size"] is None
    assert d["frame_rates_hz"] == pytest.approx([11.71875, 23.4375, 46.875])
    assert d["parameters"] == sum(p.numel() for p in m.parameters())
    assert 19.5e6 < d["parameters"] < 20.1e6  # 19.8 M published


def test_properties_32khz(published_models):
    m = published_models["32khz"]
    assert m.sample_rate == 32000
    assert m.hop_length == 384
    assert m.n_codebooks == 4
    assert m.frame_size == 3072
    assert m.codes_per_frame == 15
    assert m.pad_multiple == 384 * 32
    assert m.frame_rates == pytest.approx([32000 / 384 / s for s in (8, 4, 2, 1)])
    assert m.bitrate == pytest.approx(1875.0)
    d = m.describe()
    assert d["attn_window_size"] == 32
    assert 54.0e6 < d["parameters"] < 55.0e6  # 54.5 M published


def test_config_is_the_constructor_arguments(published_models):
    assert published_models["24khz"].config == {**PUBLISHED_CONFIGS["24khz"], "latent_dim": None}
    assert published_models["24khz"].latent_dim == 48 * 16
    for name in SMALL_CONFIGS:
        assert SNAC(**small_config(name)).config == {**small_config(name), "latent_dim": None}


def test_fingerprint_is_stable_and_discriminates():
    a = make_ours(small_config("odd"), torch.float32, seed=0)
    fp = a.fingerprint()
    assert isinstance(fp, bytes) and len(fp) == 8
    assert make_ours(small_config("odd"), torch.float32, seed=0).fingerprint() == fp
    assert make_ours(small_config("odd"), torch.float32, seed=1).fingerprint() != fp
    assert make_ours(small_config("odd", sampling_rate=16001), torch.float32, seed=0).fingerprint() != fp
    # stable across .double() and weight-norm folding, whether or not it was asked for before
    assert a.double().fingerprint() == fp
    assert a.fold_weight_norm().fingerprint() == fp
    b = make_ours(small_config("odd"), torch.float32, seed=0).double()
    assert b.fingerprint() == fp
    c = make_ours(small_config("odd"), torch.float32, seed=0).fold_weight_norm()
    assert c.fingerprint() == fp
    assert random_model("24khz").fingerprint() == random_model("24khz", seed=0).fingerprint()


def test_fingerprint_follows_loaded_weights():
    a = make_ours(small_config("plain"), seed=0)
    b = make_ours(small_config("plain"), seed=1)
    fa, fb = a.fingerprint(), b.fingerprint()
    assert fa != fb
    b.load_state_dict(a.state_dict())
    assert b.fingerprint() == fa


# ---------------------------------------------------------------- fold_weight_norm


@pytest.mark.parametrize("name", ["odd", "deep"])
def test_fold_weight_norm_keeps_outputs(name):
    model = make_ours(small_config(name))
    x = make_audio(2, 2 * model.pad_multiple + 1, seed=9)
    out, codes = model(x)
    keys = set(model.state_dict())
    assert any(k.endswith("parametrizations.weight.original0") for k in keys)
    assert not model.weight_norm_folded

    assert model.fold_weight_norm() is model
    assert model.weight_norm_folded
    folded_keys = set(model.state_dict())
    assert not any("parametrizations" in k for k in folded_keys)
    expected = {
        k.replace(".parametrizations.weight.original0", ".weight") for k in keys if "original1" not in k
    }
    assert folded_keys == expected
    out2, codes2 = model(x)
    assert_codes_equal(codes2, codes)
    torch.testing.assert_close(out2, out, rtol=0, atol=1e-12)
    torch.testing.assert_close(model.decode(codes), model.decode(codes2), rtol=0, atol=0)
    model.fold_weight_norm()  # idempotent
    assert model.weight_norm_folded


def test_folding_one_model_leaves_another_intact():
    a = make_ours(small_config("odd"), seed=0)
    b = make_ours(small_config("odd"), seed=0)
    x = make_audio(1, a.pad_multiple + 3, seed=10)
    out_b, _ = b(x)
    a.fold_weight_norm()
    # b still has its parametrizations, its keys and its outputs
    assert not b.weight_norm_folded
    assert any("parametrizations" in k for k in b.state_dict())
    out_b2, _ = b(x)
    assert torch.equal(out_b, out_b2)
    # b's weights can still be loaded and folded on its own
    b.load_state_dict(make_ours(small_config("odd"), seed=0).state_dict(), strict=True)
    b.fold_weight_norm()
    torch.testing.assert_close(b(x)[0], a(x)[0], rtol=0, atol=0)
    # a freshly built model of the same class is parametrized as usual
    c = SNAC(**small_config("odd"))
    assert not c.weight_norm_folded
    c.load_state_dict(make_ours(small_config("odd"), seed=0).state_dict(), strict=True)

"""Seeded decoder noise: reproducible, seed-dependent, independent of batch and chunking."""

from __future__ import annotations

import pytest
import torch
from conftest import make_audio, make_ours, small_config
from hypothesis import given
from hypothesis import strategies as st

from snac_model import NoiseSource
from snac_model.noise import NOISE_BLOCK, noise_block


@pytest.fixture(scope="module")
def noisy():
    """The "odd" config with noise on (odd decoder rates, attention), float64."""
    return make_ours(small_config("odd", noise=True), torch.float64)


@pytest.fixture(scope="module")
def codes(noisy):
    return noisy.encode(make_audio(3, 2 * noisy.pad_multiple, seed=11))


def test_seeded_decode_is_reproducible(noisy, codes):
    a = noisy.decode(codes, seed=5)
    b = noisy.decode(codes, seed=5)
    assert torch.equal(a, b)
    torch.manual_seed(0)  # the global generator plays no part
    assert torch.equal(noisy.decode(codes, seed=5), a)


def test_different_seeds_differ(noisy, codes):
    a = noisy.decode(codes, seed=5)
    b = noisy.decode(codes, seed=6)
    diff = (a - b).abs()
    assert diff.max() > 1e-3
    assert (diff > 1e-9).float().mean() > 0.5  # the noise reaches most samples


def test_noise_matters(noisy, codes):
    """The seeded path really adds noise: silencing the NoiseBlocks changes the output."""
    quiet = make_ours(small_config("odd", noise=True), torch.float64)
    quiet.load_state_dict(noisy.state_dict())
    silenced = 0
    with torch.no_grad():
        for name, p in quiet.named_parameters():
            if ".linear.parametrizations.weight.original0" in name:
                p.zero_()
                silenced += 1
    assert silenced == len(noisy.decoder_rates)
    a, b = quiet.decode(codes, seed=5), quiet.decode(codes, seed=6)
    assert torch.equal(a, b)
    assert (noisy.decode(codes, seed=5) - a).abs().max() > 1e-3


def test_unseeded_decode_is_random_like_the_reference(noisy, codes):
    a = noisy.decode(codes)
    b = noisy.decode(codes)
    assert not torch.equal(a, b)
    torch.manual_seed(42)
    c = noisy.decode(codes)
    torch.manual_seed(42)
    d = noisy.decode(codes)
    assert torch.equal(c, d)  # seed=None draws from the global generator, like snac.SNAC


def test_decode_is_independent_of_batch_composition(noisy, codes):
    seeds = [101, 202, 303]
    batch = noisy.decode(codes, seed=seeds)
    for i, s in enumerate(seeds):
        alone = noisy.decode([c[i : i + 1] for c in codes], seed=s)
        assert torch.equal(alone, batch[i : i + 1]), i
    # reordering the batch reorders the output exactly
    perm = [2, 0, 1]
    shuffled = noisy.decode([c[perm] for c in codes], seed=[seeds[p] for p in perm])
    assert torch.equal(shuffled, batch[perm])


def test_int_seed_applies_to_every_item(noisy, codes):
    same = [c[:1].expand(2, -1).contiguous() for c in codes]
    out = noisy.decode(same, seed=9)
    assert torch.equal(out[0], out[1])
    assert torch.equal(out[:1], noisy.decode([c[:1] for c in codes], seed=9))
    two = noisy.decode(same, seed=[9, 10])
    assert torch.equal(two[:1], out[:1]) and not torch.equal(two[1], out[1])


def test_seeded_forward(noisy):
    x = make_audio(2, noisy.pad_multiple + 5, seed=12)
    a, ca = noisy(x, seed=[1, 2])
    b, cb = noisy(x, seed=[1, 2])
    assert torch.equal(a, b)
    assert all(torch.equal(p, q) for p, q in zip(ca, cb, strict=True))
    full = noisy.decode(ca, seed=[1, 2])
    # forward quantizes with the straight-through sum, decode embeds the codes: equal to rounding
    torch.testing.assert_close(a, full[..., : x.shape[-1]], rtol=0, atol=1e-12)
    assert not torch.equal(a, noisy(x, seed=[1, 3])[0])


def test_float32_noise_is_the_float64_noise_rounded():
    src = NoiseSource([3, 4])
    a = src.draw(1, 10, 50, dtype=torch.float64)
    b = src.draw(1, 10, 50, dtype=torch.float32)
    assert b.dtype == torch.float32 and a.shape == b.shape == (2, 1, 50)
    assert torch.equal(a.float(), b)


# ---------------------------------------------------------------- NoiseSource


def test_noise_source_basic_properties():
    src = NoiseSource(7)
    x = src.draw(0, 0, 4 * NOISE_BLOCK, dtype=torch.float64)
    assert x.shape == (1, 1, 4 * NOISE_BLOCK)
    assert abs(x.mean().item()) < 0.05 and abs(x.std().item() - 1) < 0.05
    assert torch.equal(x[0, 0, :NOISE_BLOCK], noise_block(7, 0, 0))
    # layers, seeds and blocks are decorrelated
    others = [
        NoiseSource(7).draw(1, 0, NOISE_BLOCK, dtype=torch.float64),
        NoiseSource(8).draw(0, 0, NOISE_BLOCK, dtype=torch.float64),
        x[..., NOISE_BLOCK : 2 * NOISE_BLOCK],
    ]
    for o in others:
        corr = torch.corrcoef(torch.stack([x[0, 0, :NOISE_BLOCK], o.flatten()]))[0, 1]
        assert abs(corr) < 0.1
    assert NoiseSource(7).draw(0, 5, 0, dtype=torch.float64).shape == (1, 1, 0)
    assert torch.equal(
        NoiseSource(-1).draw(0, 0, 8, torch.float64), NoiseSource(-1).draw(0, 0, 8, torch.float64)
    )
    assert NoiseSource(3, batch_size=4).draw(0, 0, 6, torch.float64).shape == (4, 1, 6)
    with pytest.raises(ValueError, match="one per item"):
        NoiseSource([1, 2], batch_size=3)


@given(
    seeds=st.lists(st.integers(-(2**63), 2**64 - 1), min_size=1, max_size=3),
    layer=st.integers(0, 5),
    start=st.integers(0, 3 * NOISE_BLOCK),
    cuts=st.lists(st.integers(0, 2 * NOISE_BLOCK + 100), max_size=8),
    total=st.integers(0, 2 * NOISE_BLOCK + 100),
    reuse=st.booleans(),
)
def test_noise_draw_over_any_split_equals_one_draw(seeds, layer, start, cuts, total, reuse):
    whole = NoiseSource(seeds).draw(layer, start, total, dtype=torch.float64)
    assert whole.shape == (len(seeds), 1, total)
    bounds = sorted({0, total, *(c for c in cuts if c <= total)})
    src = NoiseSource(seeds)
    parts = []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        if not reuse:
            src = NoiseSource(seeds)
        parts.append(src.draw(layer, start + a, b - a, dtype=torch.float64))
        # interleave an unrelated draw (another layer, far away) to disturb any cache
        src.draw(layer + 1, start + 5 * NOISE_BLOCK, 3, dtype=torch.float64)
    joined = torch.cat(parts, dim=-1) if parts else whole[..., :0]
    assert torch.equal(joined, whole)
    # each batch row is the single-seed draw
    for i, s in enumerate(seeds):
        assert torch.equal(whole[i], NoiseSource(s).draw(layer, start, total, dtype=torch.float64)[0])

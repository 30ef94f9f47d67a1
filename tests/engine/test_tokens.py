"""The tick-ordered token stream: per-level codes <-> flat tokens <-> LM ids, and TokenDecoder.

On tick t, level i has a new token iff ``t % stride_i == 0``; flattening tick by tick (coarse
level first within a tick) gives the order language models such as Orpheus emit. The oracle
used here is independent of the implementation: sort every token by (tick it arrives on,
level).
"""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from streaming_helpers import FIXED_CONFIGS, build_model, examples, random_codes, split_codes

from snac_model import random_model
from snac_stream import (
    ORPHEUS_AUDIO_OFFSET,
    StreamingDecoder,
    TokenDecoder,
    codes_to_tokens,
    frame_levels,
    from_lm_ids,
    to_lm_ids,
    tokens_to_codes,
)
from snac_stream.engine.latency import _Needs
from snac_stream.engine.tokens import tokens_in_ticks


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@st.composite
def strides_st(draw) -> list[int]:
    s0 = draw(st.sampled_from([1, 2, 3, 4, 6, 8]))
    divisors = [d for d in range(1, s0 + 1) if s0 % d == 0]
    return [s0] + draw(st.lists(st.sampled_from(divisors), max_size=4))


def oracle_flat(codes: list[torch.Tensor], strides: list[int], start: int) -> torch.Tensor:
    """Tokens sorted by (arrival tick, level): level i's k-th token here is its global token
    ``ceil(start/s_i) + k``, which arrives on tick ``(ceil(start/s_i) + k) * s_i``."""
    keyed = []
    for i, (c, s) in enumerate(zip(codes, strides, strict=True)):
        first = ceil_div(start, s)
        for k in range(c.shape[-1]):
            keyed.append(((first + k) * s, i, c[:, k]))
    keyed.sort(key=lambda e: (e[0], e[1]))
    if not keyed:
        return torch.zeros(codes[0].shape[0], 0, dtype=torch.long)
    return torch.stack([e[2] for e in keyed], dim=1)


def largest_tick(strides: list[int], start: int, t1: int) -> int:
    """The largest end tick carrying the same tokens as ``t1`` (ticks after the last token of a
    level without stride 1 are indistinguishable)."""
    t = t1
    while all(ceil_div(t + 1, s) == ceil_div(t1, s) for s in strides):
        t += 1
    return t


# ============================================================================ order and conversions
def test_frame_levels():
    assert frame_levels([4, 2, 1]) == [0, 1, 2, 2, 1, 2, 2]
    assert frame_levels([2, 1]) == [0, 1, 1]
    assert frame_levels([1]) == [0]
    assert frame_levels([8, 4, 2, 1]) == [0, 1, 2, 3, 3, 2, 3, 3, 1, 2, 3, 3, 2, 3, 3]
    assert frame_levels([4, 4, 2, 1, 1]) == [0, 1, 2, 3, 4, 3, 4, 2, 3, 4, 3, 4]
    assert len(frame_levels([8, 4, 2, 1])) == random_model("32khz").codes_per_frame == 15


def test_24khz_flat_order_is_orpheus():
    """Per coarse frame j: c0[j], c1[2j], c2[4j], c2[4j+1], c1[2j+1], c2[4j+2], c2[4j+3]."""
    frames = 3
    c0 = torch.arange(frames)[None] + 1000
    c1 = torch.arange(2 * frames)[None] + 2000
    c2 = torch.arange(4 * frames)[None] + 3000
    flat = codes_to_tokens([c0, c1, c2], [4, 2, 1])[0].tolist()
    want = []
    for j in range(frames):
        want += [1000 + j, 2000 + 2 * j, 3000 + 4 * j, 3000 + 4 * j + 1]
        want += [2000 + 2 * j + 1, 3000 + 4 * j + 2, 3000 + 4 * j + 3]
    assert flat == want


@settings(max_examples=examples(300), deadline=None)
@given(
    strides=strides_st(),
    start=st.integers(0, 20),
    n_ticks=st.integers(0, 30),
    batch=st.integers(1, 3),
    extra=st.integers(0, 4),
    seed=st.integers(0, 2**31 - 1),
)
def test_codes_tokens_round_trip(strides, start, n_ticks, batch, extra, seed):
    """codes (ticks start..start+n_ticks-1, ceil rule) -> flat -> codes, from any start tick;
    tokens of an incomplete following tick are left unused."""
    gen = torch.Generator().manual_seed(seed)
    t1 = start + n_ticks
    codes = [
        torch.randint(0, 4096, (batch, ceil_div(t1, s) - ceil_div(start, s)), generator=gen) for s in strides
    ]
    flat = codes_to_tokens(codes, strides, start_tick=start)
    n_tokens = sum(c.shape[-1] for c in codes)
    assert flat.shape == (batch, n_tokens) and flat.dtype == torch.long
    assert torch.equal(flat, oracle_flat(codes, strides, start))
    assert tokens_in_ticks(strides, start, t1) == n_tokens

    # the tokens of the next tick that has any, cut short by at least one
    t_next = largest_tick(strides, start, t1)
    next_levels = [i for i, s in enumerate(strides) if t_next % s == 0]
    partial = torch.randint(0, 4096, (batch, min(extra, len(next_levels) - 1)), generator=gen)
    back, ticks, used = tokens_to_codes(torch.cat((flat, partial), dim=1), strides, start_tick=start)
    assert used == n_tokens
    assert ticks == largest_tick(strides, start, t1) - start
    assert len(back) == len(codes)
    for a, b in zip(back, codes, strict=True):
        assert torch.equal(a, b)


def test_codes_to_tokens_rejects_partial_ticks():
    with pytest.raises(ValueError, match="whole ticks"):
        codes_to_tokens([torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, 3, dtype=torch.long)], [2, 1])
    with pytest.raises(ValueError, match=r"\[batch, n\]"):
        tokens_to_codes(torch.zeros(5, dtype=torch.long), [2, 1])


@settings(max_examples=examples(100), deadline=None)
@given(
    strides=strides_st(),
    codebook_size=st.sampled_from([2, 7, 4096]),
    n=st.integers(0, 40),
    start=st.integers(0, 50),
    offset=st.sampled_from([0, 10, ORPHEUS_AUDIO_OFFSET]),
    seed=st.integers(0, 2**31 - 1),
)
def test_lm_ids_round_trip(strides, codebook_size, n, start, offset, seed):
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, codebook_size, (2, n), generator=gen)
    ids = to_lm_ids(tokens, strides, codebook_size, offset=offset, start=start)
    per_frame = len(frame_levels(strides))
    pos = (torch.arange(n) + start) % per_frame
    assert torch.equal(ids, tokens + offset + pos * codebook_size)
    assert torch.equal(from_lm_ids(ids, strides, codebook_size, offset=offset, start=start), tokens)


def test_lm_ids_orpheus_and_wrong_position():
    assert ORPHEUS_AUDIO_OFFSET == 128266
    strides, cb = [4, 2, 1], 4096
    tokens = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12]])
    ids = to_lm_ids(tokens, strides, cb)
    assert ids.tolist() == [
        [128266 + k * 4096 + v for k, v in enumerate([5, 6, 7, 8, 9, 10, 11])] + [128266 + 12]
    ]
    assert torch.equal(from_lm_ids(ids, strides, cb), tokens)
    bad = ids.clone()
    bad[0, 3] = ids[0, 4]  # an id of frame position 4 at position 3
    with pytest.raises(ValueError, match=r"flat position 3.*frame position 3"):
        from_lm_ids(bad, strides, cb)
    with pytest.raises(ValueError, match=r"frame position 0"):
        from_lm_ids(torch.tensor([[ORPHEUS_AUDIO_OFFSET - 1]]), strides, cb)
    assert torch.equal(from_lm_ids(ids[:, 2:3], strides, cb, start=9), tokens[:, 2:3])  # 9 % 7 == 2
    with pytest.raises(ValueError, match=r"flat position 1 .*frame position 1"):
        from_lm_ids(ids[:, :3], strides, cb, start=1)  # ids of positions 0, 1, 2 at positions 1, 2, 3


# ============================================================================ TokenDecoder
@cache
def token_model(name: str):
    return build_model(FIXED_CONFIGS[name], torch.float64, seed=5)


def whole_ticks(strides: list[int], n_tokens: int) -> int:
    """Whole ticks (from 0) whose tokens are among the first ``n_tokens`` (strides include 1)."""
    t = 0
    while tokens_in_ticks(strides, 0, t + 1) <= n_tokens:
        t += 1
    return t


def check_token_stream(model, codes, pieces, seed, lm: bool = False, hop_ticks: int | None = 1):
    """Feed the flat stream in ``pieces``; after each push the released audio equals what a
    StreamingDecoder fed the completed whole ticks (down to a multiple of the hop) has
    released; at the end, offline decode."""
    strides = model.vq_strides
    assert 1 in strides
    batch = codes[0].shape[0]
    flat = codes_to_tokens(codes, strides)
    if lm:
        flat = to_lm_ids(flat, strides, model.codebook_size)
    n_ticks = codes[-1].shape[-1] * strides[-1]
    lm_offset = ORPHEUS_AUDIO_OFFSET if lm else None
    tok = TokenDecoder(model, batch, seed=seed, lm_offset=lm_offset, hop_ticks=hop_ticks)
    hop = hop_ticks or strides[0]
    ref = StreamingDecoder(model, batch, seed=seed)
    got, want, pos, ref_ticks = [], [], 0, 0
    for size in pieces:
        piece = flat[:, pos : pos + size]
        got.append(tok.push(piece[0].tolist() if batch == 1 and size % 2 else piece))
        pos += size
        t = whole_ticks(strides, pos) // hop * hop
        want.append(ref.push(split_codes(codes, strides, ref_ticks, t)))
        ref_ticks = t
        a, b = torch.cat(got, dim=-1), torch.cat(want, dim=-1)
        assert a.shape == b.shape, f"after {pos} tokens ({t} whole ticks)"
        if a.numel():
            assert (a - b).abs().max().item() <= 1e-9
    assert pos == flat.shape[1]
    audio = torch.cat([*got, tok.flush()], dim=-1)
    offline = model.decode(codes, seed=seed)
    assert audio.shape == offline.shape == (batch, 1, n_ticks * model.decoder_hop)
    if n_ticks:
        assert (audio - offline).abs().max().item() <= 1e-9


@settings(max_examples=examples(60), deadline=None)
@given(
    name=st.sampled_from(["plain", "odd_attn"]),
    batch=st.integers(1, 2),
    n_ticks=st.integers(0, 14),
    lm=st.booleans(),
    hop_ticks=st.sampled_from([1, None, 2, 5]),
    data=st.data(),
)
def test_token_decoder_random_pieces(name, batch, n_ticks, lm, hop_ticks, data):
    model = token_model(name)
    codes = random_codes(model, batch, n_ticks, seed=n_ticks)
    n_tokens = tokens_in_ticks(model.vq_strides, 0, n_ticks)
    pieces = data.draw(st.lists(st.integers(0, 2 * model.codes_per_frame + 1), max_size=12))
    pieces = [*pieces, n_tokens]  # the rest at the end (cut below)
    cut, pos = [], 0
    for p in pieces:
        cut.append(min(p, n_tokens - pos))
        pos += cut[-1]
    check_token_stream(model, codes, cut, seed=data.draw(st.integers(0, 100)), lm=lm, hop_ticks=hop_ticks)


@pytest.mark.parametrize("hop_ticks", [1, None])
def test_token_decoder_one_token_at_a_time_24khz(hop_ticks):
    model = random_model("24khz").double()
    n_ticks = 4 * 4 + 1
    codes = random_codes(model, 1, n_ticks, seed=3)
    n_tokens = tokens_in_ticks(model.vq_strides, 0, n_ticks)
    check_token_stream(model, codes, [1] * n_tokens, seed=11, lm=True, hop_ticks=hop_ticks)


@pytest.mark.parametrize("hop_ticks", [1, None, 3])
def test_token_decoder_releases_at_analytic_need(hop_ticks):
    """Audio for tick t comes out as soon as tick t's tokens and the lookahead are in (at the
    first step that reaches them): after each token, the samples released are exactly those
    whose analytic tick need is met by the last multiple of the hop (default: a coarse frame)."""
    model = token_model("plain")
    strides = model.vq_strides
    hop = hop_ticks or strides[0]
    n_ticks = 40
    codes = random_codes(model, 1, n_ticks, seed=1)
    flat = codes_to_tokens(codes, strides)
    tick_need = _Needs(model).decoder_ticks(np.arange(0, (n_ticks + 1) * model.decoder_hop))
    tok = TokenDecoder(model, 1, seed=0, hop_ticks=hop_ticks)
    released, steps = 0, set()
    for k in range(flat.shape[1]):
        released += tok.push(flat[:, k : k + 1]).shape[-1]
        steps.add(tok.decoder.ticks)
        ticks = whole_ticks(strides, k + 1) // hop * hop
        assert tok.decoder.ticks == ticks
        assert released == int((tick_need <= ticks).sum()), f"after {k + 1} tokens ({ticks} ticks)"
    assert released > 0
    assert steps == set(range(0, n_ticks + 1, hop))  # the decoder stepped once per hop


@pytest.mark.parametrize("hop_ticks", [0, -1, 1.5, True])
def test_token_decoder_rejects_bad_hop(hop_ticks):
    with pytest.raises(ValueError, match="hop_ticks must be an int >= 1"):
        TokenDecoder(token_model("plain"), hop_ticks=hop_ticks)


def test_token_decoder_errors_keep_state():
    model = token_model("plain")
    strides, cb = model.vq_strides, model.codebook_size
    codes = random_codes(model, 1, 9, seed=2)
    ids = to_lm_ids(codes_to_tokens(codes, strides), strides, cb)
    tok = TokenDecoder(model, 1, seed=4, lm_offset=ORPHEUS_AUDIO_OFFSET)
    parts = [tok.push(ids[:, :5])]
    with pytest.raises(ValueError, match="frame position"):
        tok.push(ids[:, 4:6])  # shifted by one position: every id is in the wrong range
    with pytest.raises(TypeError, match="integers"):
        tok.push(ids[:, 5:7].double())
    with pytest.raises(ValueError, match=r"batch_size=1"):
        tok.push(ids[:, 5:7].repeat(2, 1))
    parts.append(tok.push(ids[0, 5:8].tolist()))
    with pytest.raises(ValueError, match="inside a tick"):
        tok.flush()  # 8 tokens: ticks 0 and 1 (4 + 2 tokens) and 2 of tick 2's 3; cannot end here
    parts.append(tok.push(ids[:, 8:]))
    parts.append(tok.flush())
    audio = torch.cat(parts, dim=-1)
    offline = model.decode(codes, seed=4)
    assert audio.shape == offline.shape
    assert (audio - offline).abs().max().item() <= 1e-9


@pytest.mark.parametrize("bad", [32, 99, -1])
def test_token_decoder_rejects_out_of_range_token_at_once(bad):
    """A raw token outside [0, codebook_size) is rejected by the push that delivers it, even
    when its tick is not complete yet, and the stream goes on unharmed."""
    model = token_model("plain")
    strides, cb = model.vq_strides, model.codebook_size
    assert cb == 32
    codes = random_codes(model, 1, 9, seed=2)
    flat = codes_to_tokens(codes, strides)
    tok = TokenDecoder(model, 1, seed=4)
    parts = [tok.push(flat[:, :2])]
    with pytest.raises(ValueError, match=rf"{bad}.*outside \[0, {cb}\)"):
        tok.push([bad])  # incomplete tick 0: 3 of its 4 tokens
    parts.append(tok.push(flat[:, 2:]))
    parts.append(tok.flush())
    audio = torch.cat(parts, dim=-1)
    offline = model.decode(codes, seed=4)
    assert audio.shape == offline.shape
    assert (audio - offline).abs().max().item() <= 1e-9

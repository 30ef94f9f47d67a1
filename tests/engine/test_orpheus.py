"""The Orpheus drop-in: LM token streams (text pieces, ids) -> int16 PCM, exact, strict or lenient.

The oracle is the offline decode of the whole token stream, ``model.decode(codes, seed=seed)``,
converted to int16 by the rule ``round(clip(x, -1, 32767/32768) * 32768)`` (half to even).
Models are float64 (streaming agrees with offline to ~1e-12 there), so the int16 samples must
be identical; :func:`assert_pcm` allows a difference only where the offline value sits on a
rounding tie (within 1e-9 LSB), where float rounding may decide either way.
"""

from __future__ import annotations

import asyncio
import re
from functools import cache

import numpy as np
import pytest
import torch
from conftest import run_async
from hypothesis import given, settings
from hypothesis import strategies as st
from streaming_helpers import FIXED_CONFIGS, build_model, examples, random_codes

from snac_model import random_model
from snac_stream import orpheus
from snac_stream.audio.pcm import to_s16le
from snac_stream.engine.token_pool import TokenPool
from snac_stream.engine.tokens import ORPHEUS_AUDIO_OFFSET, codes_to_tokens, frame_levels, to_lm_ids
from snac_stream.orpheus import (
    CUSTOM_TOKEN_BASE,
    OrpheusStats,
    OrpheusTokenError,
    resolve_model,
    tokens_decoder,
    tokens_decoder_sync,
)

SPECIAL_TEXT = ["<custom_token_1>", "<custom_token_2>", "<custom_token_4>", "<custom_token_9>"]
SPECIAL_IDS = [128257, 128258, 128262, 128000, 128009, 156939, 200000]  # specials, eot, past the audio
STRAY_TEXT = ["<|eot_id|>", "hello", " ", "\n", "<", "<custom", "a<b", "<custom_token_x>"]


@cache
def model_of(name: str):
    return build_model(FIXED_CONFIGS[name], torch.float64, seed=3)


@cache
def pool_of(name: str) -> TokenPool:
    return TokenPool(model_of(name), workers=1, gather_ms=1.0)


def lm_ids(model, codes) -> list[int]:
    flat = codes_to_tokens(codes, model.vq_strides)
    return to_lm_ids(flat, model.vq_strides, model.codebook_size)[0].tolist()


def text(lm_id: int) -> str:
    return f"<custom_token_{lm_id - CUSTOM_TOKEN_BASE}>"


def frames_of(model, ids: list[int]) -> list[list[int]]:
    per = len(frame_levels(model.vq_strides))
    return [ids[i : i + per] for i in range(0, len(ids), per)]


def codes_of(model, frames: list[list[int]]) -> list[torch.Tensor]:
    """Per-level codes of whole frames of LM ids (the inverse of :func:`lm_ids`)."""
    levels = frame_levels(model.vq_strides)
    per_level = [[] for _ in model.vq_strides]
    for frame in frames:
        for k, lm_id in enumerate(frame):
            per_level[levels[k]].append((lm_id - ORPHEUS_AUDIO_OFFSET) % model.codebook_size)
    return [torch.tensor([c], dtype=torch.long).reshape(1, -1) for c in per_level]


def decode(model, frames: list[list[int]], seed: int = 0) -> np.ndarray:
    if not frames:
        return np.zeros(0)
    return model.decode(codes_of(model, frames), seed=seed).reshape(-1).numpy()


def pcm(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<i2").astype(np.int64)


def assert_pcm(got: bytes, audio: np.ndarray) -> None:
    """``got`` (int16 bytes) is ``audio`` converted by the int16 rule, sample for sample."""
    want = pcm(to_s16le(audio))
    got_ = pcm(got)
    assert got_.shape == want.shape, f"{got_.size} samples, the offline decode has {want.size}"
    differ = np.flatnonzero(got_ != want)
    scaled = np.clip(audio, -1, 32767 / 32768) * 32768
    ties = np.abs(np.abs(scaled - np.floor(scaled)) - 0.5) < 1e-9
    assert np.all(np.abs(got_ - want)[differ] <= 1) and np.all(ties[differ]), f"samples {differ[:10]} differ"


def collect_sync(pieces, model, **kw) -> bytes:
    return b"".join(tokens_decoder_sync(pieces, model, **kw))


async def collect_async(pieces, model, **kw) -> bytes:
    async def gen():
        for p in pieces:
            await asyncio.sleep(0)
            yield p

    return b"".join([chunk async for chunk in tokens_decoder(gen(), model, **kw)])


# ============================================================================ the int16 rule
def test_int16_rule():
    x = np.array([0.0, 0.5, 1.5, 2.5, -0.5, -1.5, 32767.5, 40000.0, -32768.0, -40000.0]) / 32768
    assert pcm(to_s16le(x)).tolist() == [0, 0, 2, 2, 0, -2, 32767, 32767, -32768, -32768]  # half to even
    assert to_s16le(np.array([1.0, -1.0])) == b"\xff\x7f\x00\x80"  # little-endian
    assert to_s16le(np.array([7, -7], dtype=np.int32)) == np.array([7, -7], dtype="<i2").tobytes()


# ============================================================================ pieces, random splits
@st.composite
def token_stream(draw, model):
    """(pieces, codes, expected stats): the stream's audio tokens as text or int ids, with
    special tokens and stray text between them, cut into pieces at random characters."""
    n_frames = draw(st.integers(0, 6))
    codes = random_codes(model, 1, n_frames * model.vq_strides[0], seed=draw(st.integers(0, 999)))
    for c in codes:  # a code of 0 is a code (Orpheus drops it)
        if c.numel():
            c[0, draw(st.integers(0, c.shape[1] - 1))] = 0
    items, specials, stray = [], 0, 0
    for lm_id in lm_ids(model, codes):
        for _ in range(draw(st.integers(0, 1))):
            kind = draw(st.sampled_from(["special_text", "special_id", "stray"]))
            if kind == "special_text":
                items.append(draw(st.sampled_from(SPECIAL_TEXT)))
                specials += 1
            elif kind == "special_id":
                items.append(draw(st.sampled_from(SPECIAL_IDS)))
                specials += 1
            else:
                s = draw(st.sampled_from(STRAY_TEXT))
                items.append(s)
                stray += sum(not ch.isspace() for ch in s)
        items.append(lm_id if draw(st.integers(0, 3)) == 0 else text(lm_id))
    pieces, buffer = [], ""
    for item in [*items, None]:
        if isinstance(item, str):
            buffer += item
            continue
        if buffer:  # cut the run of text at random characters: several tokens per piece, split tokens
            cuts = sorted(draw(st.lists(st.integers(0, len(buffer)), max_size=max(1, len(buffer) // 12))))
            bounds = [0, *cuts, len(buffer)]
            pieces += [buffer[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
            buffer = ""
        if item is not None:
            pieces.append(item if draw(st.booleans()) else [item])
    return pieces, codes, dict(skipped_tokens=specials, text_chars=stray, frames=n_frames)


@pytest.mark.parametrize("name", ["plain", "odd_attn"])
@settings(max_examples=examples(25), deadline=None)
@given(data=st.data())
def test_random_pieces_sync_and_async_equal_offline(name, data):
    model = model_of(name)
    pieces, codes, want_stats = data.draw(token_stream(model))
    seed = data.draw(st.integers(0, 50))
    hop = data.draw(st.sampled_from([None, 1, 2, 2 * model.vq_strides[0]]))
    offline = model.decode(codes, seed=seed).reshape(-1).numpy() if codes[0].numel() else np.zeros(0)
    for run in ("sync", "async"):
        stats = OrpheusStats()
        kw = dict(pool=pool_of(name), seed=seed, hop_ticks=hop, stats=stats)
        got = (
            collect_sync(pieces, None, **kw)
            if run == "sync"
            else asyncio.run(collect_async(pieces, None, **kw))
        )
        assert_pcm(got, offline)
        for key, value in want_stats.items():
            assert getattr(stats, key) == value, (run, key)
        assert stats.samples == offline.size and stats.frames_concealed == stats.tokens_dropped == 0
    assert pool_of(name).stats.sessions_open == 0


@pytest.mark.parametrize("hop_ticks, first_audio", [(None, 21), (1, 18)])
def test_24khz_orpheus_stream_exact_from_first_to_last_sample(hop_ticks, first_audio):
    """The published 24 kHz architecture, an Orpheus-style text stream one token per piece
    (start/end of speech around it, zeros among the codes): every sample of the offline decode
    comes out, the first after 21 tokens (one-frame steps) or 18 (per tick)."""
    model = random_model("24khz").double()
    n_frames = 6
    codes = random_codes(model, 1, 4 * n_frames, seed=7)
    codes[0][0, 2] = codes[1][0, 0] = codes[2][0, 5] = 0
    pieces = ["<custom_token_3>", "<custom_token_1>"] + [text(i) for i in lm_ids(model, codes)]
    pieces += ["<custom_token_2>", "<|eot_id|>"]
    stats = OrpheusStats()
    pool = TokenPool(model, workers=1)
    got = collect_sync(pieces, None, pool=pool, seed=5, hop_ticks=hop_ticks, stats=stats)
    offline = model.decode(codes, seed=5).reshape(-1).numpy()
    assert offline.size == n_frames * 2048
    assert_pcm(got, offline)
    assert stats.first_audio_tokens == first_audio
    assert (stats.skipped_tokens, stats.text_chars, stats.audio_tokens) == (
        3,
        len("<|eot_id|>"),
        7 * n_frames,
    )


def test_float32_within_one_lsb():
    model = build_model(FIXED_CONFIGS["plain"], torch.float32, seed=3)
    codes = random_codes(model, 1, 4 * 8, seed=1)
    got = pcm(collect_sync(lm_ids(model, codes), model, pool=None))
    want = pcm(to_s16le(model.decode(codes, seed=0).reshape(-1).numpy()))
    assert got.shape == want.shape and np.abs(got - want).max() <= 1


# ============================================================================ malformed streams
def corrupt(model, ids: list[int], how: str) -> tuple[list[int], int]:
    """A corrupted copy of ``ids``; the index of the one broken frame."""
    per = len(frame_levels(model.vq_strides))
    j = 2
    a = j * per
    cb = model.codebook_size
    if how == "wrong_position":  # position 3 replaced by a token of position 1 (a substitution)
        return ids[: a + 3] + [ids[a + 3] - 2 * cb] + ids[a + 4 :], j
    if how == "dropped":
        return ids[: a + 4] + ids[a + 5 :], j
    if how == "repeated":
        return ids[: a + 4] + [ids[a + 3]] + ids[a + 4 :], j
    if how == "start_lost":
        return ids[:a] + ids[a + 1 :], j
    if how == "cut_short":  # the frame stops after 5 tokens, the next frame starts
        return ids[: a + 5] + ids[a + per :], j
    if how == "cut_at_end":
        return ids[:-3], len(ids) // per - 1
    raise AssertionError(how)


HOW = ["wrong_position", "dropped", "repeated", "start_lost", "cut_short", "cut_at_end"]


@pytest.mark.parametrize("how", HOW)
def test_lenient_conceals_a_broken_frame(how):
    """The broken frame is dropped and concealed as the receiver conceals a lost packet: the
    offline decode of the frames before it, a frame of silence, then the offline decode of the
    frames after it (a fresh decoder); the stream resynchronises at the next frame."""
    model = model_of("plain")
    n_frames = 5
    codes = random_codes(model, 1, 4 * n_frames, seed=4)
    ids = lm_ids(model, codes)
    bad, j = corrupt(model, ids, how)
    frames = frames_of(model, ids)
    frame_samples = model.vq_strides[0] * model.decoder_hop
    want = np.concatenate(
        [decode(model, frames[:j], 3), np.zeros(frame_samples), decode(model, frames[j + 1 :], 3)]
    )
    stats = OrpheusStats()
    got = collect_sync([text(i) for i in bad], model, pool=None, lenient=True, seed=3, stats=stats)
    assert_pcm(got, want)
    assert stats.frames_concealed == 1 and stats.frames == n_frames - 1
    assert stats.tokens_dropped == stats.audio_tokens - 11 * (n_frames - 1)
    got_async = asyncio.run(collect_async(bad, None, pool=pool_of("plain"), lenient=True, seed=3))
    assert got_async == got


@pytest.mark.parametrize("how", HOW)
def test_strict_names_the_bad_token_and_its_position(how):
    model = model_of("plain")
    ids = lm_ids(model, random_codes(model, 1, 4 * 5, seed=4))
    bad, j = corrupt(model, ids, how)
    chunks = []
    with pytest.raises(OrpheusTokenError) as err:
        for chunk in tokens_decoder_sync([text(i) for i in bad], pool=pool_of("plain")):
            chunks.append(chunk)
    message = str(err.value)
    if how == "cut_at_end":
        assert f"ended inside coarse frame {j}: 8 of its 11 audio tokens" in message
    else:
        assert re.search(
            rf"audio token <custom_token_\d+> .* is position \d+ .* frame {j} expects position", message
        )
    assert "lenient=True" in message
    assert pool_of("plain").stats.sessions_open == 0  # the failed request released its stream


# ============================================================================ models, bad input
def test_bad_pieces_and_arguments_are_clear_errors():
    model = model_of("plain")
    for piece in (1.5, b"<custom_token_10>", True, [1, 2.0], None):
        with pytest.raises(TypeError, match="a piece must be text"):
            collect_sync([piece], model)
    with pytest.raises(TypeError, match="async iterable"):
        asyncio.run(tokens_decoder([1, 2], model).__anext__())
    with pytest.raises(ValueError, match="either model= or pool="):
        collect_sync([], model_of("odd_attn"), pool=pool_of("plain"))
    with pytest.raises(ValueError, match="move it first"):
        collect_sync([], model, device="meta")
    with pytest.raises(TypeError, match="model must be"):
        collect_sync([], 42)


def test_model_none_loads_the_default_loudly_when_offline(no_network, capsys, monkeypatch):
    """``model=None``: the hub checkpoint, or offline the seeded random 24 kHz model, announced
    on stderr; loaded once (the second request reuses it)."""
    monkeypatch.setattr(orpheus, "_models", {})  # nothing loaded before this test
    monkeypatch.setattr(orpheus, "_pools", {})
    model = resolve_model(None)
    assert "Falling back to 'random:24khz'" in capsys.readouterr().err
    assert resolve_model(None) is model and model.sample_rate == 24000
    codes = random_codes(model, 1, 4 * 3, seed=2)
    got = collect_sync([text(i) for i in lm_ids(model, codes)], None, hop_ticks=4)
    want = pcm(to_s16le(model.decode(codes, seed=0).reshape(-1).numpy()))
    assert np.abs(pcm(got) - want).max() <= 1  # float32 model


# ============================================================================ many requests
@run_async
async def test_concurrent_requests_share_batched_steps_and_stay_exact():
    model = model_of("plain")
    pool = TokenPool(model, workers=1, gather_ms=20)
    streams = [random_codes(model, 1, 4 * (4 + k), seed=10 + k) for k in range(4)]

    async def request(k: int) -> bytes:
        await asyncio.sleep(0.01 * k)  # staggered starts, different lengths

        async def gen():
            for lm_id in lm_ids(model, streams[k]):
                await asyncio.sleep(0)
                yield text(lm_id)

        return b"".join([c async for c in tokens_decoder(gen(), pool=pool, seed=k)])

    outputs = await asyncio.gather(*(request(k) for k in range(4)))
    for k, got in enumerate(outputs):
        assert_pcm(got, model.decode(streams[k], seed=k).reshape(-1).numpy())
    stats = pool.stats
    assert stats.sessions_open == 0 and stats.sessions_opened == 4
    assert stats.forwards < stats.stream_steps  # several requests shared a forward


@run_async
async def test_a_reader_that_stops_reading_stops_the_pulling():
    """Back-pressure: a request whose consumer stops reading stops pulling tokens from its LM
    (memory bounded), while another request goes on; closing it releases its stream."""
    model = model_of("plain")
    pool = TokenPool(model, workers=1)
    pulled = 0

    async def endless():
        nonlocal pulled
        codes = random_codes(model, 1, 4 * 200, seed=1)
        for lm_id in lm_ids(model, codes):
            pulled += 1
            yield lm_id

    stats = OrpheusStats()
    stalled = tokens_decoder(endless(), pool=pool, seed=0, stats=stats)
    first = await stalled.__anext__()
    assert first and pulled == stats.first_audio_tokens  # the tokens the first audio needed, no more
    held = pulled
    other = random_codes(model, 1, 4 * 6, seed=2)
    got = b"".join([c async for c in tokens_decoder(_aiter(lm_ids(model, other)), pool=pool, seed=1)])
    assert_pcm(got, model.decode(other, seed=1).reshape(-1).numpy())
    await asyncio.sleep(0.05)
    assert pulled == held  # nothing more was pulled while nobody read
    assert pool.stats.sessions_open == 1
    await stalled.aclose()
    assert pool.stats.sessions_open == 0


@run_async
async def test_a_cancelled_request_does_not_harm_the_others():
    model = model_of("plain")
    pool = TokenPool(model, workers=1, gather_ms=5)
    codes = [random_codes(model, 1, 4 * 30, seed=k) for k in range(3)]

    async def request(k: int) -> bytes:
        return b"".join([c async for c in tokens_decoder(_aiter(lm_ids(model, codes[k])), pool=pool, seed=k)])

    tasks = [asyncio.create_task(request(k)) for k in range(3)]
    await asyncio.sleep(0.05)
    tasks[1].cancel()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(done[1], asyncio.CancelledError)
    for k in (0, 2):
        assert_pcm(done[k], model.decode(codes[k], seed=k).reshape(-1).numpy())
    for _ in range(100):  # the cancelled request's stream is released once its step is done
        if pool.stats.sessions_open == 0:
            break
        await asyncio.sleep(0.01)
    assert pool.stats.sessions_open == 0
    assert_pcm(await request(0), model.decode(codes[0], seed=0).reshape(-1).numpy())  # the pool still works


async def _aiter(items):
    for item in items:
        await asyncio.sleep(0)
        yield item

"""Drop-in for ``orpheus_tts.decoder``: LLM text-to-speech token streams to PCM, exact, batched.

A server built on Orpheus TTS (or a fork) swaps one import::

    from snac_stream.orpheus import tokens_decoder, tokens_decoder_sync

    async for pcm in tokens_decoder(token_gen):      # async iterable of text pieces or LM ids
        ...                                           # bytes: int16 little-endian, mono, model rate
    for pcm in tokens_decoder_sync(token_iter): ...   # the same for a plain iterable

What comes in: text pieces holding zero, one or several ``<custom_token_N>`` (LM id
``128256 + N``; other text is ignored and counted, a token split across pieces is joined), or
int LM ids (or lists of them). Ids outside the audio range (start/end of speech, other special
tokens) are skipped. Audio id ``128266 + position * 4096 + code`` is ``code`` at ``position``
of a coarse frame (0..6 at 24 kHz); a code of 0 is a code.

What goes out: the exact offline decode of the whole stream, ``model.decode(codes, seed=seed)``,
nothing lost at either end (the end of the stream flushes the tail), converted by
:func:`snac_stream.audio.pcm.to_s16le`: ``round(clip(x, -1, 32767/32768) * 32768)``, half to even.

A malformed audio token (the wrong position for where it stands in its frame, or a frame cut
short by the end of the stream) raises :class:`OrpheusTokenError` naming the token and its
position. ``lenient=True`` drops the broken frame instead, conceals it as the network receiver
conceals a lost packet (:func:`snac_stream.engine.conceal.conceal_gap`: the segment before is
flushed, a frame of silence, the decoder restarts), counts it in :class:`OrpheusStats`, and
resynchronises at the next frame start (position 0). Lenient mode holds each frame until it is
whole, so there steps come per frame at the finest.

Each request is a session of a :class:`~snac_stream.engine.token_pool.TokenPool`: concurrent
requests share batched decoder steps on worker threads, never on the event loop. Without
``pool=`` the model's default pool (one per model, kept for the process) is used. Steps come
every ``hop_ticks`` ticks (default one coarse frame: first audio after 21 tokens at 24 kHz,
``hop_ticks=1``: after 18; the Orpheus sliding window: after 28).
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import AsyncIterable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from snac_model import DEFAULT_MODEL, SNAC, load_model
from snac_stream.audio.pcm import to_s16le
from snac_stream.engine.conceal import conceal_gap
from snac_stream.engine.token_pool import TokenPool, TokenSession
from snac_stream.engine.tokens import ORPHEUS_AUDIO_OFFSET, frame_levels

CUSTOM_TOKEN_BASE = 128256  #: ``<custom_token_N>`` is LM id ``CUSTOM_TOKEN_BASE + N`` (Orpheus / Llama 3)
_TOKEN = re.compile(r"<custom_token_(\d+)>")
_PREFIX = "<custom_token_"
_PARTIAL = re.compile(r"<custom_token_\d{0,12}")  # a token cut at the end of a piece

Piece = str | int | Sequence[int]


class OrpheusTokenError(ValueError):
    """A malformed audio token or a frame cut short (strict mode)."""


@dataclass
class OrpheusStats:
    """What one request's stream held and what became of it (pass one in to read it)."""

    pieces: int = 0
    tokens: int = 0  #: tokens seen (``<custom_token_N>`` in text, and ids)
    audio_tokens: int = 0  #: tokens in the audio range
    skipped_tokens: int = 0  #: non-audio tokens (start/end of speech, other special ids), skipped
    text_chars: int = 0  #: characters of other text (not whitespace), ignored
    frames: int = 0  #: whole coarse frames received
    frames_concealed: int = 0  #: broken frames dropped and concealed with silence (lenient)
    tokens_dropped: int = 0  #: audio tokens of the broken frames (lenient)
    samples: int = 0  #: samples yielded
    first_audio_tokens: int | None = None  #: audio tokens received when the first audio came out


def token_name(lm_id: int) -> str:
    return f"<custom_token_{lm_id - CUSTOM_TOKEN_BASE}>" if lm_id >= CUSTOM_TOKEN_BASE else f"LM id {lm_id}"


class PieceParser:
    """Text pieces / ids -> LM ids; counts pieces, stray text."""

    def __init__(self, stats: OrpheusStats):
        self.stats, self.carry = stats, ""

    def ids(self, piece: Piece) -> list[int]:
        self.stats.pieces += 1
        if isinstance(piece, str):
            return self._text(piece)
        if isinstance(piece, int | np.integer) and not isinstance(piece, bool):
            return [int(piece)]
        items = piece.tolist() if isinstance(piece, np.ndarray | torch.Tensor) else piece
        if isinstance(items, Sequence) and not isinstance(items, bytes | str):
            if all(isinstance(i, int | np.integer) and not isinstance(i, bool) for i in items):
                return [int(i) for i in items]
        got = f"{type(piece).__name__} {piece!r:.60}"
        raise TypeError(f"a piece must be text (str) or LM ids (an int or a list of ints), got {got}")

    def _text(self, piece: str) -> list[int]:
        text, self.carry = self.carry + piece, ""
        ids, pos = [], 0
        for m in _TOKEN.finditer(text):
            self._stray(text[pos : m.start()])
            ids.append(CUSTOM_TOKEN_BASE + int(m.group(1)))
            pos = m.end()
        rest = text[pos:]
        cut = rest.rfind("<")
        if cut >= 0 and (_PREFIX.startswith(rest[cut:]) or _PARTIAL.fullmatch(rest[cut:])):
            rest, self.carry = rest[:cut], rest[cut:]
        self._stray(rest)
        return ids

    def _stray(self, text: str) -> None:
        self.stats.text_chars += sum(not c.isspace() for c in text)

    def finish(self) -> None:
        self._stray(self.carry)
        self.carry = ""


class FrameAssembler:
    """LM ids -> operations on the decoder session: ``("push", codes)``, ``("conceal", n_frames)``,
    ``("end", None)``. Checks every audio token's frame position. Strict mode raises on the first
    bad one and passes codes on as they come; lenient mode holds each frame until it is whole:

    - a token of the wrong position breaks its frame, which still takes its full count of tokens
      (a substituted token) and is then dropped and concealed;
    - a position-0 token inside a frame cuts that frame short: it is dropped and concealed, and
      the token starts the next frame;
    - after a broken frame, tokens up to the next position 0 are dropped (resynchronising after
      a lost or repeated token).
    """

    def __init__(self, model: SNAC, audio_offset: int, lenient: bool, stats: OrpheusStats):
        self.per_frame = len(frame_levels(model.vq_strides))
        self.codebook_size = int(model.codebook_size)
        self.offset, self.lenient, self.stats = audio_offset, lenient, stats
        self.frame: list[int] = []  # codes of the frame being received
        self.broken = False  # the frame being received holds a token of the wrong position
        self.skipping = False  # dropping tokens up to the next frame start

    @property
    def frame_index(self) -> int:
        """Index of the frame being received on the output timeline."""
        return self.stats.frames + self.stats.frames_concealed

    def feed(self, ids: Iterable[int]) -> list[tuple[str, object]]:
        ops: list[tuple[str, object]] = []
        codes: list[int] = []  # codes to push, in order
        for lm_id in ids:
            self.stats.tokens += 1
            rel = lm_id - self.offset
            if not 0 <= rel < self.per_frame * self.codebook_size:
                self.stats.skipped_tokens += 1
                continue
            position, code = divmod(rel, self.codebook_size)
            self.stats.audio_tokens += 1
            if self.skipping and position != 0:
                self.stats.tokens_dropped += 1
                continue
            self.skipping = False
            if position != len(self.frame):
                if not self.lenient:
                    raise self._error(lm_id, position)
                if position == 0:  # the frame was cut short
                    self._conceal(ops, codes)
                else:
                    self.broken = True
            self.frame.append(code)
            if not self.lenient:
                codes.append(code)
            if len(self.frame) == self.per_frame:
                if self.broken:
                    self._conceal(ops, codes)
                    self.skipping = True
                    continue
                if self.lenient:
                    codes.extend(self.frame)
                self.frame = []
                self.stats.frames += 1
        if codes:
            ops.append(("push", codes))
        return ops

    def _error(self, lm_id: int, position: int) -> OrpheusTokenError:
        return OrpheusTokenError(
            f"audio token {token_name(lm_id)} (LM id {lm_id}, audio token #{self.stats.audio_tokens - 1} "
            f"of the stream) is position {position} of a coarse frame, but frame {self.frame_index} "
            f"expects position {len(self.frame)}: a token was lost, repeated or reordered. Pass "
            "lenient=True to drop and conceal broken frames."
        )

    def _conceal(self, ops: list, codes: list[int]) -> None:
        """Drop the frame being received: push what came before it, then conceal one frame."""
        if codes:
            ops.append(("push", list(codes)))
            codes.clear()
        ops.append(("conceal", 1))
        self.stats.frames_concealed += 1
        self.stats.tokens_dropped += len(self.frame)
        self.frame, self.broken = [], False

    def finish(self) -> list[tuple[str, object]]:
        ops: list[tuple[str, object]] = []
        if self.frame:
            if not self.lenient:
                raise OrpheusTokenError(
                    f"the token stream ended inside coarse frame {self.frame_index}: {len(self.frame)} of "
                    f"its {self.per_frame} audio tokens arrived (a frame cut short). Pass lenient=True to "
                    "drop and conceal it."
                )
            self._conceal(ops, [])
        ops.append(("end", None))
        return ops


class OrpheusStream:
    """One request: pieces in, operations on its pool session, int16 bytes out."""

    def __init__(self, session: TokenSession, model: SNAC, lenient: bool, audio_offset: int, stats):
        self.session, self.stats = session, stats if stats is not None else OrpheusStats()
        self.parser = PieceParser(self.stats)
        self.frames = FrameAssembler(model, audio_offset, lenient, self.stats)
        self.frame_samples = session.pool.frame_samples

    def feed(self, piece: Piece) -> list[tuple[str, object]]:
        return self.frames.feed(self.parser.ids(piece))

    def finish(self) -> list[tuple[str, object]]:
        self.parser.finish()
        return self.frames.finish()

    def run(self, op: tuple[str, object]) -> bytes:
        """Blocking: one operation on the session -> PCM bytes."""
        kind, arg = op
        if kind == "push":
            return self.pcm(self.session.push(arg))
        if kind == "conceal":
            return self.pcm(conceal_gap(self.session.restart(), arg, self.frame_samples))
        return self.pcm(self.session.flush())

    async def arun(self, op: tuple[str, object]) -> bytes:
        kind, arg = op
        if kind == "push":
            return self.pcm(await self.session.apush(arg))
        if kind == "conceal":
            return self.pcm(conceal_gap(await self.session.arestart(), arg, self.frame_samples))
        return self.pcm(await self.session.aflush())

    def pcm(self, audio: np.ndarray) -> bytes:
        if audio.size and self.stats.first_audio_tokens is None:
            self.stats.first_audio_tokens = self.stats.audio_tokens
        self.stats.samples += audio.size
        return to_s16le(audio)

    def close(self) -> None:
        self.session.close()


# ------------------------------------------------------------------------------------ models, pools

_lock = threading.Lock()
_models: dict[tuple[str, str], SNAC] = {}
_pools: dict[int, tuple[SNAC, TokenPool]] = {}


def resolve_model(model: SNAC | str | None = None, device: str | torch.device | None = None) -> SNAC:
    """``None``: the project's default model (the hub checkpoint, or offline the seeded random
    model of its architecture, announced on stderr); a spec (see :func:`snac_model.load_model`);
    or a loaded :class:`~snac_model.SNAC` (``device``, if given, must be where it is). Specs are
    loaded once per (spec, device)."""
    if isinstance(model, SNAC):
        want = None if device is None else torch.device(device)
        if want is not None and (want.type, want.index or 0) != (model.device.type, model.device.index or 0):
            raise ValueError(f"the model is on {model.device}, device={device!r} was asked: move it first")
        return model
    if model is not None and not isinstance(model, str):
        raise TypeError(f"model must be None, a model spec (str) or a SNAC, got {type(model).__name__}")
    spec, where = model or DEFAULT_MODEL, str(torch.device(device or "cpu"))
    with _lock:
        if (spec, where) not in _models:
            loaded = load_model(spec, fallback_to_random=model is None, device=where)
            _models[spec, where] = loaded.fold_weight_norm().eval()  # bit-exact, faster per step
        return _models[spec, where]


def default_pool(model: SNAC) -> TokenPool:
    """The pool that requests without ``pool=`` share (one per model, created at first use)."""
    with _lock:
        if id(model) not in _pools or _pools[id(model)][0] is not model:
            _pools[id(model)] = (model, TokenPool(model))
        return _pools[id(model)][1]


def _open(model, device, pool, lenient, hop_ticks, seed, stats, audio_offset) -> OrpheusStream:
    if pool is not None:
        if model is not None and model is not pool.model:
            raise ValueError("pass either model= or pool= (the pool's model is used), not another model")
        model = pool.model
    else:
        model = resolve_model(model, device)
        pool = default_pool(model)
    return OrpheusStream(pool.open(seed, hop_ticks=hop_ticks), model, lenient, audio_offset, stats)


async def tokens_decoder(
    token_gen: AsyncIterable[Piece],
    model: SNAC | str | None = None,
    *,
    device: str | torch.device | None = None,
    pool: TokenPool | None = None,
    lenient: bool = False,
    hop_ticks: int | None = None,
    seed: int | None = 0,
    stats: OrpheusStats | None = None,
    audio_offset: int = ORPHEUS_AUDIO_OFFSET,
):
    """Async generator: PCM ``bytes`` (int16 LE mono at ``model.sample_rate``) as the audio of
    ``token_gen`` becomes final; see the module doc. ``seed`` keys the decoder noise as
    ``model.decode(codes, seed=seed)``; ``stats`` is filled in as the stream goes."""
    if not hasattr(token_gen, "__aiter__"):
        raise TypeError("tokens_decoder takes an async iterable; use tokens_decoder_sync for a plain one")
    if pool is None and not isinstance(model, SNAC):  # loading weights blocks: not on the event loop
        model = await asyncio.to_thread(resolve_model, model, device)
    stream = _open(model, device, pool, lenient, hop_ticks, seed, stats, audio_offset)
    try:
        async for piece in token_gen:
            for op in stream.feed(piece):
                if pcm := await stream.arun(op):
                    yield pcm
        for op in stream.finish():
            if pcm := await stream.arun(op):
                yield pcm
    finally:
        stream.close()


def tokens_decoder_sync(
    token_iter: Iterable[Piece],
    model: SNAC | str | None = None,
    *,
    device: str | torch.device | None = None,
    pool: TokenPool | None = None,
    lenient: bool = False,
    hop_ticks: int | None = None,
    seed: int | None = 0,
    stats: OrpheusStats | None = None,
    audio_offset: int = ORPHEUS_AUDIO_OFFSET,
) -> Iterator[bytes]:
    """Generator: as :func:`tokens_decoder`, for a plain iterable (blocks while a step runs)."""
    stream = _open(model, device, pool, lenient, hop_ticks, seed, stats, audio_offset)
    try:
        for piece in token_iter:
            for op in stream.feed(piece):
                if pcm := stream.run(op):
                    yield pcm
        for op in stream.finish():
            if pcm := stream.run(op):
                yield pcm
    finally:
        stream.close()


__all__ = [
    "CUSTOM_TOKEN_BASE",
    "OrpheusStats",
    "OrpheusTokenError",
    "tokens_decoder",
    "tokens_decoder_sync",
    "resolve_model",
    "default_pool",
]

"""One file at a time, in bounded memory: audio file -> codes, code file -> audio.

``iter_codes`` reads a file block by block (:class:`~snac_stream.audio.files.AudioReader`) through a
:class:`~snac_stream.StreamingEncoder` (one batch item per stream); the codes equal
``model.encode`` of the whole file. ``iter_audio`` reads a ``.snac``/``.npz`` block by block through
a :class:`~snac_stream.StreamingDecoder`; the audio equals ``model.decode(codes, seed=seed)``
trimmed to the encoded length, as offline ``forward`` trims it.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from snac_stream.audio.files import AudioReader
from snac_stream.engine.decoder import StreamingDecoder
from snac_stream.engine.encoder import StreamingEncoder

from .formats import CodeSource
from .tasks import block_samples, check_model


def iter_codes(
    path: str | Path, model, *, channels: str = "mix", block_seconds: float = 1.0
) -> Iterator[list[torch.Tensor]]:
    """Codes per level ``[streams, k_i]`` (whole coarse frames) as they become final; the last
    item is the flush. ``channels``: ``"mix"`` (one stream) or ``"each"`` (one per channel)."""
    with AudioReader(path, model.sample_rate, channels) as reader:
        encoder = StreamingEncoder(model, batch_size=reader.streams)
        for block in reader.blocks(block_samples(model, block_seconds)):
            codes = encoder.push(torch.from_numpy(block)[:, None, :])
            if codes[0].shape[-1]:
                yield codes
        yield encoder.flush()


def encode_file(path: str | Path, model, *, channels: str = "mix") -> list[torch.Tensor]:
    """All codes of an audio file, per level ``LongTensor [streams, T_i]`` (as ``model.encode``)."""
    parts = list(iter_codes(path, model, channels=channels))
    return [torch.cat([p[i] for p in parts], dim=-1) for i in range(model.n_codebooks)]


def iter_audio(
    path: str | Path, model, *, seed: int | None = 0, block_seconds: float = 1.0
) -> Iterator[np.ndarray]:
    """Decoded float32 audio ``[streams, m]`` of a ``.snac``/``.npz``, block by block, trimmed to the
    encoded length. Refuses a file made with another model."""
    source = CodeSource(path)
    try:
        header = source.header
        check_model(header, model, str(path))
        decoder = StreamingDecoder(model, batch_size=header.streams, seed=seed)
        frames = max(1, round(block_seconds * model.sample_rate / model.frame_size))
        left = header.samples
        for codes in itertools.chain(source.blocks(frames), [None]):  # None: the flush
            audio = decoder.flush() if codes is None else decoder.push(codes)
            keep = min(audio.shape[-1], left)
            if keep:
                left -= keep
                yield audio[:, 0, :keep].numpy().astype(np.float32)
    finally:
        source.close()


def decode_file(path: str | Path, model, *, seed: int | None = 0) -> np.ndarray:
    """All decoded audio of a ``.snac``/``.npz``: float32 ``[streams, samples]`` at the model's rate."""
    parts = list(iter_audio(path, model, seed=seed))
    return np.concatenate(parts, axis=1) if parts else np.zeros((1, 0), np.float32)

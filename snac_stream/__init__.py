"""snac-stream: exact, stateful streaming of SNAC (encoder and decoder, chunk by chunk).

Layers, top to bottom (each imports only those below it)::

    cli -> net -> engine -> ops -> kernels        protocol, audio, snac_model: the ground floor

The public names below are imported lazily, so ``import snac_stream.runtime`` (which must run
before torch loads, see :func:`snac_stream.runtime.configure`) does not load torch.
"""

from __future__ import annotations

import importlib

_PUBLIC = {
    "StreamingEncoder": "engine.encoder",
    "StreamFinished": "engine.encoder",
    "StreamingDecoder": "engine.decoder",
    "TokenDecoder": "engine.token_decoder",
    "TokenPool": "engine.token_pool",
    "MultiStreamEncoder": "engine.multistream",
    "MultiStreamDecoder": "engine.multistream",
    "encode_file": "files",
    "decode_file": "files",
    "read_snac": "files",
    "write_snac": "files",
    "Latency": "engine.latency",
    "encoder_latency": "engine.latency",
    "decoder_latency": "engine.latency",
    "end_to_end_latency": "engine.latency",
    "ORPHEUS_AUDIO_OFFSET": "engine.tokens",
    "codes_to_tokens": "engine.tokens",
    "tokens_to_codes": "engine.tokens",
    "frame_levels": "engine.tokens",
    "to_lm_ids": "engine.tokens",
    "from_lm_ids": "engine.tokens",
}

__all__ = list(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        value = getattr(importlib.import_module(f"{__name__}.{_PUBLIC[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)

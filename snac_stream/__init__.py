"""snac-stream: exact, stateful streaming of SNAC (encoder and decoder, chunk by chunk)."""

from .decoder import StreamingDecoder
from .encoder import StreamFinished, StreamingEncoder
from .latency import Latency, decoder_latency, encoder_latency, end_to_end_latency
from .multistream import MultiStreamDecoder, MultiStreamEncoder
from .token_decoder import TokenDecoder
from .tokens import (
    ORPHEUS_AUDIO_OFFSET,
    codes_to_tokens,
    frame_levels,
    from_lm_ids,
    to_lm_ids,
    tokens_to_codes,
)

__all__ = [
    "StreamingEncoder",
    "StreamingDecoder",
    "StreamFinished",
    "TokenDecoder",
    "MultiStreamEncoder",
    "MultiStreamDecoder",
    "Latency",
    "encoder_latency",
    "decoder_latency",
    "end_to_end_latency",
    "ORPHEUS_AUDIO_OFFSET",
    "codes_to_tokens",
    "tokens_to_codes",
    "frame_levels",
    "to_lm_ids",
    "from_lm_ids",
]

"""Stream operators: SNAC's layers taking their input chunk by chunk, with typed per-stream state.

``base`` (the contract, ``Sequential``, ``TimeMajor``, ``keep``), ``layers`` (conv, transposed
conv, residual unit, noise, attention), ``quantizer`` (coarse blocks, ticks), ``build``
(a SNAC encoder/decoder as an operator chain on a kernel set).
"""

from .base import NoState, Pointwise, Sequential, SequentialState, StreamOp, TimeMajor, keep, walk
from .build import build, install_noise
from .layers import (
    Conv,
    ConvState,
    ConvTranspose,
    ConvTransposeState,
    LocalAttention,
    Noise,
    NoiseState,
    ResidualUnit,
    StackedNoiseState,
    UnitState,
    WindowState,
)
from .quantizer import BlockQuantizer, BlockState, TickEmbedder, TickState

__all__ = [
    "BlockQuantizer",
    "BlockState",
    "Conv",
    "ConvState",
    "ConvTranspose",
    "ConvTransposeState",
    "LocalAttention",
    "NoState",
    "Noise",
    "NoiseState",
    "Pointwise",
    "ResidualUnit",
    "Sequential",
    "SequentialState",
    "StackedNoiseState",
    "StreamOp",
    "TickEmbedder",
    "TickState",
    "TimeMajor",
    "UnitState",
    "WindowState",
    "build",
    "install_noise",
    "keep",
    "walk",
]

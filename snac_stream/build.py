"""Rebuild a :class:`snac_model.SNAC` encoder/decoder as a chain of stream operators.

Weight norm is folded once here (``module.weight`` computed and kept as a plain tensor), so
a stream never recomputes it; attention and the quantizer run the model's own modules.
Build after moving the model to its device and dtype.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from snac_model import layers
from snac_model.attention import LocalMHA

from .attention import LocalAttention
from .conv import Conv1d, ConvTranspose1d
from .noise import Noise
from .streaming import Pointwise, Residual, Sequential, StreamOp


def _weight(module: nn.Module) -> torch.Tensor:
    return module.weight.detach()


def _bias(module: nn.Module) -> torch.Tensor | None:
    return None if module.bias is None else module.bias.detach()


def _snake(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    return layers.snake(x, alpha)


def build(module: nn.Module) -> StreamOp:
    """Stream operator equivalent to ``module`` (a SNAC layer or container)."""
    if isinstance(module, nn.Sequential):
        return Sequential([build(m) for m in module])
    if isinstance(module, layers.Encoder):
        return build(module.block)
    if isinstance(module, layers.Decoder):
        return build(module.model)
    if isinstance(module, layers.EncoderBlock | layers.DecoderBlock):
        return build(module.block)
    if isinstance(module, layers.ResidualUnit):
        return Residual(build(module.block))
    if isinstance(module, layers.Snake1d):
        alpha = module.alpha.detach()
        return Pointwise(functools.partial(_snake, alpha=alpha), alpha.shape[1])
    if isinstance(module, nn.Tanh):
        return Pointwise(torch.tanh, 1)  # only used on the decoder's mono output
    if isinstance(module, layers.NoiseBlock):
        return Noise(_weight(module.linear), module.index)
    if isinstance(module, LocalMHA):
        return LocalAttention(module)
    if isinstance(module, nn.ConvTranspose1d):
        (stride,), (padding,) = module.stride, module.padding
        if module.groups != 1 or module.dilation != (1,):
            raise NotImplementedError("streamed transposed conv supports groups=1, dilation=1")
        return ConvTranspose1d(_weight(module), _bias(module), stride, padding)
    if isinstance(module, nn.Conv1d):
        (stride,), (dilation,), (padding,) = module.stride, module.dilation, module.padding
        if isinstance(padding, str):
            raise NotImplementedError("string padding is not used by SNAC")
        op = Conv1d(_weight(module), _bias(module), stride, dilation, padding, module.groups)
        if op.span == 1 and stride == 1 and padding == 0:
            return Pointwise(functools.partial(_conv1x1, weight=op.weight, bias=op.bias), op.out_channels)
        return op
    raise NotImplementedError(f"no stream operator for {type(module).__name__}")


def _conv1x1(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.nn.functional.conv1d(x, weight, bias)


def walk(op: StreamOp, state):
    """Yield ``(operator, state)`` for ``op`` and every operator inside it."""
    yield op, state
    if isinstance(op, Sequential):
        for child, child_state in zip(op.ops, state.children, strict=True):
            yield from walk(child, child_state)
    elif isinstance(op, Residual):
        yield from walk(op.block, state.block)

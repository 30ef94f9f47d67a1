"""Rebuild a :class:`snac_model.SNAC` encoder or decoder as a chain of stream operators.

Weight norm is folded once here (``module.weight`` computed and kept as a plain tensor) and
the weights are prepared for the chosen kernel set, so no step pays for either; attention and
the quantizer run the model's own modules. Build after moving the model to its device and dtype.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from snac_model import layers
from snac_model.attention import LocalMHA

from ..kernels import GenericKernels
from .base import Pointwise, Sequential, StreamOp, TimeMajor, walk
from .layers import Conv, ConvTranspose, LocalAttention, Noise, ResidualUnit


def build(module: nn.Module, kernels: GenericKernels, gemm_dtype: torch.dtype | None = None) -> TimeMajor:
    """The stream operator chain of ``module`` (a SNAC encoder, decoder or layer) behind the
    ``[B, C, T]`` interface. ``gemm_dtype=torch.bfloat16`` runs every GEMM in bf16 (opt-in,
    not exact); elementwise work stays in the model dtype."""
    with torch.inference_mode():
        return TimeMajor(_Builder(kernels, gemm_dtype).build(module))


def _weight(module: nn.Module) -> torch.Tensor:
    return module.weight.detach()


def _bias(module: nn.Module) -> torch.Tensor | None:
    return None if module.bias is None else module.bias.detach()


def _snake_params(module: layers.Snake1d) -> tuple[torch.Tensor, torch.Tensor]:
    alpha = module.alpha.detach()
    return alpha.reshape(-1).contiguous(), (alpha + 1e-9).reciprocal().reshape(-1).contiguous()


class _Builder:
    def __init__(self, kernels: GenericKernels, gemm_dtype: torch.dtype | None):
        self.kernels, self.gemm_dtype = kernels, gemm_dtype

    def build(self, module: nn.Module) -> StreamOp:
        k, dt = self.kernels, self.gemm_dtype
        if isinstance(module, nn.Sequential):
            return Sequential([self.build(m) for m in module])
        if isinstance(module, layers.Encoder | layers.EncoderBlock | layers.DecoderBlock):
            return self.build(module.block)
        if isinstance(module, layers.Decoder):
            return self.build(module.model)
        if isinstance(module, layers.ResidualUnit):
            snake1, conv, snake2, linear = module.block
            snakes = _snake_params(snake1) + _snake_params(snake2)
            return ResidualUnit(k, snakes, self.conv(conv), self.linear(linear))
        if isinstance(module, layers.Snake1d):
            a, inv = _snake_params(module)
            return Pointwise(functools.partial(k.snake, alpha=a, inv_alpha=inv), a.shape[0])
        if isinstance(module, nn.Tanh):
            return Pointwise(torch.tanh, 1)  # only on the decoder's mono output
        if isinstance(module, layers.NoiseBlock):
            return Noise(self.linear(module.linear), module.index)
        if isinstance(module, LocalMHA):
            return LocalAttention(module)
        if isinstance(module, nn.ConvTranspose1d):
            (stride,), (padding,) = module.stride, module.padding
            if module.groups != 1 or module.dilation != (1,):
                raise NotImplementedError("streamed transposed conv supports groups=1, dilation=1")
            return ConvTranspose(k, _weight(module), _bias(module), stride, padding, dt)
        if isinstance(module, nn.Conv1d):
            w = _weight(module)
            if w.shape[-1] == 1 and module.stride == (1,) and module.padding == (0,) and module.groups == 1:
                return Pointwise(self.linear(module), w.shape[0])
            return self.conv(module)
        raise NotImplementedError(f"no stream operator for {type(module).__name__}")

    def conv(self, module: nn.Conv1d) -> Conv:
        (stride,), (dilation,), (padding,) = module.stride, module.dilation, module.padding
        if isinstance(padding, str):
            raise NotImplementedError("string padding is not used by SNAC")
        w, b = _weight(module), _bias(module)
        return Conv(self.kernels, w, b, stride, dilation, padding, module.groups, self.gemm_dtype)

    def linear(self, module: nn.Conv1d):
        """A 1x1 conv as a prepared GEMM."""
        return self.kernels.linear(_weight(module)[:, :, 0], _bias(module), self.gemm_dtype)


def install_noise(op: StreamOp, state, source) -> None:
    """Give every :class:`~.layers.Noise` operator's state in ``op`` the seeded ``source`` (or None)."""
    for child, child_state in walk(op, state):
        if isinstance(child, Noise):
            child_state.source = source

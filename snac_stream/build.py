"""Rebuild a :class:`snac_model.SNAC` encoder/decoder as a chain of stream operators.

Weight norm is folded once here (``module.weight`` computed and kept as a plain tensor), so
a stream never recomputes it; attention and the quantizer run the model's own modules.
Build after moving the model to its device and dtype.

:func:`build` gives the reference operators (``[B, C, T]``, the readable version, also
used for the latency analysis); :func:`build_fast` gives the time-major fast path of
:mod:`snac_stream.fastops` behind the same interface.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
from torch import nn

from snac_model import layers
from snac_model.attention import LocalMHA

from . import kernels, native
from .attention import LocalAttention
from .conv import Conv1d, ConvTranspose1d
from .fastops import (
    TCAttention,
    TCConv,
    TCConvTranspose,
    TCNoise,
    TCPointwise,
    TCResidual,
    TCResidualUnit,
    TCSequential,
    TimeMajor,
    _linear,
)
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


def build_fast(module: nn.Module, gemm_dtype: torch.dtype | None = None, compile: bool = False) -> StreamOp:
    """The fast path: :func:`build`'s equivalent in time-major operators, wrapped in
    :class:`~snac_stream.fastops.TimeMajor` (same ``[B, C, T]`` interface and results to
    float rounding). ``gemm_dtype=torch.bfloat16`` runs every GEMM in bf16 (opt-in, not
    exact); elementwise work stays in the model dtype. ``compile=True`` runs the Snake and
    depthwise-conv chains as ``torch.compile``'d kernels (opt-in; compiles on first use).
    The native Snake kernels are built (or loaded) here, so no step pays for that."""
    native.load()
    with torch.inference_mode():
        return TimeMajor(_build_tc(module, _Options(gemm_dtype, compile)))


class _Options(NamedTuple):
    gemm_dtype: torch.dtype | None
    compile: bool


def _snake_params(module: layers.Snake1d) -> tuple[torch.Tensor, torch.Tensor]:
    alpha = module.alpha.detach()
    return alpha.reshape(-1).contiguous(), (alpha + 1e-9).reciprocal().reshape(-1).contiguous()


def _build_tc(module: nn.Module, opt: _Options) -> StreamOp:
    dt = opt.gemm_dtype
    if isinstance(module, nn.Sequential):
        return TCSequential([_build_tc(m, opt) for m in module])
    if isinstance(module, layers.Encoder):
        return _build_tc(module.block, opt)
    if isinstance(module, layers.Decoder):
        return _build_tc(module.model, opt)
    if isinstance(module, layers.EncoderBlock | layers.DecoderBlock):
        return _build_tc(module.block, opt)
    if isinstance(module, layers.ResidualUnit):
        block = _build_tc(module.block, opt)
        _, conv, _, linear = block.ops
        if isinstance(conv, TCConv) and conv.mode == "depthwise":
            snakes = _snake_params(module.block[0]) + _snake_params(module.block[2])
            return TCResidualUnit(snakes, conv, linear.fn.args[0], opt.compile)
        return TCResidual(block)
    if isinstance(module, layers.Snake1d):
        a, inv = _snake_params(module)
        fn = kernels.compiled().snake if opt.compile else kernels.snake
        return TCPointwise(functools.partial(fn, alpha=a, inv_alpha=inv), a.shape[0])
    if isinstance(module, nn.Tanh):
        return TCPointwise(torch.tanh, 1)
    if isinstance(module, layers.NoiseBlock):
        return TCNoise(_weight(module.linear), module.index, dt)
    if isinstance(module, LocalMHA):
        return TCAttention(module)
    if isinstance(module, nn.ConvTranspose1d):
        (stride,), (padding,) = module.stride, module.padding
        if module.groups != 1 or module.dilation != (1,):
            raise NotImplementedError("streamed transposed conv supports groups=1, dilation=1")
        return TCConvTranspose(_weight(module), _bias(module), stride, padding, dt)
    if isinstance(module, nn.Conv1d):
        (stride,), (dilation,), (padding,) = module.stride, module.dilation, module.padding
        if isinstance(padding, str):
            raise NotImplementedError("string padding is not used by SNAC")
        w, b = _weight(module), _bias(module)
        if w.shape[-1] == 1 and stride == 1 and padding == 0 and module.groups == 1:
            linear = kernels.Linear(w[:, :, 0] if dt is None else w[:, :, 0].to(dt), _cast(b, dt))
            return TCPointwise(functools.partial(_linear, linear), w.shape[0])
        return TCConv(w, b, stride, dilation, padding, module.groups, dt)
    raise NotImplementedError(f"no stream operator for {type(module).__name__}")


def _cast(t: torch.Tensor | None, dtype: torch.dtype | None) -> torch.Tensor | None:
    return t if t is None or dtype is None else t.to(dtype)


def walk(op: StreamOp, state):
    """Yield ``(operator, state)`` for ``op`` and every operator inside it."""
    yield op, state
    if isinstance(op, TimeMajor):
        yield from walk(op.inner, state)
        return
    if isinstance(op, Sequential):
        for child, child_state in zip(op.ops, state.children, strict=True):
            yield from walk(child, child_state)
    elif isinstance(op, Residual):
        yield from walk(op.block, state.block)


def build_stream(
    module: nn.Module, *, fast: bool = True, compile: bool = False, gemm_dtype: torch.dtype | None = None
) -> StreamOp:
    """The operator chain a streaming encoder/decoder runs: :func:`build_fast` (default) or the
    reference operators of :func:`build` (``fast=False``, which takes no fast-path options)."""
    if not fast and (compile or gemm_dtype is not None):
        raise ValueError("compile and gemm_dtype need the fast path (fast=True)")
    with torch.inference_mode():
        return build_fast(module, gemm_dtype, compile) if fast else build(module)


def install_noise(op: StreamOp, state, source) -> None:
    """Give every :class:`Noise` operator's state in ``op`` the seeded ``source`` (or None)."""
    for child, child_state in walk(op, state):
        if isinstance(child, Noise):
            child_state.source = source

"""Time-major stream operators: the fast path of the streaming encoder and decoder.

Same contract as :mod:`snac_stream.streaming` (``init_state`` / ``step`` / ``flush`` /
``need``; streamed == offline to float rounding) but tensors are ``[B, T, C]``: time
before channels. In that layout every convolution is a GEMM with the activations on the
left (``x [T, K] @ W^T``, the fast orientation here), a depthwise conv is seven shifted
multiply-adds over contiguous rows (fused with the Snake after it into one pass by the C
kernels of :mod:`snac_stream.native` in float32), and a transposed conv needs no permute: the two
halves of each frame's output are contiguous blocks. :class:`TimeMajor` wraps a chain of
these operators behind the usual ``[B, C, T]`` interface (one transpose in, a view out).

The operators subclass their reference counterparts, so ``need`` (the latency analysis),
:func:`snac_stream.build.walk` and ``isinstance(op, Noise)`` keep working.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from . import kernels
from .attention import LocalAttention, WindowState
from .conv import Conv1d, ConvState, ConvTranspose1d
from .kernels import Linear
from .noise import Noise, NoiseState
from .streaming import (
    Pointwise,
    Residual,
    ResidualState,
    Sequential,
    SequentialState,
    StreamOp,
    compact,
)


def empty_rows(x: torch.Tensor, channels: int) -> torch.Tensor:
    """A ``[B, 0, channels]`` tensor like ``x``."""
    return x.new_zeros(x.shape[0], 0, channels)


def cat_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Concatenate along time (dim 1), skipping the copy when one side is empty."""
    if a.shape[1] == 0:
        return b
    if b.shape[1] == 0:
        return a
    return torch.cat((a, b), dim=1)


class TCPointwise(Pointwise):
    """``fn`` on each time step alone: ``[B, T, C_in] -> [B, T, out_channels]``."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], out_channels: int):
        super().__init__(fn, out_channels)

    def step(self, state, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x) if x.shape[1] else empty_rows(x, self.out_channels)

    def flush(self, state, like: torch.Tensor) -> torch.Tensor:
        return empty_rows(like, self.out_channels)


class TCSequential(Sequential):
    def step(self, state: SequentialState, x: torch.Tensor) -> torch.Tensor:
        for op, s in zip(self.ops, state.children, strict=True):
            if x.shape[1] == 0:  # an empty chunk changes no state downstream
                return empty_rows(x, self.out_channels)
            x = op.step(s, x)
        return x

    def flush(self, state: SequentialState, like: torch.Tensor) -> torch.Tensor:
        x = empty_rows(like, 0)
        for op, s in zip(self.ops, state.children, strict=True):
            head = op.step(s, x) if x.shape[1] else empty_rows(like, op.out_channels)
            x = cat_rows(head, op.flush(s, like))
        return x


class TCResidual(Residual):
    """``x + block(x)`` with the skip path in a delay line (see :class:`~snac_stream.streaming.Residual`)."""

    def init_state(self, batch, device, dtype):
        skip = torch.zeros(batch, 0, self.out_channels, device=device, dtype=dtype)
        return ResidualState(self.block.init_state(batch, device, dtype), skip)

    def _join(self, state: ResidualState, y: torch.Tensor) -> torch.Tensor:
        n = y.shape[1]
        out = torch.add(state.skip[:, :n], y)
        state.skip = compact(state.skip[:, n:])
        return out

    def step(self, state: ResidualState, x: torch.Tensor) -> torch.Tensor:
        state.skip = cat_rows(state.skip, x)
        return self._join(state, self.block.step(state.block, x))

    def flush(self, state: ResidualState, like: torch.Tensor) -> torch.Tensor:
        out = self._join(state, self.block.flush(state.block, like))
        if state.skip.shape[1]:
            raise AssertionError("residual block returned fewer outputs than inputs")
        return out


@dataclass
class UnitState:
    hist: torch.Tensor  # [B, h, C]: Snake outputs the depthwise conv still needs (starts as its left padding)
    skip: torch.Tensor  # [B, r, C]: inputs waiting for their block output (the skip delay line)


class TCResidualUnit(StreamOp):
    """SNAC's residual unit fused: ``x + conv1x1(snake2(dwconv_k,d(snake1(x))))``.

    The first Snake writes straight behind the conv's history in one buffer (no concat of
    its output), the 1x1 conv is one GEMM with the bias fused, and the skip path is added
    from the delay line and the input in place (no concat). Same results as
    ``TCResidual(TCSequential([snake1, conv, snake2, linear]))``. ``snakes`` holds
    ``(alpha1, inv_alpha1, alpha2, inv_alpha2)``, each ``[C]``. With ``compiled``, the
    Snake + concat and the depthwise conv + Snake run as ``torch.compile``'d fused kernels
    (:func:`snac_stream.kernels.compiled`).
    """

    def __init__(self, snakes: tuple, conv: TCConv, linear: Linear, compiled: bool = False):
        if conv.mode != "depthwise":
            raise ValueError("TCResidualUnit needs a depthwise conv")
        self.snakes, self.conv, self.linear = snakes, conv, linear
        self.fused = kernels.compiled() if compiled else None
        self.out_channels = conv.out_channels

    def init_state(self, batch, device, dtype):
        c = self.out_channels
        hist = torch.zeros(batch, self.conv.padding, c, device=device, dtype=dtype)
        return UnitState(hist, torch.zeros(batch, 0, c, device=device, dtype=dtype))

    def _finish(self, state: UnitState, u: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Convolve buffer ``u`` (history + new Snake outputs), add the skip path of ``x``."""
        conv = self.conv
        m = u.shape[1] - conv.span + 1
        if m <= 0:
            state.hist, state.skip = compact(u), compact(cat_rows(state.skip, x))
            return empty_rows(u, self.out_channels)
        a2, inv2 = self.snakes[2:]
        if self.fused is not None:
            y = self.fused.dw_snake(u, conv.taps, conv.bias, a2, inv2, conv.dilation, m)
        else:
            y = kernels.dw_snake(u, conv.taps, conv.bias, a2, inv2, conv.dilation, m)
        z = _linear(self.linear, y)
        state.hist = compact(u[:, m:])
        skip, r = state.skip, state.skip.shape[1]
        if m <= r:
            z += skip[:, :m]
            state.skip = compact(cat_rows(skip[:, m:], x))
        else:
            z[:, :r] += skip
            z[:, r:] += x[:, : m - r]
            state.skip = compact(x[:, m - r :])
        return z

    def step(self, state: UnitState, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        if T == 0:
            return empty_rows(x, C)
        a1, inv1 = self.snakes[:2]
        if self.fused is not None:
            return self._finish(state, self.fused.cat_snake(state.hist, x, a1, inv1), x)
        h = state.hist.shape[1]
        u = torch.empty(B, h + T, C, dtype=x.dtype, device=x.device)
        u[:, :h] = state.hist
        kernels.snake(x, a1, inv1, out=u[:, h:])
        return self._finish(state, u, x)

    def flush(self, state: UnitState, like: torch.Tensor) -> torch.Tensor:
        hist = state.hist
        pad = hist.new_zeros(hist.shape[0], self.conv.padding, hist.shape[2])
        out = self._finish(state, cat_rows(hist, pad), empty_rows(like, self.out_channels))
        if state.skip.shape[1]:
            raise AssertionError("residual unit returned fewer outputs than inputs")
        state.hist = hist[:, :0]
        return out

    def need(self, j):
        return np.maximum(self.conv.need(j), np.asarray(j) + 1)


class TCConv(Conv1d):
    """Conv1d on ``[B, T, C]`` with the cached left-padding buffer of :class:`~snac_stream.conv.Conv1d`.

    Kernels: depthwise (stride 1) -> shifted multiply-adds; dense with few outputs per
    input (``k * C_out <= C_in``, e.g. the decoder's 64 -> 1 output conv) -> one GEMM on
    every input row, then shifted adds of its k column groups; other dense convs -> im2col
    GEMM (rows of ``k`` input frames, strided and dilated, copied side by side);
    anything else (grouped convs SNAC does not use) -> ``F.conv1d`` on a transposed view.
    """

    def __init__(self, weight, bias, stride=1, dilation=1, padding=0, groups=1, dtype=None):
        super().__init__(weight, bias, stride, dilation, padding, groups)
        c_out, c_in_group, k = weight.shape
        self.kernel = k
        if groups == self.in_channels == c_out and groups > 1 and stride == 1:
            self.mode = "depthwise"
            self.taps = weight[:, 0, :].t().contiguous()  # [k, C]
        elif groups == 1 and stride == 1 and k * c_out <= c_in_group:
            self.mode = "gather"  # GEMM to k*C_out columns, then shift-add
            self.linear = Linear(_cast(weight.permute(2, 0, 1).reshape(k * c_out, c_in_group), dtype), None)
        elif groups == 1:
            self.mode = "im2col"
            w = weight.permute(0, 2, 1).reshape(c_out, k * c_in_group)  # column index i*C_in + c
            self.linear = Linear(_cast(w, dtype), _cast(bias, dtype))
        else:
            self.mode = "conv1d"

    def init_state(self, batch, device, dtype):
        return ConvState(torch.zeros(batch, self.padding, self.in_channels, device=device, dtype=dtype))

    def _apply(self, buf: torch.Tensor, n_out: int) -> torch.Tensor:
        d, k = self.dilation, self.kernel
        if self.mode == "depthwise":
            return kernels.depthwise(buf, self.taps, self.bias, d, n_out)
        if self.mode == "gather":
            full = _linear(self.linear, buf)  # [B, n, k*C_out]
            c = self.out_channels
            y = full[:, 0:n_out, 0:c].clone() if self.bias is None else full[:, 0:n_out, 0:c] + self.bias
            for i in range(1, k):
                y += full[:, i * d : i * d + n_out, i * c : (i + 1) * c]
            return y
        if self.mode == "im2col":
            buf = buf.contiguous()
            B, n, C = buf.shape
            cols = buf.as_strided((B, n_out, k, C), (n * C, self.stride * C, d * C, 1), buf.storage_offset())
            return _linear(self.linear, cols.reshape(B, n_out, k * C))
        y = F.conv1d(buf.transpose(1, 2), self.weight, self.bias, self.stride, 0, d, self.groups)
        return y.transpose(1, 2)

    def _run(self, state: ConvState, buf: torch.Tensor) -> torch.Tensor:
        n = buf.shape[1]
        if n < self.span:
            state.buffer = compact(buf)
            return empty_rows(buf, self.out_channels)
        n_out = (n - self.span) // self.stride + 1
        y = self._apply(buf, n_out)
        state.buffer = compact(buf[:, n_out * self.stride :])
        return y

    def step(self, state: ConvState, x: torch.Tensor) -> torch.Tensor:
        return self._run(state, cat_rows(state.buffer, x))

    def flush(self, state: ConvState, like: torch.Tensor) -> torch.Tensor:
        buf = state.buffer
        pad = buf.new_zeros(buf.shape[0], self.padding, buf.shape[2])
        y = self._run(state, cat_rows(buf, pad))
        state.buffer = buf[:, :0]
        return y


@dataclass
class TCConvTransposeState:
    carry: torch.Tensor  # [B, s*C_out]: second half of the last frame's rows (not final yet)
    crop: int  # rows still to drop at the start of the stream (the offline left crop)
    started: bool = False  # whether any frame has arrived


class TCConvTranspose(ConvTranspose1d):
    """Transposed conv (kernel ``2s``) on ``[B, J, C_in]``: one GEMM gives each frame's ``2s``
    output rows as two contiguous halves; ``out[j] = first[j] + second[j-1]``. The bias is
    folded into the first half (every output row has exactly one first-half term)."""

    def __init__(self, weight, bias, stride, padding, dtype=None):
        # not super().__init__: its [C_out*2s, C_in] matrix copy is not used here
        c_in, c_out, k = self._set_shape(weight, stride, padding)
        matrix = weight.permute(2, 1, 0).reshape(k * c_out, c_in)  # row p*C_out + c: output position p
        folded = None
        if bias is not None:
            folded = torch.zeros(k * c_out, dtype=weight.dtype, device=weight.device)
            folded[: stride * c_out] = bias.repeat(stride)
        self.bias = bias
        self.linear = Linear(_cast(matrix, dtype), _cast(folded, dtype))

    def init_state(self, batch, device, dtype):
        carry = torch.zeros(batch, self.stride * self.out_channels, device=device, dtype=dtype)
        return TCConvTransposeState(carry, self.padding)

    def step(self, state: TCConvTransposeState, x: torch.Tensor) -> torch.Tensor:
        B, J, _ = x.shape
        if J == 0:
            return empty_rows(x, self.out_channels)
        s, c = self.stride, self.out_channels
        frames = _linear(self.linear, x).view(B, J, 2, s * c)
        y = torch.empty(B, J, s * c, dtype=frames.dtype, device=frames.device)
        torch.add(frames[:, 0, 0], state.carry, out=y[:, 0])
        if J > 1:
            torch.add(frames[:, 1:, 0], frames[:, :-1, 1], out=y[:, 1:])
        state.carry = compact(frames[:, -1, 1])
        crop, state.crop = min(state.crop, J * s), max(state.crop - J * s, 0)
        state.started = True
        y = y.view(B, J * s, c)
        return y[:, crop:] if crop else y

    def flush(self, state: TCConvTransposeState, like: torch.Tensor) -> torch.Tensor:
        if not state.started:
            return empty_rows(like, self.out_channels)
        tail = state.carry.reshape(like.shape[0], self.stride, self.out_channels)[:, : self.padding]
        state.carry = state.carry[:, :0]
        return tail + self.bias if self.bias is not None else tail.clone()


@dataclass
class StackedNoiseState:
    """Noise state of a batch stacked from independent streams (:mod:`snac_stream.multistream`):
    each item keeps its own source and absolute position."""

    items: list[NoiseState]


def draw_noise(state: NoiseState | StackedNoiseState, index: int, batch: int, T: int, like: torch.Tensor):
    """Noise ``[B, T, 1]`` for the next ``T`` samples of NoiseBlock ``index``; advances the position(s)."""
    if isinstance(state, StackedNoiseState):
        return torch.cat([draw_noise(item, index, 1, T, like) for item in state.items])
    if state.source is None:
        n = torch.randn((batch, T, 1), device=like.device, dtype=like.dtype)
    else:
        n = state.source.draw(index, state.position, T, dtype=like.dtype, device=like.device).view(
            batch, T, 1
        )
    state.position += T
    return n


class TCNoise(Noise):
    """``x + noise[t] * (x @ W^T)[t]`` on ``[B, T, C]``."""

    def __init__(self, weight: torch.Tensor, index: int, dtype=None):
        super().__init__(weight, index)
        self.linear = Linear(_cast(weight[:, :, 0], dtype), None)

    def step(self, state: NoiseState | StackedNoiseState, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        if T == 0:
            return empty_rows(x, self.out_channels)
        n = draw_noise(state, self.index, B, T, x)
        h = _linear(self.linear, x)
        return torch.addcmul(x, n, h, out=h)

    def flush(self, state: NoiseState, like: torch.Tensor) -> torch.Tensor:
        return empty_rows(like, self.out_channels)


class TCAttention(LocalAttention):
    def init_state(self, batch, device, dtype):
        return WindowState(torch.zeros(batch, 0, self.out_channels, device=device, dtype=dtype))

    def _attend(self, x: torch.Tensor, n: int) -> torch.Tensor:
        return self.module.windows(x.transpose(1, 2), n).transpose(1, 2)

    def step(self, state: WindowState, x: torch.Tensor) -> torch.Tensor:
        buf = cat_rows(state.buffer, x)
        full = buf.shape[1] // self.window * self.window
        state.buffer = compact(buf[:, full:])
        return self._attend(buf[:, :full], self.window) if full else empty_rows(x, self.out_channels)

    def flush(self, state: WindowState, like: torch.Tensor) -> torch.Tensor:
        buf = state.buffer
        state.buffer = buf[:, :0]
        return self._attend(buf, buf.shape[1]) if buf.shape[1] else empty_rows(like, self.out_channels)


class TimeMajor(StreamOp):
    """A chain of time-major operators behind the ``[B, C, T]`` interface: inputs are
    transposed once (always a copy: the chain may keep views of its input, so it must not
    alias the caller's tensor), outputs come back as a transposed view."""

    def __init__(self, inner: StreamOp):
        self.inner = inner
        self.out_channels = inner.out_channels

    def init_state(self, batch, device, dtype):
        return self.inner.init_state(batch, device, dtype)

    def step(self, state, x: torch.Tensor) -> torch.Tensor:
        x = x.transpose(1, 2).clone(memory_format=torch.contiguous_format)
        return self.inner.step(state, x).transpose(1, 2)

    def flush(self, state, like: torch.Tensor) -> torch.Tensor:
        return self.inner.flush(state, like.transpose(1, 2)).transpose(1, 2)

    def need(self, j):
        return self.inner.need(j)


def _cast(t: torch.Tensor | None, dtype: torch.dtype | None) -> torch.Tensor | None:
    return t if t is None or dtype is None else t.to(dtype)


def _linear(linear: Linear, x: torch.Tensor) -> torch.Tensor:
    """``linear(x)``, computed in the linear's weight dtype (reduced-precision GEMMs) and
    returned in ``x``'s dtype."""
    if linear.weight.dtype == x.dtype:
        return linear(x)
    return linear(x.to(linear.weight.dtype)).to(x.dtype)


__all__ = [
    "TCPointwise",
    "TCSequential",
    "TCResidual",
    "TCResidualUnit",
    "TCConv",
    "TCConvTranspose",
    "TCNoise",
    "StackedNoiseState",
    "TCConvTransposeState",
    "UnitState",
    "TCAttention",
    "TimeMajor",
    "cat_rows",
    "empty_rows",
]

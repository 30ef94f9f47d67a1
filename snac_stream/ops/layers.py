"""SNAC's layers as time-major stream operators (``[B, T, C]``), one implementation each.

Conv1d (kernel k, dilation d, stride s, symmetric padding p)::

    offline:  [p zeros] x0 x1 ... x_{N-1} [p zeros]     output j reads padded[j*s : j*s + span]
    stream:   the buffer starts as the p left zeros; inputs are appended; every output whose
              window has fully arrived is emitted and the inputs before the next window are
              dropped; ``flush`` appends the p right zeros.        need(j) = j*s + span - p

ConvTranspose1d (kernel 2s, stride s, padding p): one GEMM turns each input frame into its
2s output rows, two contiguous halves; the second half overlaps the next frame's first::

    rows [j*s, (j+1)*s) = second_half[j-1] + first_half[j]   -> final once frame j arrived

The state keeps the last second half; the first p rows of the stream are cropped and
``flush`` emits the last p rows: exactly the offline ``output[p : p + T*s]``.
need(j) = (j + p) // s + 1.

ResidualUnit ``x + conv1x1(snake(conv_k,d(snake(x))))``: the inner conv lags by its right
padding p, so the skip path waits in a delay line of p rows. need(j) = j + span - p.

LocalAttention: windows of W frames aligned to the start; a window is attended once all of
it has arrived (``flush`` attends a final partial window within itself). need(j) = (j//W + 1)*W.

Noise: ``x + noise[t] * (x @ W^T)[t]``, the noise keyed by absolute sample position. No delay.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from snac_model.attention import LocalMHA
from snac_model.noise import NoiseSource

from ..kernels import GenericKernels, Linear
from .base import StreamOp, cat_rows, empty_rows, keep


@dataclass
class ConvState:
    buffer: torch.Tensor  # [B, n, C_in]: padded inputs not yet consumed (starts as the p left zeros)


class Conv(StreamOp):
    """Conv1d with cached left padding. Kernels by shape: depthwise (stride 1) -> shifted
    multiply-adds; few outputs per input (``k * C_out <= C_in``, e.g. the decoder's 64 -> 1
    output conv) -> one GEMM on every row, then shifted adds of its k column groups; other
    dense convs -> im2col GEMM (rows of k frames side by side); other groupings -> ``F.conv1d``."""

    def __init__(
        self,
        kernels: GenericKernels,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        stride: int = 1,
        dilation: int = 1,
        padding: int = 0,
        groups: int = 1,
        gemm_dtype: torch.dtype | None = None,
    ):
        c_out, c_in_group, k = weight.shape
        self.kernels, self.weight, self.bias = kernels, weight, bias
        self.stride, self.dilation, self.padding, self.groups, self.kernel = (
            stride,
            dilation,
            padding,
            groups,
            k,
        )
        self.in_channels, self.out_channels = c_in_group * groups, c_out
        self.span = (k - 1) * dilation + 1
        if groups == self.in_channels == c_out and groups > 1 and stride == 1:
            self.mode = "depthwise"
            self.taps = weight[:, 0, :].t().contiguous()  # [k, C]
        elif groups == 1 and stride == 1 and k * c_out <= c_in_group:
            self.mode = "gather"  # GEMM to k*C_out columns, then shift-add
            self.linear = kernels.linear(
                weight.permute(2, 0, 1).reshape(k * c_out, c_in_group), None, gemm_dtype
            )
        elif groups == 1:
            self.mode = "im2col"
            w = weight.permute(0, 2, 1).reshape(c_out, k * c_in_group)  # column index i*C_in + c
            self.linear = kernels.linear(w, bias, gemm_dtype)
        else:
            self.mode = "conv1d"

    def init_state(self, batch, device, dtype):
        return ConvState(torch.zeros(batch, self.padding, self.in_channels, device=device, dtype=dtype))

    def apply(self, buf: torch.Tensor, n_out: int) -> torch.Tensor:
        """The first ``n_out`` outputs of the conv over ``buf [B, n, C_in]`` (no padding)."""
        d, k = self.dilation, self.kernel
        if self.mode == "depthwise":
            return self.kernels.depthwise(buf, self.taps, self.bias, d, n_out)
        if self.mode == "gather":
            full = self.linear(buf)  # [B, n, k*C_out]
            c = self.out_channels
            y = full[:, 0:n_out, 0:c].clone() if self.bias is None else full[:, 0:n_out, 0:c] + self.bias
            for i in range(1, k):
                y += full[:, i * d : i * d + n_out, i * c : (i + 1) * c]
            return y
        if self.mode == "im2col":
            buf = buf.contiguous()
            B, n, C = buf.shape
            cols = buf.as_strided((B, n_out, k, C), (n * C, self.stride * C, d * C, 1), buf.storage_offset())
            return self.linear(cols.reshape(B, n_out, k * C))
        used = buf[:, : (n_out - 1) * self.stride + self.span].transpose(1, 2)
        return F.conv1d(used, self.weight, self.bias, self.stride, 0, d, self.groups).transpose(1, 2)

    def _run(self, state: ConvState, buf: torch.Tensor) -> torch.Tensor:
        n = buf.shape[1]
        if n < self.span:
            state.buffer = keep(state.buffer, buf)
            return empty_rows(buf, self.out_channels)
        n_out = (n - self.span) // self.stride + 1
        y = self.apply(buf, n_out)
        state.buffer = keep(state.buffer, buf[:, n_out * self.stride :])
        return y

    def step(self, state: ConvState, x: torch.Tensor) -> torch.Tensor:
        return self._run(state, cat_rows(state.buffer, x))

    def flush(self, state: ConvState, like: torch.Tensor) -> torch.Tensor:
        buf = state.buffer
        y = self._run(state, cat_rows(buf, buf.new_zeros(buf.shape[0], self.padding, buf.shape[2])))
        state.buffer = buf[:, :0]
        return y

    def need(self, j):
        return np.maximum(np.asarray(j) * self.stride + self.span - self.padding, 0)


@dataclass
class ConvTransposeState:
    carry: torch.Tensor  # [B, s*C_out]: second half of the last frame's rows (not final yet)
    crop: int  # rows still to drop at the start of the stream (the offline left crop)
    started: bool = False  # whether any frame has arrived


class ConvTranspose(StreamOp):
    """Transposed conv with kernel ``2 * stride`` (SNAC's upsampler) on ``[B, J, C_in]``. The
    bias is folded into the first half (every output row has exactly one first-half term)."""

    def __init__(
        self,
        kernels: GenericKernels,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        stride: int,
        padding: int,
        gemm_dtype: torch.dtype | None = None,
    ):
        c_in, c_out, k = weight.shape
        if k != 2 * stride:
            raise ValueError(
                f"streamed transposed conv needs kernel 2*stride, got kernel {k}, stride {stride}"
            )
        self.stride, self.padding = stride, padding
        self.in_channels, self.out_channels = c_in, c_out
        matrix = weight.permute(2, 1, 0).reshape(k * c_out, c_in)  # row p*C_out + c: output position p
        folded = None
        if bias is not None:
            folded = torch.zeros(k * c_out, dtype=weight.dtype, device=weight.device)
            folded[: stride * c_out] = bias.repeat(stride)
        self.bias = bias
        self.linear: Linear = kernels.linear(matrix, folded, gemm_dtype)

    def init_state(self, batch, device, dtype):
        carry = torch.zeros(batch, self.stride * self.out_channels, device=device, dtype=dtype)
        return ConvTransposeState(carry, self.padding)

    def step(self, state: ConvTransposeState, x: torch.Tensor) -> torch.Tensor:
        B, J, _ = x.shape
        s, c = self.stride, self.out_channels
        if J == 0:
            return empty_rows(x, c)
        frames = self.linear(x).view(B, J, 2, s * c)
        y = torch.empty(B, J, s * c, dtype=frames.dtype, device=frames.device)
        torch.add(frames[:, 0, 0], state.carry, out=y[:, 0])
        if J > 1:
            torch.add(frames[:, 1:, 0], frames[:, :-1, 1], out=y[:, 1:])
        state.carry = keep(state.carry, frames[:, -1, 1])
        crop, state.crop = min(state.crop, J * s), max(state.crop - J * s, 0)
        state.started = True
        y = y.view(B, J * s, c)
        return y[:, crop:] if crop else y

    def flush(self, state: ConvTransposeState, like: torch.Tensor) -> torch.Tensor:
        if not state.started:
            return empty_rows(like, self.out_channels)
        tail = state.carry.reshape(like.shape[0], self.stride, self.out_channels)[:, : self.padding]
        return tail + self.bias if self.bias is not None else tail.clone()

    def need(self, j):
        return (np.asarray(j) + self.padding) // self.stride + 1


@dataclass
class UnitState:
    hist: (
        torch.Tensor
    )  # [B, h, C]: first-Snake outputs the inner conv still needs (starts as its left padding)
    skip: torch.Tensor  # [B, r, C]: inputs waiting for their block output (the skip delay line)


class ResidualUnit(StreamOp):
    """``x + conv1x1(snake2(conv(snake1(x))))``, fused: the first Snake writes straight behind
    the conv's history in one buffer, a depthwise conv runs with the second Snake in one
    kernel, the 1x1 conv is one GEMM with its bias, and the skip path is added in place from
    the delay line and the input. ``snakes``: ``(alpha1, inv_alpha1, alpha2, inv_alpha2)``, each ``[C]``."""

    def __init__(self, kernels: GenericKernels, snakes: tuple, conv: Conv, linear: Linear):
        if conv.stride != 1 or conv.in_channels != conv.out_channels:
            raise ValueError("a residual unit's conv keeps length and channels (stride 1, C -> C)")
        self.kernels, self.snakes, self.conv, self.linear = kernels, snakes, conv, linear
        self.out_channels = conv.out_channels

    def init_state(self, batch, device, dtype):
        c = self.out_channels
        hist = torch.zeros(batch, self.conv.padding, c, device=device, dtype=dtype)
        return UnitState(hist, torch.zeros(batch, 0, c, device=device, dtype=dtype))

    def _finish(self, state: UnitState, u: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Convolve buffer ``u`` (history + new Snake outputs); add the skip path of input ``x``."""
        conv, (a2, inv2) = self.conv, self.snakes[2:]
        m = u.shape[1] - conv.span + 1
        if m <= 0:
            state.hist, state.skip = keep(state.hist, u), keep(state.skip, cat_rows(state.skip, x))
            return empty_rows(u, self.out_channels)
        if conv.mode == "depthwise":
            y = self.kernels.dw_snake(u, conv.taps, conv.bias, a2, inv2, conv.dilation, m)
        else:
            y = self.kernels.snake(conv.apply(u, m), a2, inv2)
        z = self.linear(y)
        state.hist = keep(state.hist, u[:, m:])
        skip, r = state.skip, state.skip.shape[1]
        if m <= r:
            z += skip[:, :m]
            state.skip = keep(skip, cat_rows(skip[:, m:], x))
        else:
            z[:, :r] += skip
            z[:, r:] += x[:, : m - r]
            state.skip = keep(skip, x[:, m - r :])
        return z

    def step(self, state: UnitState, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        h = state.hist.shape[1]
        u = torch.empty(B, h + T, C, dtype=x.dtype, device=x.device)
        u[:, :h] = state.hist
        self.kernels.snake(x, *self.snakes[:2], out=u[:, h:])
        return self._finish(state, u, x)

    def flush(self, state: UnitState, like: torch.Tensor) -> torch.Tensor:
        hist = state.hist
        pad = hist.new_zeros(hist.shape[0], self.conv.padding, hist.shape[2])
        out = self._finish(state, cat_rows(hist, pad), empty_rows(like, self.out_channels))
        if state.skip.shape[1]:
            raise AssertionError("residual unit returned fewer outputs than inputs")
        return out

    def need(self, j):
        return np.maximum(self.conv.need(j), np.asarray(j) + 1)


@dataclass
class NoiseState:
    source: NoiseSource | None  # None: fresh torch.randn like the reference (not reproducible)
    position: int = 0  # absolute index of the next output sample of this layer


@dataclass
class StackedNoiseState:
    """Noise state of a batch stacked from independent streams (:mod:`snac_stream.engine.multistream`):
    each item keeps its own source and absolute position."""

    items: list[NoiseState]


def draw_noise(state: NoiseState | StackedNoiseState, index: int, batch: int, T: int, like: torch.Tensor):
    """Noise ``[B, T, 1]`` for the next ``T`` samples of NoiseBlock ``index``; advances the position(s)."""
    if isinstance(state, StackedNoiseState):
        return torch.cat([draw_noise(item, index, 1, T, like) for item in state.items])
    if state.source is None:
        n = torch.randn((batch, T, 1), device=like.device, dtype=like.dtype)
    else:
        n = state.source.draw(index, state.position, T, dtype=like.dtype, device=like.device)
        n = n.view(batch, T, 1)
    state.position += T
    return n


class Noise(StreamOp):
    """The decoder's NoiseBlock ``index``: ``x + noise[t] * (x @ W^T)[t]``; pointwise in time."""

    def __init__(self, linear: Linear, index: int):
        self.linear, self.index = linear, index
        self.out_channels = linear.out_features

    def init_state(self, batch, device, dtype):  # the decoder installs the seeded source
        return NoiseState(None)

    def step(self, state: NoiseState | StackedNoiseState, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        n = draw_noise(state, self.index, B, T, x)
        h = self.linear(x)
        return torch.addcmul(x, n, h, out=h)


@dataclass
class WindowState:
    buffer: torch.Tensor  # [B, W, C]: the current window; its first ``filled`` frames have arrived
    filled: int = 0


class LocalAttention(StreamOp):
    """The model's LocalMHA over whole windows of ``W`` frames."""

    def __init__(self, module: LocalMHA):
        self.module = module
        self.window = module.window_size
        self.out_channels = module.norm.normalized_shape[0]

    def init_state(self, batch, device, dtype):
        return WindowState(torch.zeros(batch, self.window, self.out_channels, device=device, dtype=dtype))

    def _attend(self, x: torch.Tensor, n: int) -> torch.Tensor:
        return self.module.windows(x.transpose(1, 2), n).transpose(1, 2)

    def step(self, state: WindowState, x: torch.Tensor) -> torch.Tensor:
        n, total = state.filled, state.filled + x.shape[1]
        full = total // self.window * self.window
        if full == 0:
            state.buffer[:, n:total] = x
            state.filled = total
            return empty_rows(x, self.out_channels)
        frames = cat_rows(state.buffer[:, :n], x)
        out = self._attend(frames[:, :full], self.window)
        state.filled = total - full
        state.buffer[:, : state.filled] = frames[:, full:]
        return out

    def flush(self, state: WindowState, like: torch.Tensor) -> torch.Tensor:
        n, state.filled = state.filled, 0
        return self._attend(state.buffer[:, :n], n) if n else empty_rows(like, self.out_channels)

    def need(self, j):
        return (np.asarray(j) // self.window + 1) * self.window

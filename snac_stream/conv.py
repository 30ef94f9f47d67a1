"""Streaming convolutions with cached causal-padding state.

Conv1d (kernel k, dilation d, stride s, symmetric padding p)::

    offline:  [p zeros] x0 x1 ... x_{N-1} [p zeros]     output j reads padded[j*s : j*s + span]
    stream:   state starts as the p left zeros; inputs are appended; every output whose
              window [j*s, j*s + span) has fully arrived is emitted, and the inputs before
              the next window start are dropped. ``flush`` appends the p right zeros.

Output j therefore waits for input ``j*s + span - p - 1`` (``span = (k-1)*d + 1``): the
offline result, ``span - 1 - p`` inputs late for stride 1.

ConvTranspose1d (kernel 2s, stride s, padding p, output_padding s % 2): each input frame j
writes the 2s positions ``[j*s, j*s + 2s)`` of the uncropped output; the second half
overlaps the next frame's first half (overlap-add)::

    frame j-1: ........[ A_{j-1} | B_{j-1} ]
    frame j:                     [ A_j     | B_j ]
    positions [j*s, (j+1)*s) = B_{j-1} + A_j   -> final once frame j has arrived

The state keeps ``B`` of the last frame; the first p positions of the stream are cropped,
and ``flush`` emits the last p positions (``B`` of the final frame) — exactly the offline
``output[p : p + T*s]``. The per-frame product is one matmul (no slow conv_transpose path
on a few frames).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .streaming import StreamOp, cat_time, compact, empty


@dataclass
class ConvState:
    buffer: torch.Tensor  # [B, C_in, n]: padded inputs not yet consumed (starts as p zeros)


class Conv1d(StreamOp):
    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        stride: int = 1,
        dilation: int = 1,
        padding: int = 0,
        groups: int = 1,
    ):
        self.weight, self.bias = weight, bias
        self.stride, self.dilation, self.padding, self.groups = stride, dilation, padding, groups
        self.in_channels = weight.shape[1] * groups
        self.out_channels = weight.shape[0]
        self.span = (weight.shape[-1] - 1) * dilation + 1

    def init_state(self, batch, device, dtype):
        return ConvState(torch.zeros(batch, self.in_channels, self.padding, device=device, dtype=dtype))

    def _run(self, state: ConvState, buf: torch.Tensor) -> torch.Tensor:
        n = buf.shape[-1]
        if n < self.span:
            state.buffer = compact(buf)
            return empty(buf, self.out_channels)
        n_out = (n - self.span) // self.stride + 1
        used = buf[..., : (n_out - 1) * self.stride + self.span]
        y = F.conv1d(used, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)
        state.buffer = compact(buf[..., n_out * self.stride :])
        return y

    def step(self, state: ConvState, x: torch.Tensor) -> torch.Tensor:
        return self._run(state, cat_time(state.buffer, x))

    def flush(self, state: ConvState, like: torch.Tensor) -> torch.Tensor:
        buf = state.buffer
        pad = buf.new_zeros(buf.shape[0], buf.shape[1], self.padding)
        y = self._run(state, cat_time(buf, pad))
        state.buffer = buf[..., :0]
        return y

    def need(self, j: np.ndarray) -> np.ndarray:
        return np.maximum(np.asarray(j) * self.stride + self.span - self.padding, 0)


@dataclass
class ConvTransposeState:
    carry: torch.Tensor  # [B, C_out, s]: second half B of the last frame (not yet final)
    frames: int = 0  # input frames seen so far


class ConvTranspose1d(StreamOp):
    """Transposed conv with kernel ``2*stride`` (SNAC's upsampler), streamed by overlap-add."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, stride: int, padding: int):
        c_in, c_out, k = self._set_shape(weight, stride, padding)
        # [C_out * 2s, C_in]: one matmul turns a frame into its 2s output positions
        self.matrix = weight.reshape(c_in, c_out * k).t().contiguous()
        self.bias = None if bias is None else bias.reshape(1, c_out, 1)

    def _set_shape(self, weight: torch.Tensor, stride: int, padding: int) -> tuple[int, int, int]:
        """Check kernel == 2 * stride, set stride, padding and channel counts; ``(C_in, C_out, k)``."""
        c_in, c_out, k = weight.shape
        if k != 2 * stride:
            raise ValueError(
                f"streamed transposed conv needs kernel 2*stride, got kernel {k}, stride {stride}"
            )
        self.stride, self.padding = stride, padding
        self.in_channels, self.out_channels = c_in, c_out
        return c_in, c_out, k

    def init_state(self, batch, device, dtype):
        return ConvTransposeState(
            torch.zeros(batch, self.out_channels, self.stride, device=device, dtype=dtype)
        )

    def _finish(self, y: torch.Tensor, state: ConvTransposeState, first: int) -> torch.Tensor:
        """Add bias and crop the first ``padding`` positions of the stream."""
        if self.bias is not None:
            y = y + self.bias
        crop = max(self.padding - first, 0)
        return y[..., crop:] if crop else y

    def step(self, state: ConvTransposeState, x: torch.Tensor) -> torch.Tensor:
        B, _, J = x.shape
        if J == 0:
            return empty(x, self.out_channels)
        s = self.stride
        frames = torch.matmul(self.matrix, x).view(B, self.out_channels, 2, s, J)
        first_half, second_half = frames[:, :, 0], frames[:, :, 1]  # [B, C, s, J]
        previous = torch.cat((state.carry.unsqueeze(-1), second_half[..., :-1]), dim=-1)
        y = (first_half + previous).permute(0, 1, 3, 2).reshape(B, self.out_channels, J * s)
        state.carry = second_half[..., -1].contiguous()
        start = state.frames * s
        state.frames += J
        return self._finish(y, state, start)

    def flush(self, state: ConvTransposeState, like: torch.Tensor) -> torch.Tensor:
        if state.frames == 0:
            return empty(like, self.out_channels)
        y = self._finish(state.carry[..., : self.padding], state, state.frames * self.stride)
        state.carry = state.carry[..., :0]
        return y

    def need(self, j: np.ndarray) -> np.ndarray:
        return (np.asarray(j) + self.padding) // self.stride + 1


__all__ = ["Conv1d", "ConvTranspose1d", "ConvState", "ConvTransposeState", "cat_time"]

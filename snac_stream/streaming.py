"""Stream operators: the model as a chain of layers that take input chunk by chunk.

Every operator is stateless itself (it holds weights); its per-stream state is a small
dataclass made by ``init_state``. The contract, for any split of an input into chunks::

    cat(op.step(s, x0), op.step(s, x1), ..., op.flush(s)) == offline(cat(x0, x1, ...))

``step`` returns the outputs that became final (possibly none); ``flush`` pads the
operator's own input on the right exactly as the offline layer does and returns the rest.
``need(j)`` tells how many inputs must have arrived before output ``j`` is released (the
stream's lookahead), used for the analytic latency. Shapes are ``[B, C, T]``; T counts
samples at the operator's own rate.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


def empty(x: torch.Tensor, channels: int) -> torch.Tensor:
    """A ``[B, channels, 0]`` tensor like ``x``."""
    return x.new_zeros(x.shape[0], channels, 0)


def compact(t: torch.Tensor) -> torch.Tensor:
    """``t``, or a copy of it when it is a small view of a larger buffer: state kept between
    pushes must not hold a chunk-sized intermediate alive (memory would grow with the chunk)."""
    own = t.numel() * t.element_size()
    return t.clone() if t.untyped_storage().nbytes() > 2 * own + 4096 else t


def cat_time(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Concatenate along time, skipping the copy when one side is empty."""
    if a.shape[-1] == 0:
        return b
    if b.shape[-1] == 0:
        return a
    return torch.cat((a, b), dim=-1)


@dataclass
class NoState:
    """State of an operator that has none (pointwise in time)."""


class StreamOp:
    """Base of all stream operators. ``out_channels`` is the channel count of its outputs."""

    out_channels: int

    def init_state(self, batch: int, device: torch.device, dtype: torch.dtype):
        return NoState()

    def step(self, state, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def flush(self, state, like: torch.Tensor) -> torch.Tensor:
        """End of input. ``like`` is a ``[B, C, 0]`` tensor giving batch, dtype and device."""
        return empty(like, self.out_channels)

    def need(self, j: np.ndarray) -> np.ndarray:
        """Inputs needed before output index ``j`` is final (steady state, before the end)."""
        return j + 1


class Pointwise(StreamOp):
    """An operator acting on each time step alone (Snake, 1x1 conv, tanh): no state, no delay."""

    def __init__(self, fn, out_channels: int):
        self.fn = fn
        self.out_channels = out_channels

    def step(self, state, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x) if x.shape[-1] else empty(x, self.out_channels)


@dataclass
class SequentialState:
    children: list = field(default_factory=list)


class Sequential(StreamOp):
    """Operators in a chain; ``flush`` walks them in order, each padding its own input."""

    def __init__(self, ops: list[StreamOp]):
        self.ops = ops
        self.out_channels = ops[-1].out_channels

    def init_state(self, batch, device, dtype):
        return SequentialState([op.init_state(batch, device, dtype) for op in self.ops])

    def step(self, state: SequentialState, x: torch.Tensor) -> torch.Tensor:
        for op, s in zip(self.ops, state.children, strict=True):
            if x.shape[-1] == 0:  # an empty chunk changes no state downstream
                return empty(x, self.out_channels)
            x = op.step(s, x)
        return x

    def flush(self, state: SequentialState, like: torch.Tensor) -> torch.Tensor:
        x = empty(like, 0)  # what the layers before have flushed out, in this layer's input
        for op, s in zip(self.ops, state.children, strict=True):
            head = op.step(s, x) if x.shape[-1] else empty(like, op.out_channels)
            x = cat_time(head, op.flush(s, like))
        return x

    def need(self, j: np.ndarray) -> np.ndarray:
        count = np.asarray(j) + 1  # outputs of the last op that must be released
        for op in reversed(self.ops):
            count = np.where(count > 0, op.need(np.maximum(count - 1, 0)), 0)
        return count


@dataclass
class ResidualState:
    block: object
    skip: torch.Tensor  # inputs whose block output has not arrived yet: the skip delay line


class Residual(StreamOp):
    """``x + block(x)``: the skip path waits in a delay line for the block's lagging output.

    ::

        x ──► block (lags by its lookahead R) ──► y[t]
        └──► delay line (holds R inputs) ───────► x[t] ──► x[t] + y[t]
    """

    def __init__(self, block: StreamOp):
        self.block = block
        self.out_channels = block.out_channels

    def init_state(self, batch, device, dtype):
        skip = torch.zeros(batch, self.out_channels, 0, device=device, dtype=dtype)
        return ResidualState(self.block.init_state(batch, device, dtype), skip)

    def _join(self, state: ResidualState, y: torch.Tensor) -> torch.Tensor:
        n = y.shape[-1]
        out = state.skip[..., :n] + y
        state.skip = compact(state.skip[..., n:])
        return out

    def step(self, state: ResidualState, x: torch.Tensor) -> torch.Tensor:
        state.skip = cat_time(state.skip, x)
        return self._join(state, self.block.step(state.block, x))

    def flush(self, state: ResidualState, like: torch.Tensor) -> torch.Tensor:
        out = self._join(state, self.block.flush(state.block, like))
        if state.skip.shape[-1]:
            raise AssertionError("residual block returned fewer outputs than inputs")
        return out

    def need(self, j: np.ndarray) -> np.ndarray:
        return np.maximum(self.block.need(j), np.asarray(j) + 1)

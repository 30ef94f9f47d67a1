"""Stream operators: the model as a chain of layers that take their input chunk by chunk.

An operator holds weights only; the state of one stream (batch of streams) is a small typed
dataclass made by ``init_state``. The contract, for any split of an input into chunks::

    cat(op.step(s, x0), op.step(s, x1), ..., op.flush(s, like)) == offline(cat(x0, x1, ...))

``step`` returns the outputs that became final (possibly none); ``flush`` pads the operator's
own input on the right exactly as the offline layer does and returns the rest. ``need(j)``
(from the layer's geometry) says how many inputs must have arrived before output ``j`` is
final: the operator's lookahead, composed into the analytic latency.

Tensors are time-major, ``[B, T, C]`` (T counts frames at the operator's own rate);
:class:`TimeMajor` puts a chain behind the model's ``[B, C, T]`` interface.

State tensors are kept with :func:`keep`: once a stream steps with a fixed hop (one coarse
frame, one tick) every state buffer keeps its shape and storage and is updated in place, so
a fixed-hop step has static shapes and addresses (what CUDA graph capture needs).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch


def empty_rows(like: torch.Tensor, channels: int) -> torch.Tensor:
    """A ``[B, 0, channels]`` tensor like ``like``."""
    return like.new_zeros(like.shape[0], 0, channels)


def cat_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Concatenate along time (dim 1), skipping the copy when one side is empty."""
    if a.shape[1] == 0:
        return b
    if b.shape[1] == 0:
        return a
    return torch.cat((a, b), dim=1)


def keep(buffer: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """The new value of state ``buffer``: ``rows`` copied into it in place when the shapes
    agree (the steady state of a fixed hop), else a fresh copy of ``rows``. Never a view of
    ``rows``, which may be the caller's input or a chunk-sized intermediate."""
    if rows is buffer or (rows.data_ptr() == buffer.data_ptr() and rows.stride() == buffer.stride()):
        if rows.shape == buffer.shape:
            return buffer  # already in place
    if rows.shape == buffer.shape:
        return buffer.copy_(rows)
    return rows.clone(memory_format=torch.contiguous_format)


@dataclass
class NoState:
    """State of an operator that has none (pointwise in time)."""


class StreamOp:
    """Base of all stream operators. ``out_channels``: the channel count of its outputs."""

    out_channels: int

    def init_state(self, batch: int, device: torch.device, dtype: torch.dtype):
        return NoState()

    def step(self, state, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def flush(self, state, like: torch.Tensor) -> torch.Tensor:
        """End of input. ``like`` is a ``[B, 0, C]`` tensor giving batch, dtype and device."""
        return empty_rows(like, self.out_channels)

    def need(self, j: np.ndarray) -> np.ndarray:
        """Inputs needed before output index ``j`` is final (steady state, before the end)."""
        return np.asarray(j) + 1

    def children(self, state) -> Iterator[tuple[StreamOp, object]]:
        """The operators inside this one, with their states (see :func:`walk`)."""
        return iter(())


class Pointwise(StreamOp):
    """``fn`` on each time step alone (Snake, 1x1 conv, tanh): no state, no delay."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], out_channels: int):
        self.fn = fn
        self.out_channels = out_channels

    def step(self, state, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x) if x.shape[1] else empty_rows(x, self.out_channels)


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
            if x.shape[1] == 0:  # an empty chunk changes no state downstream
                return empty_rows(x, self.out_channels)
            x = op.step(s, x)
        return x

    def flush(self, state: SequentialState, like: torch.Tensor) -> torch.Tensor:
        x = empty_rows(like, 0)  # what the layers before have flushed out, in this layer's input
        for op, s in zip(self.ops, state.children, strict=True):
            head = op.step(s, x) if x.shape[1] else empty_rows(like, op.out_channels)
            x = cat_rows(head, op.flush(s, like))
        return x

    def need(self, j: np.ndarray) -> np.ndarray:
        count = np.asarray(j) + 1  # outputs of the last op that must be released
        for op in reversed(self.ops):
            count = np.where(count > 0, op.need(np.maximum(count - 1, 0)), 0)
        return count

    def children(self, state: SequentialState):
        return zip(self.ops, state.children, strict=True)


class TimeMajor(StreamOp):
    """A time-major chain behind the model's ``[B, C, T]`` interface: inputs are transposed
    once (a copy: the chain may keep rows of its input in its state), outputs come back as a
    transposed view."""

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

    def children(self, state):
        return iter(((self.inner, state),))


def walk(op: StreamOp, state) -> Iterator[tuple[StreamOp, object]]:
    """``(operator, state)`` for ``op`` and every operator inside it, depth first."""
    yield op, state
    for child, child_state in op.children(state):
        yield from walk(child, child_state)

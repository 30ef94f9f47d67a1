"""The generic kernels: plain torch ops that run on any device and dtype (CUDA, MPS, CPU).

Tensors are time-major, ``[B, T, C]``: a 1x1 conv is a GEMM with the activations on the
left, a depthwise conv is ``k`` shifted multiply-adds over contiguous rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class Linear:
    """``x [..., K] -> x @ weight.T + bias  [..., M]`` (a 1x1 conv in time-major layout).

    Computed in the weight's dtype (a reduced-precision GEMM when the weights were cast, e.g.
    to bf16) and returned in ``x``'s dtype."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        self.weight = weight.contiguous()
        self.bias = None if bias is None else bias.contiguous()
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]

    def gemm(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == self.weight.dtype:
            return self.gemm(x)
        return self.gemm(x.to(self.weight.dtype)).to(x.dtype)


class GenericKernels:
    """The kernel interface, in torch ops. ``reason`` says why this set was chosen."""

    name = "generic"

    def __init__(self, reason: str = "asked for"):
        self.reason = reason

    def linear(
        self, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype | None = None
    ) -> Linear:
        """A prepared GEMM for ``weight [M, K]``, ``bias [M]``; ``dtype`` casts the weights (opt-in)."""
        return Linear(_cast(weight, dtype), _cast(bias, dtype))

    def snake(
        self, x: torch.Tensor, alpha: torch.Tensor, inv_alpha: torch.Tensor, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Snake of ``x [..., C]`` (``alpha``, ``inv_alpha = 1 / (alpha + 1e-9)``: ``[C]``) in four
        passes over one buffer: ``out`` (must not overlap ``x``) or a new one."""
        out = torch.mul(x, alpha) if out is None else torch.mul(x, alpha, out=out)
        self._sin_(out)
        out.mul_(out)
        return torch.addcmul(x, out, inv_alpha, out=out)

    def _sin_(self, t: torch.Tensor) -> None:
        t.sin_()

    def depthwise(
        self, u: torch.Tensor, taps: torch.Tensor, bias: torch.Tensor | None, dilation: int, n_out: int
    ) -> torch.Tensor:
        """Depthwise conv, stride 1: ``u [B, n, C]`` (``n >= n_out + (k-1)*dilation``), ``taps [k, C]``
        -> ``[B, n_out, C]``, ``y[t] = bias + sum_i taps[i] * u[t + i*dilation]``."""
        first = u[:, 0:n_out]
        y = torch.mul(first, taps[0]) if bias is None else torch.addcmul(bias, first, taps[0])
        for i in range(1, taps.shape[0]):
            start = i * dilation
            y.addcmul_(u[:, start : start + n_out], taps[i])
        return y

    def dw_snake(
        self,
        u: torch.Tensor,
        taps: torch.Tensor,
        bias: torch.Tensor | None,
        alpha: torch.Tensor,
        inv_alpha: torch.Tensor,
        dilation: int,
        n_out: int,
    ) -> torch.Tensor:
        """``snake(depthwise(u, ...))``."""
        return self.snake(self.depthwise(u, taps, bias, dilation, n_out), alpha, inv_alpha)

    def describe(self) -> dict:
        return {"kernels": self.name, "reason": self.reason, "gemm": "torch", "snake": "torch"}


def _cast(t: torch.Tensor | None, dtype: torch.dtype | None) -> torch.Tensor | None:
    return t if t is None or dtype is None else t.to(dtype)

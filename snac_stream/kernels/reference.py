"""The kernels' formulas in plain torch: what every kernel set is checked against.

A leaf module: the native self-check, the kernel sets and the tests import it; it imports
nothing of the package.
"""

from __future__ import annotations

import torch


def snake_reference(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """``x + sin(alpha x)^2 / (alpha + 1e-9)`` in the model's op order (alpha broadcasts against x)."""
    return x + (alpha + 1e-9).reciprocal() * torch.sin(alpha * x).pow(2)


def depthwise_reference(
    u: torch.Tensor, taps: torch.Tensor, bias: torch.Tensor | None, dilation: int, n_out: int
) -> torch.Tensor:
    """Depthwise conv, stride 1: ``y[t] = bias + sum_i taps[i] * u[t + i*dilation]``;
    ``u [B, n, C]``, ``taps [k, C]`` -> ``[B, n_out, C]``."""
    y = u[:, 0:n_out] * taps[0]
    if bias is not None:
        y = y + bias
    for i in range(1, taps.shape[0]):
        y = y + u[:, i * dilation : i * dilation + n_out] * taps[i]
    return y


def dw_snake_reference(
    u: torch.Tensor,
    taps: torch.Tensor,
    bias: torch.Tensor | None,
    alpha: torch.Tensor,
    inv_alpha: torch.Tensor,
    dilation: int,
    n_out: int,
) -> torch.Tensor:
    """Snake (``inv_alpha = 1 / (alpha + 1e-9)``) of :func:`depthwise_reference`."""
    y = depthwise_reference(u, taps, bias, dilation, n_out)
    return y + inv_alpha * torch.sin(alpha * y).pow(2)

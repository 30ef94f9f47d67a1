"""SNAC building blocks, parameter-for-parameter the reference package's layers.

Every convolution pads symmetrically (the network is non-causal); lengths follow the
reference exactly. Weight norm uses ``torch.nn.utils.parametrizations.weight_norm`` so the
state-dict keys are ``...parametrizations.weight.original0/1`` as in the published code.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from .attention import LocalMHA

if TYPE_CHECKING:
    from .noise import NoiseSource


def WNConv1d(*args, **kwargs) -> nn.Conv1d:
    return weight_norm(nn.Conv1d(*args, **kwargs))


def WNConvTranspose1d(*args, **kwargs) -> nn.ConvTranspose1d:
    return weight_norm(nn.ConvTranspose1d(*args, **kwargs))


def snake(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Snake activation ``x + sin(alpha x)^2 / alpha``, the reference's exact op order."""
    return x + (alpha + 1e-9).reciprocal() * torch.sin(alpha * x).pow(2)


class Snake1d(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return snake(x, self.alpha)


class ResidualUnit(nn.Module):
    """``x + block(x)``; block = Snake, conv k7 dilated (same padding), Snake, conv 1x1."""

    def __init__(self, dim: int = 16, dilation: int = 1, kernel: int = 7, groups: int = 1):
        super().__init__()
        pad = ((kernel - 1) * dilation) // 2
        self.block = nn.Sequential(
            Snake1d(dim),
            WNConv1d(dim, dim, kernel_size=kernel, dilation=dilation, padding=pad, groups=groups),
            Snake1d(dim),
            WNConv1d(dim, dim, kernel_size=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        pad = (x.shape[-1] - y.shape[-1]) // 2
        if pad > 0:
            x = x[..., pad:-pad]
        return x + y


class EncoderBlock(nn.Module):
    """3 residual units (dilations 1, 3, 9), Snake, strided conv (k=2s, stride s, pad ceil(s/2))."""

    def __init__(self, output_dim: int = 16, input_dim: int | None = None, stride: int = 1, groups: int = 1):
        super().__init__()
        input_dim = input_dim or output_dim // 2
        self.block = nn.Sequential(
            ResidualUnit(input_dim, dilation=1, groups=groups),
            ResidualUnit(input_dim, dilation=3, groups=groups),
            ResidualUnit(input_dim, dilation=9, groups=groups),
            Snake1d(input_dim),
            WNConv1d(
                input_dim, output_dim, kernel_size=2 * stride, stride=stride, padding=math.ceil(stride / 2)
            ),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class NoiseBlock(nn.Module):
    """``x + noise * conv1x1(x)`` with noise ``[B, 1, T]``.

    ``noise=None`` draws ``torch.randn`` like the reference (random on every call); a
    :class:`~snac_model.noise.NoiseSource` draws it by seed and absolute sample position.
    """

    def __init__(self, dim: int, index: int = 0):
        super().__init__()
        self.index = index  # which NoiseBlock of the decoder this is: keys the seeded noise
        self.linear = WNConv1d(dim, dim, kernel_size=1, bias=False)

    def forward(self, x: torch.Tensor, noise: NoiseSource | None = None, start: int = 0) -> torch.Tensor:
        B, _, T = x.shape
        if noise is None:
            n = torch.randn((B, 1, T), device=x.device, dtype=x.dtype)
        else:
            n = noise.draw(self.index, start, T, dtype=x.dtype, device=x.device)
        return x + n * self.linear(x)


class DecoderBlock(nn.Module):
    """Snake, transposed conv (k=2s, stride s, pad ceil(s/2), output_padding s%2), noise, 3 residual units."""

    def __init__(
        self,
        input_dim: int = 16,
        output_dim: int = 8,
        stride: int = 1,
        noise: bool = False,
        groups: int = 1,
        noise_index: int = 0,
    ):
        super().__init__()
        layers: list[nn.Module] = [
            Snake1d(input_dim),
            WNConvTranspose1d(
                input_dim,
                output_dim,
                kernel_size=2 * stride,
                stride=stride,
                padding=math.ceil(stride / 2),
                output_padding=stride % 2,
            ),
        ]
        if noise:
            layers.append(NoiseBlock(output_dim, index=noise_index))
        layers += [
            ResidualUnit(output_dim, dilation=1, groups=groups),
            ResidualUnit(output_dim, dilation=3, groups=groups),
            ResidualUnit(output_dim, dilation=9, groups=groups),
        ]
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, noise: NoiseSource | None = None) -> torch.Tensor:
        for layer in self.block:
            x = layer(x, noise) if isinstance(layer, NoiseBlock) else layer(x)
        return x


class Encoder(nn.Module):
    """Audio ``[B, 1, T]`` -> latent ``[B, encoder_dim * 2**len(strides), T / prod(strides)]``."""

    def __init__(
        self,
        d_model: int = 64,
        strides: list[int] = (3, 3, 7, 7),
        depthwise: bool = False,
        attn_window_size: int | None = 32,
    ):
        super().__init__()
        layers: list[nn.Module] = [WNConv1d(1, d_model, kernel_size=7, padding=3)]
        for stride in strides:
            d_model *= 2
            groups = d_model // 2 if depthwise else 1
            layers += [EncoderBlock(output_dim=d_model, stride=stride, groups=groups)]
        if attn_window_size is not None:
            layers += [LocalMHA(dim=d_model, window_size=attn_window_size)]
        groups = d_model if depthwise else 1
        layers += [WNConv1d(d_model, d_model, kernel_size=7, padding=3, groups=groups)]
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class Decoder(nn.Module):
    """Latent ``[B, latent_dim, T]`` -> audio ``[B, d_out, T * prod(rates)]`` in (-1, 1)."""

    def __init__(
        self,
        input_channel: int,
        channels: int,
        rates: list[int],
        noise: bool = False,
        depthwise: bool = False,
        attn_window_size: int | None = 32,
        d_out: int = 1,
    ):
        super().__init__()
        if depthwise:
            layers: list[nn.Module] = [
                WNConv1d(input_channel, input_channel, kernel_size=7, padding=3, groups=input_channel),
                WNConv1d(input_channel, channels, kernel_size=1),
            ]
        else:
            layers = [WNConv1d(input_channel, channels, kernel_size=7, padding=3)]
        if attn_window_size is not None:
            layers += [LocalMHA(dim=channels, window_size=attn_window_size)]
        output_dim = channels
        for i, stride in enumerate(rates):
            input_dim = channels // 2**i
            output_dim = channels // 2 ** (i + 1)
            groups = output_dim if depthwise else 1
            layers.append(DecoderBlock(input_dim, output_dim, stride, noise, groups=groups, noise_index=i))
        layers += [
            Snake1d(output_dim),
            WNConv1d(output_dim, d_out, kernel_size=7, padding=3),
            nn.Tanh(),
        ]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, noise: NoiseSource | None = None) -> torch.Tensor:
        for layer in self.model:
            x = layer(x, noise) if isinstance(layer, DecoderBlock) else layer(x)
        return x

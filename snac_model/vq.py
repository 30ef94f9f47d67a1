"""Residual vector quantisation with per-level temporal strides (reference-exact).

Level i average-pools the residual over ``stride_i`` latent frames (blocks aligned to the
start), projects to ``codebook_dim``, picks the nearest L2-normalised codeword, projects
back and repeats it ``stride_i`` times; level i+1 quantises what is left.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .layers import WNConv1d


class QuantizerTables(NamedTuple):
    """One level's weights as plain tensors: what :func:`quantize` needs. Computed once and
    kept, they make a stream skip the per-call weight norm and codebook normalisation with
    the same values (so the same codes)."""

    stride: int
    in_weight: torch.Tensor  # [d, D, 1]
    in_bias: torch.Tensor | None
    codebook: torch.Tensor  # [N, d]
    codebook_normalized: torch.Tensor  # [N, d], rows of unit length
    codebook_sq: torch.Tensor  # [1, N]: squared norms of the normalised rows
    out_weight: torch.Tensor  # [D, d, 1]
    out_bias: torch.Tensor | None


def nearest(z_e: torch.Tensor, t: QuantizerTables) -> torch.Tensor:
    """Index of the nearest L2-normalised codeword: ``z_e [B, d, T]`` -> ``[B, T]``."""
    B, d, T = z_e.shape
    encodings = F.normalize(z_e.transpose(1, 2).reshape(B * T, d))
    dist = encodings.pow(2).sum(1, keepdim=True) - 2 * encodings @ t.codebook_normalized.t() + t.codebook_sq
    return (-dist).max(1)[1].reshape(B, T)


def quantize(z: torch.Tensor, t: QuantizerTables) -> tuple[torch.Tensor, torch.Tensor]:
    """One level: ``z [B, D, T]`` (T a multiple of the stride) -> (``z_q [B, D, T]``, codes ``[B, T/s]``)."""
    if t.stride > 1:
        z = F.avg_pool1d(z, t.stride, t.stride)
    z_e = F.conv1d(z, t.in_weight, t.in_bias)
    indices = nearest(z_e, t)
    codewords = F.embedding(indices, t.codebook).transpose(1, 2)
    # The reference's straight-through form; not bit-identical to ``codewords`` in floats.
    z_q = F.conv1d(z_e + (codewords - z_e).detach(), t.out_weight, t.out_bias)
    if t.stride > 1:
        z_q = z_q.repeat_interleave(t.stride, dim=-1)
    return z_q, indices


def residual_quantize(
    z: torch.Tensor, levels: list[QuantizerTables]
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """All levels, each on what the previous ones left: ``z [B, D, T]`` -> (``z_q``, codes per level)."""
    z_q = 0
    residual = z
    codes = []
    for level in levels:
        z_q_i, indices_i = quantize(residual, level)
        z_q = z_q + z_q_i
        residual = residual - z_q_i
        codes.append(indices_i)
    return z_q, codes


class VectorQuantize(nn.Module):
    def __init__(self, input_dim: int, codebook_size: int, codebook_dim: int, stride: int = 1):
        super().__init__()
        self.codebook_size = codebook_size
        self.codebook_dim = codebook_dim
        self.stride = stride
        self.in_proj = WNConv1d(input_dim, codebook_dim, kernel_size=1)
        self.out_proj = WNConv1d(codebook_dim, input_dim, kernel_size=1)
        self.codebook = nn.Embedding(codebook_size, codebook_dim)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``z [B, D, T]`` (T a multiple of stride) -> (``z_q [B, D, T]``, ``codes [B, T/stride]``)."""
        return quantize(z, self.tables())

    def tables(self) -> QuantizerTables:
        """This level's weights as plain tensors (weight norm applied, codebook normalised)."""
        codebook = F.normalize(self.codebook.weight)
        return QuantizerTables(
            self.stride,
            self.in_proj.weight,
            self.in_proj.bias,
            self.codebook.weight,
            codebook,
            codebook.pow(2).sum(1, keepdim=True).t(),
            self.out_proj.weight,
            self.out_proj.bias,
        )

    def decode_code(self, indices: torch.Tensor) -> torch.Tensor:
        """``[B, T]`` -> codewords ``[B, codebook_dim, T]``."""
        return F.embedding(indices, self.codebook.weight).transpose(1, 2)

    def embed(self, indices: torch.Tensor) -> torch.Tensor:
        """``[B, T]`` codes -> latent contribution ``[B, D, T]`` (not yet repeated by stride)."""
        return self.out_proj(self.decode_code(indices))


class ResidualVectorQuantize(nn.Module):
    def __init__(
        self, input_dim: int = 512, codebook_size: int = 1024, codebook_dim: int = 8, vq_strides=(1, 1, 1, 1)
    ):
        super().__init__()
        self.n_codebooks = len(vq_strides)
        self.codebook_dim = codebook_dim
        self.codebook_size = codebook_size
        self.quantizers = nn.ModuleList(
            [VectorQuantize(input_dim, codebook_size, codebook_dim, stride) for stride in vq_strides]
        )

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return residual_quantize(z, self.tables())

    def tables(self) -> list[QuantizerTables]:
        """Every level's :meth:`VectorQuantize.tables`."""
        return [q.tables() for q in self.quantizers]

    def from_codes(self, codes: list[torch.Tensor], n_frames: int | None = None) -> torch.Tensor:
        """Codes per level -> ``z_q [B, D, n_frames]``; level i is repeated ``stride_i`` times.

        ``n_frames`` defaults to ``len(codes[0]) * stride_0``; a shorter count truncates the
        repeats (a stream that ended inside a coarse frame).
        """
        if n_frames is None:
            n_frames = codes[0].shape[-1] * self.quantizers[0].stride
        z_q = 0.0
        for quantizer, c in zip(self.quantizers, codes, strict=True):
            z_q_i = quantizer.embed(c).repeat_interleave(quantizer.stride, dim=-1)
            z_q = z_q + z_q_i[..., :n_frames]
        return z_q

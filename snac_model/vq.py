"""Residual vector quantisation with per-level temporal strides (reference-exact).

Level i average-pools the residual over ``stride_i`` latent frames (blocks aligned to the
start), projects to ``codebook_dim``, picks the nearest L2-normalised codeword, projects
back and repeats it ``stride_i`` times; level i+1 quantises what is left.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import WNConv1d


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
        if self.stride > 1:
            z = F.avg_pool1d(z, self.stride, self.stride)
        z_e = self.in_proj(z)
        indices = self.nearest(z_e)
        codewords = self.decode_code(indices)
        # The reference's straight-through form; not bit-identical to ``codewords`` in floats.
        z_q = self.out_proj(z_e + (codewords - z_e).detach())
        if self.stride > 1:
            z_q = z_q.repeat_interleave(self.stride, dim=-1)
        return z_q, indices

    def nearest(self, z_e: torch.Tensor) -> torch.Tensor:
        """Index of the nearest L2-normalised codeword: ``z_e [B, d, T]`` -> ``[B, T]``."""
        B, d, T = z_e.shape
        encodings = F.normalize(z_e.transpose(1, 2).reshape(B * T, d))
        codebook = F.normalize(self.codebook.weight)
        dist = (
            encodings.pow(2).sum(1, keepdim=True)
            - 2 * encodings @ codebook.t()
            + codebook.pow(2).sum(1, keepdim=True).t()
        )
        return (-dist).max(1)[1].reshape(B, T)

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
        z_q = 0
        residual = z
        codes = []
        for quantizer in self.quantizers:
            z_q_i, indices_i = quantizer(residual)
            z_q = z_q + z_q_i
            residual = residual - z_q_i
            codes.append(indices_i)
        return z_q, codes

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

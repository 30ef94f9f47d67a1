"""Windowed local multi-head self-attention (LocalMHA), as in the reference package.

The sequence ``[B, C, T]`` is cut into non-overlapping windows of ``window_size`` frames,
aligned to the start; each window attends to itself with rotary positions 0..W-1.
The reference requires ``T % window_size == 0``; here a final partial window attends
within itself (positions 0..r-1), which is what a streamed flush of a partial window does.
"""

from __future__ import annotations

import torch
from torch import nn


class SinusoidalEmbeddings(nn.Module):
    """Rotary frequencies; ``inv_freq`` is a persistent float32-computed buffer (state-dict key)."""

    def __init__(self, dim: int, scale_base: int | None = None):
        super().__init__()
        inv_freq = 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim))
        self.register_buffer("inv_freq", inv_freq)
        self.scale_base = scale_base

    def forward(self, seq_len: int) -> torch.Tensor:
        """Angles ``[seq_len, dim]`` for positions 0..seq_len-1."""
        t = torch.arange(seq_len, device=self.inv_freq.device).type_as(self.inv_freq)
        freqs = torch.outer(t, self.inv_freq)
        return torch.cat((freqs, freqs), dim=-1)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class LocalMHA(nn.Module):
    def __init__(self, dim: int = 1024, window_size: int = 32, dim_head: int = 64):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.heads = dim // dim_head
        self.dim_head = dim_head
        self.window_size = window_size
        self.to_qkv = nn.Linear(dim, dim * 3, bias=False)
        self.rel_pos = SinusoidalEmbeddings(dim_head, scale_base=window_size // 2)
        self.to_out = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, C, T]`` -> ``[B, C, T]``; a final partial window attends within itself."""
        T = x.shape[-1]
        full = (T // self.window_size) * self.window_size
        parts = []
        if full:
            parts.append(self.windows(x[..., :full], self.window_size))
        if T > full:
            parts.append(self.windows(x[..., full:], T - full))
        if len(parts) == 1:
            return parts[0]
        return torch.cat(parts, dim=-1) if parts else x

    def windows(self, x: torch.Tensor, n: int) -> torch.Tensor:
        """Attend within consecutive windows of ``n`` frames; ``x [B, C, w*n]`` -> same shape."""
        B, C, T = x.shape
        w = T // n
        residual = x
        h = self.norm(x.transpose(1, 2))
        q, k, v = self.to_qkv(h).chunk(3, dim=-1)
        q, k, v = (t.reshape(B, w, n, self.heads, self.dim_head).permute(0, 3, 1, 2, 4) for t in (q, k, v))
        freqs = self.rel_pos(n)
        cos, sin = freqs.cos(), freqs.sin()
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        out = nn.functional.scaled_dot_product_attention(q, k, v)
        out = out.permute(0, 2, 3, 1, 4).reshape(B, T, C)
        return self.to_out(out).transpose(1, 2) + residual

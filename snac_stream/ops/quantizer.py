"""The residual VQ in a stream: coarse blocks on the encoder side, ticks on the decoder side.

Tensors are channel-major here, ``[B, D, T]``, as in the model's quantizer.

Encoder: level i quantises the residual left by levels < i, pooled over ``stride_i``
frames. Every level of one coarse block (``stride_0`` latent frames) therefore becomes
known together, once the whole block has arrived::

    latent frames   | t0 t1 t2 t3 | t4 t5 t6 t7 |      (stride_0 = 4)
    level 0 codes   |     c0[0]   |    c0[1]    |
    level 1 codes   | c1[0] c1[1] | c1[2] c1[3] |      all emitted when the block is complete
    level 2 codes   | c2[0] ..... | ........... |

Decoder: tick t (one latent frame) needs, for each level, the token ``t // stride_i``,
which arrives with the first tick it covers. ``z_q[t] = sum_i embed_i(code_i[t // stride_i])``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from snac_model.vq import QuantizerTables, ResidualVectorQuantize, residual_quantize

from .base import keep


@dataclass
class BlockState:
    buffer: torch.Tensor  # [B, D, n < stride_0]: latent frames of the incomplete coarse block


class BlockQuantizer:
    """Latent frames in, codes of whole coarse blocks out (the offline quantizer on each block)."""

    def __init__(self, quantizer: ResidualVectorQuantize):
        self.quantizer = quantizer
        self.strides = [q.stride for q in quantizer.quantizers]
        self.block = self.strides[0]
        with torch.inference_mode():  # weight norm and codebook normalisation done once (same values)
            self.tables = [
                QuantizerTables(*(t.detach() if isinstance(t, torch.Tensor) else t for t in level))
                for level in quantizer.tables()
            ]

    def init_state(self, batch, device, dtype) -> BlockState:
        dim = self.quantizer.quantizers[0].in_proj.in_channels
        return BlockState(torch.zeros(batch, dim, 0, device=device, dtype=dtype))

    def step(self, state: BlockState, z: torch.Tensor) -> list[torch.Tensor]:
        buf = torch.cat((state.buffer, z), dim=-1) if state.buffer.shape[-1] else z
        full = buf.shape[-1] // self.block * self.block
        state.buffer = keep(state.buffer, buf[..., full:])
        if full == 0:
            return [torch.zeros(buf.shape[0], 0, dtype=torch.long, device=buf.device) for _ in self.strides]
        _, codes = residual_quantize(buf[..., :full], self.tables)
        return codes

    def need(self, b: np.ndarray) -> np.ndarray:
        """Latent frames needed before coarse block ``b`` is coded."""
        return (np.asarray(b) + 1) * self.block


@dataclass
class TickState:
    tick: int = 0  # ticks decoded so far
    last: list = field(
        default_factory=list
    )  # per level: embedding [B, D, 1] of the token covering the last tick


class TickEmbedder:
    """Codes for ticks ``[t0, t1)`` -> ``z_q [B, D, t1 - t0]``, equal to the offline ``from_codes``."""

    def __init__(self, quantizer: ResidualVectorQuantize):
        self.quantizer = quantizer
        self.strides = [q.stride for q in quantizer.quantizers]
        with torch.inference_mode():  # weight norm folded once: (codebook [N, d], W [D, d, 1], bias [D])
            self.tables = [
                (q.codebook.weight.detach(), q.out_proj.weight.detach(), _detach(q.out_proj.bias))
                for q in quantizer.quantizers
            ]

    def embed(self, level: int, codes: torch.Tensor) -> torch.Tensor:
        """``codes [B, k]`` -> ``[B, D, k]``: the model's ``quantizers[level].embed`` with the
        out-projection's weight norm folded (same ops, same values)."""
        codebook, weight, bias = self.tables[level]
        return F.conv1d(F.embedding(codes, codebook).transpose(1, 2), weight, bias)

    def init_state(self) -> TickState:
        return TickState(0, [None] * len(self.strides))

    def step(self, state: TickState, codes: list[torch.Tensor], t1: int) -> torch.Tensor:
        t0 = state.tick
        z_q = 0.0
        for i, (s, c) in enumerate(zip(self.strides, codes, strict=True)):
            parts = [state.last[i]] if t0 % s else []  # the first tick continues an earlier token
            if c.shape[-1]:
                parts.append(self.embed(i, c))  # [B, D, k]: tokens ceil(t0/s) .. ceil(t1/s)-1
            emb = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
            last = emb[..., -1:]
            state.last[i] = last.clone() if state.last[i] is None else keep(state.last[i], last)
            z_q = z_q + emb.repeat_interleave(s, dim=-1)[..., t0 % s : t0 % s + (t1 - t0)]
        state.tick = t1
        return z_q


def _detach(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach()

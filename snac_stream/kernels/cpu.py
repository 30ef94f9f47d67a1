"""The CPU fast kernels: oneDNN pre-packed GEMMs and the native fused Snake kernels.

Each part is used only where it is supported, and said so by :meth:`CpuKernels.describe`:

- GEMMs: a weight pre-packed once for oneDNN (``torch.ops.mkldnn._reorder_linear_weight``,
  ``_linear_pointwise``: private ops, probed once on a small problem and checked against
  ``F.linear``) for float32, and for bf16 where the CPU has oneDNN's bf16 path (AVX512-BW/VL/DQ
  or AVX-NE-CONVERT); else ``F.linear`` (the generic path), with the reason logged.
- Snake and depthwise conv + Snake in float32: one pass each in the C kernels of
  :mod:`.native` where they load; else NumPy's SIMD sine inside the torch passes.
"""

from __future__ import annotations

import functools
import logging

import numpy as np
import torch

from . import native
from .generic import GenericKernels, Linear

log = logging.getLogger("snac_stream.kernels")


@functools.cache
def onednn_linear(dtype: torch.dtype) -> str:
    """``""`` if oneDNN's packed linear works for ``dtype`` on this CPU, else why not (probed once)."""
    try:
        w = torch.randn(16, 8, generator=torch.Generator().manual_seed(0)).to(dtype)
        x = torch.randn(3, 8, generator=torch.Generator().manual_seed(1)).to(dtype)
        packed = torch.ops.mkldnn._reorder_linear_weight(w, 3)
        y = torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")
    except (AttributeError, RuntimeError, NotImplementedError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return f"oneDNN packed linear unavailable for {dtype} on this CPU/torch build: {first}"
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    if not torch.allclose(y.float(), x.float() @ w.float().t(), atol=tol, rtol=tol):
        return f"oneDNN packed linear gives wrong results for {dtype} on this build"
    return ""


class PackedLinear(Linear):
    """:class:`~.generic.Linear` with the weight pre-packed for oneDNN once (bias fused)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__(weight, bias)
        self.packed = torch.ops.mkldnn._reorder_linear_weight(self.weight, 8)

    def gemm(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() == 0:
            return super().gemm(x)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")


def _rows_contiguous(t: torch.Tensor) -> bool:
    """``t [B, T, C]`` with each item's rows contiguous (``t[b]`` is one block of memory)."""
    return t.dim() == 3 and t.stride(2) == 1 and (t.stride(1) == t.shape[2] or t.shape[1] <= 1)


def _per_channel(x: torch.Tensor, params) -> bool:
    return all(p.shape == (x.shape[2],) and p.dtype == torch.float32 and p.is_contiguous() for p in params)


class CpuKernels(GenericKernels):
    """The fast CPU set. ``lib``: the native kernels (None: torch passes); ``packing``: whether
    float32 GEMMs are pre-packed for oneDNN."""

    name = "native"

    def __init__(self, lib: native.NativeKernels | None, packing: bool, reason: str = "the CPU fast path"):
        super().__init__(reason)
        self.lib, self.packing = lib, packing
        self._warned: set[str] = set()

    def linear(
        self, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype | None = None
    ) -> Linear:
        dtype = dtype or weight.dtype
        if dtype not in (torch.float32, torch.bfloat16) or weight.device.type != "cpu" or not self.packing:
            return super().linear(weight, bias, dtype)
        why = onednn_linear(dtype)
        if why:
            if why not in self._warned:
                self._warned.add(why)
                log.warning("%s; running those GEMMs unpacked (F.linear)", why)
            return super().linear(weight, bias, dtype)
        return PackedLinear(weight.to(dtype), None if bias is None else bias.to(dtype))

    def _native_for(self, x: torch.Tensor, *params: torch.Tensor) -> native.NativeKernels | None:
        lib = self.lib
        if lib is None or x.dtype != torch.float32 or x.device.type != "cpu" or not _rows_contiguous(x):
            return None
        return lib if _per_channel(x, params) else None

    def snake(self, x, alpha, inv_alpha, out=None):
        lib = self._native_for(x, alpha, inv_alpha)
        if lib is not None and (out is None or _rows_contiguous(out)):
            out = torch.empty_like(x, memory_format=torch.contiguous_format) if out is None else out
            lib.snake(x, alpha, inv_alpha, out)
            return out
        return super().snake(x, alpha, inv_alpha, out)

    def _sin_(self, t: torch.Tensor) -> None:
        if t.dtype == torch.float32 and t.device.type == "cpu" and t.numel() >= 256:
            a = t.numpy()  # shares memory; NumPy's SIMD sine is ~2.5x torch's here, same accuracy
            np.sin(a, out=a)
        else:
            t.sin_()

    def dw_snake(self, u, taps, bias, alpha, inv_alpha, dilation, n_out):
        params = (alpha, inv_alpha) if bias is None else (alpha, inv_alpha, bias)
        lib = self._native_for(u, *params)
        if lib is not None and u.is_contiguous() and taps.is_contiguous() and taps.shape[1] == u.shape[2]:
            return lib.dw_snake(u, taps, bias, alpha, inv_alpha, dilation, n_out)
        return super().dw_snake(u, taps, bias, alpha, inv_alpha, dilation, n_out)

    def describe(self) -> dict:
        return {
            "kernels": self.name,
            "reason": self.reason,
            "gemm": "onednn-packed" if self.packing else "torch",
            "gemm_bf16": "onednn-packed" if self.packing and not onednn_linear(torch.bfloat16) else "torch",
            "snake": "native-c" if self.lib is not None else "numpy-sin",
            "native_library": None if self.lib is None else str(self.lib.path),
        }

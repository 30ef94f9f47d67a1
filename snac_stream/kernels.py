"""Fast kernels for the time-major ("TC", ``[B, T, C]``) streaming path.

Measured on the 2-core AMD EPYC (AVX-512) machine of this project, one thread, fp32:

- float32 Snake, and a depthwise conv followed by Snake (:func:`dw_snake`), run as one
  pass each in the C kernels of :mod:`snac_stream.native` (built on first use; 2-3x faster
  than the passes below). Without them: ``torch.sin`` goes through MKL VML here (~1.3
  ns/element); NumPy's SIMD ``np.sin`` is ~0.5 ns/element at the same accuracy (<= 1 ulp).
  Every other pass of Snake (mul, square, multiply-add) costs ~0.1 ns/element, so
  :func:`snake` does the sine with NumPy (float32) and the rest as three in-place torch
  passes on one buffer. float64 keeps ``torch.sin`` (NumPy's float64 sine is slower).
- Depthwise dilated k7 convolutions as seven shifted multiply-adds over contiguous
  ``[T, C]`` rows (:func:`depthwise`) beat oneDNN's grouped conv at every streaming size
  (e.g. 39 vs 62 us at 512 ch x 32 frames) and need no layout change.
- GEMMs with the activations as the left operand (``x [T, K] @ W^T``) run at ~100 GFLOP/s;
  the transposed orientation (``W @ x``) is up to 7x slower at small T. oneDNN with a
  pre-packed weight (:class:`Linear`) is as fast or faster than MKL's ``F.linear`` at every
  shape of the decoder hop (sum 8.4 vs 12.5 ms), most of all for weights that do not stay
  in cache (the 24 kHz decoder's first upsampler, 33.5 MB: 1.5 vs 4.5 ms at 4 frames), and
  fuses the bias (``addmm`` first copies the broadcast bias over the whole output).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from . import native

PACK_MIN_WEIGHTS = 0  # fp32 weights with at least this many elements are pre-packed (all: never slower)


def snake_reference(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """The reference formula ``x + sin(alpha x)^2 / (alpha + 1e-9)`` (alpha broadcasts against x)."""
    return x + (alpha + 1e-9).reciprocal() * torch.sin(alpha * x).pow(2)


def snake(
    x: torch.Tensor, alpha: torch.Tensor, inv_alpha: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Snake in four passes over one buffer (``out``, or a new one); ``inv_alpha = 1 / (alpha + 1e-9)``.

    ``x [..., C]`` with ``alpha``/``inv_alpha`` ``[C]`` (any broadcastable shape works);
    ``out`` must not overlap ``x``. Equal to :func:`snake_reference` to float rounding
    (float64: ~1e-16). float32 ``[B, T, C]`` with rows contiguous and ``[C]`` parameters
    take the fused C kernel of :mod:`snac_stream.native` where it is available (one pass)."""
    native = _native_for(x, alpha, inv_alpha)
    if native is not None and (out is None or _rows_contiguous(out)):
        out = torch.empty_like(x, memory_format=torch.contiguous_format) if out is None else out
        native.snake(x, alpha, inv_alpha, out)
        return out
    out = torch.mul(x, alpha) if out is None else torch.mul(x, alpha, out=out)
    if out.dtype == torch.float32 and out.device.type == "cpu" and out.numel() >= 256:
        a = out.numpy()  # shares memory; no copy
        np.sin(a, out=a)
    else:
        out.sin_()
    out.mul_(out)
    return torch.addcmul(x, out, inv_alpha, out=out)


def _rows_contiguous(t: torch.Tensor) -> bool:
    """``t [B, T, C]`` with each item's rows contiguous (``t[b]`` is one block of memory)."""
    return t.dim() == 3 and t.stride(2) == 1 and (t.stride(1) == t.shape[2] or t.shape[1] <= 1)


def _native_for(x: torch.Tensor, *params: torch.Tensor):
    """The native kernels if they can take ``x`` (float32 CPU ``[B, T, C]``, rows contiguous)
    with per-channel contiguous float32 ``params`` (each ``[C]``); else None."""
    if x.dtype != torch.float32 or x.device.type != "cpu" or not _rows_contiguous(x):
        return None
    for p in params:
        if p.shape != (x.shape[2],) or p.dtype != torch.float32 or not p.is_contiguous():
            return None
    return native.load()


def dw_snake(
    u: torch.Tensor,
    taps: torch.Tensor,
    bias: torch.Tensor | None,
    alpha: torch.Tensor,
    inv_alpha: torch.Tensor,
    dilation: int,
    n_out: int,
) -> torch.Tensor:
    """``snake(depthwise(u, taps, bias, dilation, n_out))``: fused in one pass by the native
    kernel for float32, else the two steps below."""
    params = (alpha, inv_alpha) if bias is None else (alpha, inv_alpha, bias)
    native = _native_for(u, *params)
    if native is not None and u.is_contiguous() and taps.is_contiguous() and taps.shape[1] == u.shape[2]:
        return native.dw_snake(u, taps, bias, alpha, inv_alpha, dilation, n_out)
    return snake(depthwise(u, taps, bias, dilation, n_out), alpha, inv_alpha)


def depthwise(buf: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, dilation: int, n_out: int):
    """Depthwise conv over time as shifted multiply-adds, stride 1.

    ``buf [B, n, C]`` (n >= n_out + (k-1)*dilation), ``weight [k, C]``, ``bias [C]`` ->
    ``[B, n_out, C]`` with ``y[t] = bias + sum_i weight[i] * buf[t + i*dilation]``."""
    first = buf[:, 0:n_out]
    y = torch.mul(first, weight[0]) if bias is None else torch.addcmul(bias, first, weight[0])
    for i in range(1, weight.shape[0]):
        start = i * dilation
        y.addcmul_(buf[:, start : start + n_out], weight[i])
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
    """Snake of a depthwise conv as plain formulas (what ``torch.compile`` fuses into one loop)."""
    y = u[:, 0:n_out] * taps[0]
    if bias is not None:
        y = y + bias
    for i in range(1, taps.shape[0]):
        y = y + u[:, i * dilation : i * dilation + n_out] * taps[i]
    return y + inv_alpha * torch.sin(alpha * y).pow(2)


def cat_snake_reference(
    hist: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor, inv_alpha: torch.Tensor
) -> torch.Tensor:
    """``cat(hist, snake(x))`` along time, as plain formulas."""
    return torch.cat((hist, x + inv_alpha * torch.sin(alpha * x).pow(2)), dim=1)


def snake_formula(x: torch.Tensor, alpha: torch.Tensor, inv_alpha: torch.Tensor) -> torch.Tensor:
    return x + inv_alpha * torch.sin(alpha * x).pow(2)


class CompiledKernels:
    """``torch.compile``'d (inductor, dynamic shapes) fused kernels: one loop each instead of
    several passes, with SLEEF's vectorised sine. Compiling costs tens of seconds on first
    use, so this is opt-in (``compile=True``), never a start-up cost."""

    def __init__(self):
        self.snake = torch.compile(snake_formula, dynamic=True)
        self.dw_snake = torch.compile(dw_snake_reference, dynamic=True)
        self.cat_snake = torch.compile(cat_snake_reference, dynamic=True)


@functools.cache
def compiled() -> CompiledKernels:
    """The process-wide compiled kernels (compiled lazily, on their first call)."""
    return CompiledKernels()


@functools.cache
def _onednn_linear() -> bool:
    """Whether oneDNN's packed linear is available and correct on this build (probed once)."""
    try:
        w = torch.randn(16, 8)
        x = torch.randn(3, 8)
        packed = torch.ops.mkldnn._reorder_linear_weight(w, 3)
        y = torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")
        return bool(torch.allclose(y, x @ w.t(), atol=1e-4))
    except Exception:  # noqa: BLE001 - any failure means "not available"
        return False


class Linear:
    """``x [..., K] -> x @ weight.T + bias  [..., M]`` (a 1x1 conv in time-major layout).

    fp32 weights of at least :data:`PACK_MIN_WEIGHTS` elements, and all bf16 weights, on the
    CPU are pre-packed for oneDNN once; everything else (float64, other devices) uses ``F.linear``.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, pack: bool | None = None):
        self.weight = weight.contiguous()
        self.bias = None if bias is None else bias.contiguous()
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        if pack is None:
            pack = weight.dtype == torch.bfloat16 or (
                weight.dtype == torch.float32 and weight.numel() >= PACK_MIN_WEIGHTS
            )
        self.packed = None
        cpu = weight.device.type == "cpu"
        if pack and cpu and weight.dtype in (torch.float32, torch.bfloat16) and _onednn_linear():
            self.packed = torch.ops.mkldnn._reorder_linear_weight(self.weight, 8)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None and x.numel() > 0:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)


@contextlib.contextmanager
def intra_op_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads, restoring the setting after (``None``:
    leave it). Streaming steps default to 1: on this 2-core machine a second OpenMP thread
    helps only while the other core is idle, and when it is busy every parallel region
    waits for a descheduled worker (per-hop times 5-10x worse, measured)."""
    old = torch.get_num_threads()
    if n is None or n == old:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def tune_allocator() -> bool:
    """Stop glibc from returning freed memory to the OS on every call (``M_MMAP_MAX=0``,
    ``M_TRIM_THRESHOLD=2 GiB``, the most ``mallopt`` takes), the run-time equivalent of
    ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=...``: large tensors are then reused from the heap
    instead of being mmap'd and page-faulted on every step. Process-wide; returns whether
    it took effect (False off glibc)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        m_trim_threshold, m_mmap_max = -1, -4
        ok = libc.mallopt(m_mmap_max, 0) == 1
        return bool(libc.mallopt(m_trim_threshold, ctypes.c_int(2**31 - 1)) == 1 and ok)
    except (OSError, AttributeError):
        return False


__all__ = [
    "snake",
    "snake_reference",
    "depthwise",
    "dw_snake",
    "dw_snake_reference",
    "cat_snake_reference",
    "compiled",
    "Linear",
    "tune_allocator",
    "intra_op_threads",
    "PACK_MIN_WEIGHTS",
]

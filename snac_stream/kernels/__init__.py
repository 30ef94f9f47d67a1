"""Kernels behind one interface, chosen per device.

The stream operators (:mod:`snac_stream.ops`) call a kernel set for their GEMMs, Snakes and
depthwise convolutions; which set runs is decided once, when an engine is built:

- ``generic`` (:mod:`.generic`): torch ops only; any device (CUDA, MPS, CPU), any dtype.
- ``native`` (:mod:`.cpu`): the CPU fast path, oneDNN pre-packed GEMMs and the fused C
  Snake kernels of :mod:`.native`, each where this CPU and torch build support it.
- ``auto`` (default): ``native`` on the CPU when any part of it is supported, else ``generic``,
  with the reason logged.

``SNAC_STREAM_KERNELS=generic|native|auto`` in the environment sets the choice for a whole
process; an engine's ``kernels=`` argument overrides it. Every set gives the same results to
float rounding (the exactness tests run on both).
"""

from __future__ import annotations

import logging
import os

import torch

from . import native
from .cpu import CpuKernels, onednn_linear
from .generic import GenericKernels, Linear

KERNELS_ENV = "SNAC_STREAM_KERNELS"
CHOICES = ("auto", "native", "generic")
Kernels = GenericKernels  # the interface; CpuKernels implements it too

log = logging.getLogger("snac_stream.kernels")


class KernelsUnavailable(RuntimeError):
    """The kernel set asked for cannot run here; the message says why."""


def requested(choice: str | None = None) -> str:
    """``choice``, else ``$SNAC_STREAM_KERNELS``, else ``auto``; checked against :data:`CHOICES`."""
    value = (choice if choice is not None else os.environ.get(KERNELS_ENV) or "auto").strip().lower()
    if value not in CHOICES:
        source = "kernels=" if choice is not None else f"{KERNELS_ENV}="
        raise ValueError(f"{source}{value!r} is not a kernel set; use one of {', '.join(CHOICES)}")
    return value


def select(device: torch.device | str = "cpu", choice: str | None = None) -> GenericKernels:
    """The kernel set for engines on ``device`` (see the module doc)."""
    want = requested(choice)
    device = torch.device(device)
    if want == "generic":
        return GenericKernels("asked for (generic)")
    if device.type != "cpu":
        if want == "native":
            raise KernelsUnavailable(f"the native kernels run on the CPU only, not on {device}; use generic")
        return GenericKernels(f"{device.type} device: the native kernels are CPU-only")
    lib, why_no_lib = native.probe()
    why_no_pack = onednn_linear(torch.float32)
    if want == "native" and lib is None:
        raise KernelsUnavailable(f"{KERNELS_ENV}=native, but {why_no_lib}")
    if lib is None and why_no_pack:
        reason = f"no CPU fast path: {why_no_lib}; {why_no_pack}"
        log.info("kernels: generic (%s)", reason)
        return GenericKernels(reason)
    parts = [why for why in (why_no_lib, why_no_pack) if why]
    reason = "the CPU fast path" + (f" without {'; '.join(parts)}" if parts else "")
    if parts:
        log.info("kernels: native, partly (%s)", "; ".join(parts))
    return CpuKernels(lib, packing=not why_no_pack, reason=reason)


__all__ = [
    "CHOICES",
    "KERNELS_ENV",
    "CpuKernels",
    "GenericKernels",
    "Kernels",
    "KernelsUnavailable",
    "Linear",
    "onednn_linear",
    "requested",
    "select",
]

"""Process-wide settings for an application that streams, set once where it starts.

Nothing in the library changes them by itself: ``snac-stream`` commands call :func:`configure`
first thing; a library user who wants the same calls it once, before building engines (and,
for huge pages, before importing torch)::

    import snac_stream.runtime
    snac_stream.runtime.configure()      # threads=1, allocator tuned, weights in huge pages
    import torch, snac_stream ...

- ``threads``: torch intra-op threads for the whole process. Streaming steps are many small
  operators: on a 2-core machine a second OpenMP thread helps only while the other core is
  idle, and with it busy every parallel region waits for a descheduled worker; the batched
  engines run one shard per core instead (:class:`snac_stream.engine.batcher.BatcherPool`).
- ``allocator``: glibc keeps freed memory instead of unmapping it (``M_MMAP_MAX=0``, the most
  ``M_TRIM_THRESHOLD`` takes): large tensors are reused from the heap instead of being mmap'd
  and page-faulted on every step.
- ``huge_pages``: torch puts buffers of 2 MiB and more (the weights) in transparent huge pages
  (``THP_MEM_ALLOC_ENABLE``, which torch reads once, at its first allocation): fewer TLB misses
  streaming the decoder's weights every hop. The variable is set only while torch starts and
  then removed again, so child processes do not inherit it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys
from dataclasses import dataclass

HUGE_PAGES_ENV = "THP_MEM_ALLOC_ENABLE"

log = logging.getLogger("snac_stream.runtime")


@dataclass(frozen=True)
class RuntimeSettings:
    """What :func:`configure` did."""

    threads: int  # torch intra-op threads now
    allocator_tuned: bool  # mallopt took effect (False off glibc, or not asked)
    huge_pages: bool  # torch allocates large buffers in huge pages


_settings: RuntimeSettings | None = None


def configure(*, threads: int | None = 1, allocator: bool = True, huge_pages: bool = True) -> RuntimeSettings:
    """Set the process-wide settings of the module doc (``None``/``False``: leave that one)."""
    global _settings
    huge = _start_torch_with_huge_pages() if huge_pages else huge_pages_enabled()
    import torch

    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    tuned = tune_allocator() if allocator else False
    _settings = RuntimeSettings(torch.get_num_threads(), tuned, huge)
    return _settings


def settings() -> RuntimeSettings | None:
    """What :func:`configure` did in this process (None: not called)."""
    return _settings


def huge_pages_enabled() -> bool:
    """Whether torch was started with huge pages for large buffers (:func:`configure`, or the environment)."""
    if _settings is not None:
        return _settings.huge_pages
    return os.environ.get(HUGE_PAGES_ENV) == "1"


def _start_torch_with_huge_pages() -> bool:
    if HUGE_PAGES_ENV in os.environ:  # the user's own choice stands
        import torch  # noqa: F401

        return os.environ[HUGE_PAGES_ENV] == "1"
    if "torch" in sys.modules:
        log.info("huge pages not enabled: torch was imported before snac_stream.runtime.configure()")
        return False
    os.environ[HUGE_PAGES_ENV] = "1"
    try:
        import torch

        torch.empty(1)  # torch reads the variable at its first allocation
    finally:
        del os.environ[HUGE_PAGES_ENV]
    return True


def tune_allocator() -> bool:
    """The ``allocator`` setting of the module doc; returns whether it took effect (False off glibc)."""
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

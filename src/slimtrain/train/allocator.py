"""Keep freed memory in the process for the next step instead of handing it back to the OS.

A training step frees and reallocates the same large activation buffers every time. glibc's malloc serves
such buffers with ``mmap`` and returns them on free (its default threshold adapts only up to 32 MiB), so
every step page-faults and zeroes its activations again: on CPU, AASIST-L at batch 16 x 0.5 s spent 40 % of
its time in the kernel and a step took twice as long (benchmarks/allocator.py). :func:`keep_freed_memory`
raises the mmap and trim thresholds with ``mallopt`` so freed buffers stay in the heap for reuse, the fix
PyTorch's CPU performance guide gets from jemalloc/tcmalloc, without preloading another allocator. Freed
memory is returned when the process ends, not before, and the heap can fragment: AASIST-L's peak RSS rose
by 15 % in that benchmark, the ResNet's and the CRNN's not at all.

It acts on Linux with glibc only, once per process, and not when ``SLIMTRAIN_KEEP_FREED_MEMORY=0``.
:func:`slimtrain.train.training.fit` calls it.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys

__all__ = ["keep_freed_memory", "ENV"]

#: set to 0 to leave the C allocator as it is
ENV = "SLIMTRAIN_KEEP_FREED_MEMORY"
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3  # <malloc.h>
#: buffers below this size come from the heap (and go back to it), above it from mmap
MMAP_THRESHOLD = 1 << 30
#: free memory at the top of the heap is returned to the OS only above this size
TRIM_THRESHOLD = 1 << 30
#: extra memory each heap growth asks for, so that a growing step does not grow the heap page by page
TOP_PAD = 64 << 20


@functools.cache  # once per process (a forked child inherits the setting with the heap)
def keep_freed_memory() -> bool:
    """Set glibc's ``M_MMAP_THRESHOLD``/``M_TRIM_THRESHOLD``/``M_TOP_PAD`` (once per process; a no-op off
    Linux/glibc or with ``SLIMTRAIN_KEEP_FREED_MEMORY=0``). Returns whether the allocator is tuned."""
    ok = False
    if os.environ.get(ENV, "1").strip() not in ("0", "false", "no") and sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
        except (OSError, AttributeError):  # musl and other C libraries have no mallopt
            mallopt = None
        if mallopt is not None:
            mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
            ok = all(mallopt(param, value) == 1 for param, value in
                     ((_M_MMAP_THRESHOLD, MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD), (_M_TOP_PAD, TOP_PAD)))
    return ok

"""glibc malloc settings for a process that runs many forwards of varied shapes (a batch job, a server).

A forward allocates and frees activation buffers of a few MiB per op. glibc serves an allocation above its mmap
threshold (which it moves between 128 KiB and 32 MiB as blocks are freed) with a fresh mmap, and hands the free
top of its heap back to the system past its trim threshold. When batch shapes vary, those buffers keep going back
to the system and each new one is faulted in again, a page at a time, zeroed by the kernel: on the 3000-text
MiniLM encode job (bf16, 2-core AMD EPYC, 2026-12-02) that was about a quarter of the run (8.6-10.4 s with
glibc's defaults, 6.7-6.9 s with both thresholds fixed at 1 GiB; docs/notes/2026-12-low-precision.md). With a
steady shape glibc's moving threshold settles and nothing changes.

`tune_malloc()` fixes both thresholds, so freed buffers stay in the heap and are reused. The cost: the process
keeps its peak heap (up to `cache_bytes` of freed memory is not returned after a large batch). `fastbert encode`
calls it; a long-running service can too. It does nothing where the C library is not glibc, or where the user
already chose (MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ / GLIBC_TUNABLES set, or another allocator
preloaded).
"""

from __future__ import annotations

import ctypes
import os
import platform

M_TRIM_THRESHOLD = -1  # <malloc.h>
M_MMAP_THRESHOLD = -3

_USER_CHOICES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


def tune_malloc(cache_bytes: int = 1 << 30) -> bool:
    """Keep freed allocations below ``cache_bytes`` in glibc's heap for reuse (mallopt's M_MMAP_THRESHOLD and
    M_TRIM_THRESHOLD). Returns whether the settings were applied: False on a C library other than glibc, when
    the environment already sets malloc's thresholds, or when another allocator is preloaded (LD_PRELOAD)."""
    if not isinstance(cache_bytes, int) or not 0 < cache_bytes < 2**31:
        raise ValueError(f"tune_malloc: cache_bytes must be an int in (0, 2**31), got {cache_bytes!r}")
    if platform.libc_ver()[0] != "glibc" or any(os.environ.get(k) for k in _USER_CHOICES):
        return False
    if "malloc" in os.environ.get("LD_PRELOAD", ""):  # jemalloc, tcmalloc, mimalloc: the user's allocator
        return False
    libc = ctypes.CDLL(None)
    return bool(libc.mallopt(M_MMAP_THRESHOLD, cache_bytes)) and bool(libc.mallopt(M_TRIM_THRESHOLD, cache_bytes))

"""The C library's heap: keep freed memory in the process, as `pair_style ekd ... heap keep`.

A force call allocates tables of tens of megabytes (edges × sensitivities) and frees them at its
end. glibc serves blocks above its mmap threshold with mmap and hands them back to the system on
free, so every call faults every page of those tables in again, zero-filled by the kernel: a
quarter of the demo student's force call on 7,488–14,625 ethanol atoms (one thread, float32,
measured 2026-12-02: 256 -> 194 ms). With no block from mmap and no trimming of the heap, a call
reuses the pages the previous one freed. The process's peak memory is unchanged (the largest
call's tables are resident at that call anyway); it is simply not handed back between calls.
No-op without glibc.
"""

from __future__ import annotations

import ctypes

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's <malloc.h>


def keep_freed_memory() -> bool:
    """Set glibc's heap to keep freed memory for the rest of the process; False without glibc."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1

"""glibc malloc tuning so freed tensor memory is reused instead of returned and re-faulted (CPU speed)."""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1


_M_MMAP_MAX = -4


def reuse_freed_cpu_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of handing it back to the OS; True when applied.

    Every activation of these networks is megabytes large. By default glibc serves such blocks with fresh mmap
    calls and unmaps them on free, so each forward pass faults every page of every activation in again (about a
    tenth of the CPU time of a 256x256 forward pass here). With mmap off and a high trim threshold, freed blocks
    stay in the heap and are reused. Results are unchanged; the process's memory is not returned to the OS until it
    exits. Does nothing (False) outside Linux/glibc.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2 ** 31 - 1))

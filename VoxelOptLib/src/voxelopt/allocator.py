"""Keep freed memory in the process for reuse (glibc's allocator), for command-line runs.

A registration allocates and frees many large arrays (feature maps of hundreds of MB, cost
volumes, warp slabs). glibc hands each block above its mmap threshold (dynamic, at most 32 MB)
straight back to the kernel on ``free`` and trims the heap top, so the next array of that size
page-faults every page in again, zero-filled by the kernel. Raising the mmap and trim thresholds
keeps those pages for reuse: measured on 2 cores (``voxelopt register``, 192x160x256 pseudo-CT,
``paper`` preset) minor page faults 0.70 M -> 0.31 M, system time 2.6 -> 1.6 s, wall 8.0 -> 7.2 s;
at 512x512x300, 20.3 -> 18.4 s, peak RSS 1.59 -> 1.81 GB (freed blocks are reused, not returned).

This changes the whole process's allocator, so it is the command line's choice
(:func:`voxelopt.cli.main` calls it), not the library's: ``register()`` inside Slicer or a user's
script leaves the host process as it is (:func:`release_free_memory`, which the pipeline calls
between stages, does nothing there). A script whose process only registers may call it itself
(README, *Python* and *Batch scripting*: OBELISK per 192x160x256 image 3.5 -> 2.1 s, a first
Slicer-module run at 512x512x300 12.3-12.5 -> 10.6-10.9 s on a 2-core VM). A no-op where the C library has no ``mallopt`` (macOS,
Windows, musl).
"""

from __future__ import annotations

import ctypes
import ctypes.util

#: ``mallopt`` parameters (glibc ``malloc.h``).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: Both thresholds: blocks up to 2 GiB come from the heap and freed memory is not trimmed.
_THRESHOLD_BYTES = 2**31 - 1


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process; True when both were set."""
    global _libc
    libc = _c_library()
    if libc is None:
        return False
    mallopt = libc.mallopt
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    if bool(mallopt(_M_MMAP_THRESHOLD, _THRESHOLD_BYTES)) and bool(mallopt(_M_TRIM_THRESHOLD, _THRESHOLD_BYTES)):
        _libc = libc
        return True
    return False


def release_free_memory() -> None:
    """Hand the free memory kept since :func:`keep_freed_memory` back to the kernel (glibc's
    ``malloc_trim``); a no-op in a process that did not call it (a library user's, Slicer's).

    Called between stages whose arrays differ in size (before the outputs, before the warped
    image): the features' and the solver's freed blocks are too fragmented for the full-grid
    arrays that follow, which would otherwise come on top of them. Peak RSS at 512x512x600:
    3.0 -> 2.7 GB.
    """
    if _libc is not None:
        _libc.malloc_trim(0)


def _c_library():
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt, libc.malloc_trim  # noqa: B018  (both must exist: glibc)
    except (OSError, AttributeError):
        return None
    libc.malloc_trim.argtypes = (ctypes.c_size_t,)
    libc.malloc_trim.restype = ctypes.c_int
    return libc


#: The C library once :func:`keep_freed_memory` has set its thresholds (None: not opted in).
_libc = None

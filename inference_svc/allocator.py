"""Making freed image memory go back to the operating system when a request ends.

A full-size PNG or WebP decode allocates hundreds of MB in Pillow's 16 MB blocks. glibc serves
blocks that large with mmap, but raises its mmap threshold each time such a block is freed (up
to 32 MB), so from the second big image on the blocks come from the worker threads' heap
arenas, and an arena's freed memory stays in the process: after a burst of big images the pod
keeps its peak RSS and the next burst pushes it over its memory limit. Fixing the threshold
turns off that adjustment, so big blocks are always mapped and always unmapped on free.

glibc only: elsewhere (musl, macOS) this is a no-op, and the pod's memory limit still holds.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging

logger = logging.getLogger(__name__)

# mallopt parameter numbers from glibc's <malloc.h>.
_M_MMAP_THRESHOLD = -3


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") else None


def fix_mmap_threshold(threshold_bytes: int) -> bool:
    """Serve every allocation of ``threshold_bytes`` or more with its own mapping, returned to
    the OS when freed, in this whole process. 0 leaves glibc's adaptive default. Returns
    whether the allocator took the setting."""
    if threshold_bytes <= 0:
        return False
    libc = _glibc()
    if libc is None:
        logger.info("not glibc: the allocator's mmap threshold is left as it is")
        return False
    applied = bool(libc.mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(threshold_bytes)))
    if not applied:
        logger.warning("glibc refused an mmap threshold of %d bytes", threshold_bytes)
    return applied


def release_free_memory() -> None:
    """Hand the free pages of every heap arena back to the OS (glibc's malloc_trim).

    The fixed threshold sends big blocks straight back, but a full-size decode also leaves
    many small blocks in the decoding thread's arena, and an arena only shrinks from its top.
    Called after each big image, in the thread (or process) that decoded it.
    """
    libc = _glibc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(ctypes.c_size_t(0))

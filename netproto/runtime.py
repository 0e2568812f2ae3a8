"""Process-wide settings of a ``twistd netproto`` server, applied once at start.

They concern the whole process, not one service, so they live here and
:func:`netproto.tap.makeService` applies them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import resource
from typing import Final

from twisted.logger import Logger

log = Logger()


def raiseFileLimit() -> int:
    """Raise the soft limit on open files to the hard limit; every client is a descriptor.

    Returns the limit now in force.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            log.warn("netproto: cannot raise the open-file limit above {soft}", soft=soft)
    return soft


#: glibc ``mallopt`` parameter numbers (``malloc.h``).
M_TRIM_THRESHOLD: Final = -1
M_MMAP_THRESHOLD: Final = -3
#: Allocations below this come from the heap rather than each from its own
#: ``mmap``: above the largest read the framed transports make
#: (:data:`netproto.framing.MAX_READ_SIZE`, 1 MiB).
MMAP_THRESHOLD: Final = 2 * 1024 * 1024
#: Free memory at the top of the heap kept rather than given back to the
#: kernel at once: the few MiB an upload cycles through per batch.
TRIM_THRESHOLD: Final = 16 * 1024 * 1024


def tuneAllocator() -> bool:
    """Keep the C allocator from mapping and unmapping every large read buffer.

    Process-wide, so it is set here, once, by ``twistd netproto``. An upload
    arrives as reads of up to 1 MiB, each a new ``bytes`` object
    that lives until both lanes are done with it. glibc serves blocks over
    its mmap threshold (128 KiB at start, raised only as such blocks are
    freed) with a fresh ``mmap`` each and gives them back with ``munmap``: a
    page fault per 4 KiB and a TLB shootdown across the worker threads per
    read, about a third more CPU for a 1 GiB upload on a fresh server. Fixing
    the thresholds (the documented ``mallopt`` knobs, also settable as
    ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``) serves them from
    the heap, which they then reuse. Process-wide, and it keeps at most
    :data:`TRIM_THRESHOLD` of freed memory. Returns whether it was applied
    (not on other C libraries, nor when the environment already sets them).
    """
    if any(k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )

"""Memory settings of long-running gateway processes: fewer page faults, shorter GCs.

**Large buffers** (:func:`keep_large_buffers`). Every image passes through a
process as a few buffers of megabytes (download, base64, response). glibc
serves each from a fresh ``mmap`` and returns it to the kernel when freed, so
the next image faults in and zeroes every page again: with 1024x1024 images
the benchmark measured 4.6 ms of kernel time per image in a web process and
as much in a worker, mostly page faults. Raising ``M_MMAP_THRESHOLD`` (to
glibc's maximum, 32 MiB) and ``M_TRIM_THRESHOLD`` keeps such buffers in the
heap, whose pages stay mapped for the next image: web kernel time fell to
1.0 ms per image and the b64 scenario's p50 from 139 to 37 ms. The price is
that a process keeps the memory of its busiest moment (up to the trim
threshold above what it uses); RSS is in the benchmark's figures. It is the
same as starting the process with ``MALLOC_MMAP_THRESHOLD_`` /
``MALLOC_TRIM_THRESHOLD_`` set, done here so that no launcher can forget it.
On a C library other than glibc it does nothing.

**Full garbage collections** (:func:`freeze_startup_objects`). A gateway
process imports a lot (Flask, Celery, kombu, boto3, pydantic, the catalog)
and keeps all of it for its whole life, and Python's full (generation 2)
collection walks every one of those objects each time: under load the
benchmark saw a worker pause ~40 ms (up to 48) four times in 15 s, stalling
every request of that process. Collecting once and moving everything alive
into the permanent generation (``gc.freeze``) when the process is ready to
serve leaves later full collections only what requests allocate (0.8 ms).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging

log = logging.getLogger(__name__)

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's maximum on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 128 * 1024 * 1024


def keep_large_buffers(*, arenas: int = 0) -> bool:
    """Have glibc keep image-sized buffers mapped between uses; False where not glibc.

    ``arenas`` > 0 also caps glibc's malloc arenas (``M_ARENA_MAX``; call it
    before threads start). glibc gives threads up to 8 arenas per core, and
    each keeps up to the trim threshold of freed memory: a worker whose pool
    ran 2,000 jobs at once kept ~160 MB per process after they ended. Its jobs
    run under one GIL, so more arenas buy it no parallelism.
    """
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
    if arenas > 0:
        ok = bool(mallopt(_M_ARENA_MAX, arenas)) and ok
    log.debug("malloc thresholds set: %s", ok)
    return ok


def freeze_startup_objects() -> int:
    """Collect, then exempt every object alive now from future collections; returns how many."""
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.debug("gc: %d startup objects frozen", frozen)
    return frozen

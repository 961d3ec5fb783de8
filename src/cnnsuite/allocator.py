"""Keep freed tensor memory in the process instead of handing it back to the system.

A CPU training step allocates and frees the same activation tensors, megabytes each, at every
step. glibc's malloc serves a block that large with its own ``mmap`` and unmaps it on ``free``,
or it trims the top of its heap once more than twice that threshold lies free there; either
way the pages go back to the kernel and the next step faults every one of them in again,
zero-filled. glibc raises the threshold as it sees such blocks freed, but the trim still fires
whenever a step frees its activations together, and a small CPU training run spends a good
part of its time in the kernel on these faults. Blocks up to 32 MiB (the largest ``mmap`` threshold
glibc accepts) now come from the heap, and its top is trimmed only past 1 GiB free, so the
freed activations are reused by the next step; the price is up to that much freed memory
kept resident, as PyTorch's own caching allocator keeps GPU memory.

GPU memory is PyTorch's own caching allocator's and is untouched. A user who tunes malloc
(``MALLOC_*`` variables, ``GLIBC_TUNABLES``) or preloads another allocator keeps their choice,
and any C library other than glibc is left alone.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

#: glibc's ``mallopt`` parameters (``malloc.h``)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
#: the largest ``mmap`` threshold glibc accepts on a 64-bit machine (``DEFAULT_MMAP_THRESHOLD_MAX``)
MMAP_THRESHOLD = 32 << 20
#: free memory the heap's top may hold before it is handed back: more than a step's activations
TRIM_THRESHOLD = 1 << 30


def user_tuned(environ: os._Environ | dict) -> bool:
    """Whether the environment already chooses how memory is allocated: a ``MALLOC_*``
    variable, a malloc tunable, or a preloaded allocator (jemalloc, tcmalloc, mimalloc)."""
    preloaded = environ.get("LD_PRELOAD", "").replace(":", " ").split()
    return (
        any(name.startswith("MALLOC_") for name in environ)
        or "malloc" in environ.get("GLIBC_TUNABLES", "")
        or any("malloc" in Path(library).name for library in preloaded)
    )


def glibc() -> bool:
    """Whether this process runs on glibc (asked of the C library, not read from a file)."""
    try:
        return os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")
    except (AttributeError, ValueError, OSError):  # no confstr, or no such name: not glibc
        return False


def keep_freed_memory(environ: os._Environ | dict = os.environ) -> bool:
    """Fix glibc's ``mmap`` and trim thresholds (see the module); True where they were set."""
    if not glibc() or user_tuned(environ):
        return False
    mallopt = ctypes.CDLL(None).mallopt
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))

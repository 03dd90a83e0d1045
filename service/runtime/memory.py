"""Keeping the server's heap small: few malloc arenas, and free memory given back.

A load (start-up or reload) allocates and frees hundreds of MB: file bytes, parsed protobufs,
graph copies during optimisation. glibc keeps freed memory in its arenas rather than returning
it, so RSS stays at the load's peak; ``malloc_trim`` hands the free parts back
(``bench/memory.py`` measures how much). Traffic does the same on a smaller scale, in every
thread's own arena (each inference's intermediate tensors come from malloc), and memory spread
over many arenas is what ``malloc_trim`` returns least of: hence few arenas. Elsewhere than
glibc this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


_LIBC = _libc()


# glibc's mallopt parameter for the most arenas it creates (malloc.h).
M_ARENA_MAX = -8
# Freed tensors spread over glibc's default 8 arenas per core are what malloc_trim returns least
# of; two arenas keep the resident memory after traffic lower at no cost in capacity
# (DEVELOPERS.md, "Where the memory goes", has the measurements).
MALLOC_ARENAS = 2


def limit_malloc_arenas() -> None:
    """Let glibc create at most ``MALLOC_ARENAS`` heaps, unless the operator chose a number with
    ``MALLOC_ARENA_MAX``. Call it before the server starts its threads: a thread keeps the arena
    it was first given."""
    if _LIBC is not None and "MALLOC_ARENA_MAX" not in os.environ:
        _LIBC.mallopt(M_ARENA_MAX, MALLOC_ARENAS)


def release_free_memory() -> None:
    """Collect garbage, then return free heap memory to the system (glibc only)."""
    gc.collect()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)

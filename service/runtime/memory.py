"""Giving memory back to the system after a load.

A load (start-up or reload) allocates and frees hundreds of MB: file bytes, parsed protobufs,
graph copies during optimisation. glibc keeps freed memory in its arenas rather than returning
it, so RSS stays at the load's peak; ``malloc_trim`` hands the free parts back (measured: 60 MB
for the default store, bench/memory.py). Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


_LIBC = _libc()


def release_free_memory() -> None:
    """Collect garbage, then return free heap memory to the system (glibc only)."""
    gc.collect()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)

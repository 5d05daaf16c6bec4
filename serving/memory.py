"""Keep the server's resident memory honest across model loads and unloads (glibc only).

glibc's malloc raises its mmap threshold each time a large mmap-ed block is freed, up to 32 MiB,
so after the first unload the weights of the next session come from the heap, and freed heap
memory mostly stays with the process: RSS drifts up with every reload. Fixing the threshold
keeps large blocks (weights, ONNX Runtime's arenas) in their own mappings, returned to the
system when freed; `malloc_trim` returns what is left over after a session opens or closes.
Elsewhere (musl, macOS) both are no-ops.
"""

from __future__ import annotations

import ctypes
import gc
import logging

_LOGGER = logging.getLogger(__name__)
M_MMAP_THRESHOLD = -3  # mallopt parameter number in glibc's malloc.h
MMAP_THRESHOLD_BYTES = 1 << 20  # above any request's or batch's arrays, below any model's weights


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def fix_mmap_threshold() -> None:
    """Call once at start-up, before any model loads."""
    libc = _libc()
    if libc is not None and not libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES):
        _LOGGER.debug("mallopt(M_MMAP_THRESHOLD) refused")


def return_free_memory() -> None:
    """Collect cycles (a session held by one is freed first), then give free heap pages back."""
    gc.collect()
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)

"""How the process gives memory back to the system: glibc's heap keeps what big, short-lived arrays free."""

from __future__ import annotations

import contextlib
import ctypes

M_MMAP_THRESHOLD = -3
"""glibc's mallopt parameter: allocations from this size up get pages of their own, given back when freed."""
MMAP_THRESHOLD = 1 << 20


def steady_allocator() -> None:
    """Keep glibc from raising its mmap threshold as big arrays are freed (up to 32 MB by default).

    Raised, it serves the next arrays from the heap, which keeps what they free:
    some 70 MB at the peak of `orphans` on a tree of 600,000 blobs. Forked workers inherit the setting.
    """
    with contextlib.suppress(OSError, AttributeError, TypeError):
        ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)


def release() -> None:
    """Give back to the system the memory that many small, freed objects leave in glibc's heap."""
    # Elsewhere than glibc there is no malloc_trim: that allocator returns memory by itself, or keeps it.
    with contextlib.suppress(OSError, AttributeError, TypeError):
        ctypes.CDLL(None).malloc_trim(0)

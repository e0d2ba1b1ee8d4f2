"""How the process gives memory back to the system: glibc's heap keeps what big, short-lived arrays free."""

from __future__ import annotations

import contextlib
import ctypes

M_MMAP_THRESHOLD = -3
"""glibc's mallopt parameter: allocations from this size up get pages of their own, given back when freed."""
MMAP_THRESHOLD = 1 << 25


def steady_allocator() -> None:
    """Fix glibc's mmap threshold at 32 MB, where it would otherwise move as big arrays are freed.

    Arrays from the threshold up get pages of their own, given back when freed; smaller ones come from
    the heap, which keeps what they free. Lower, every array of a batch is pages faulted in anew (a
    third of the time of `orphans -m` on ten million blobs, at 1 MB); moving, the heap grows more
    (some 30 MB at the peak of `orphans` on a tree of 600,000 blobs). Forked workers inherit the setting.
    """
    with contextlib.suppress(OSError, AttributeError, TypeError):
        ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)


def release() -> None:
    """Give back to the system the memory that many small, freed objects leave in glibc's heap."""
    # Elsewhere than glibc there is no malloc_trim: that allocator returns memory by itself, or keeps it.
    with contextlib.suppress(OSError, AttributeError, TypeError):
        ctypes.CDLL(None).malloc_trim(0)

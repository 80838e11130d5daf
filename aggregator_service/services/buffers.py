"""Per-request buffers that live outside the malloc heaps.

An upload holds a 1 MiB buffer while its body streams in, and each validation
a slice buffer and a scratch buffer. Taken from malloc, such buffers sit in the
heaps between the short-lived allocations of many concurrent requests and keep
the freed space around them from being reused or returned, so the process
grows with the amount of data that passes through. An anonymous private
mapping is its own region: unmapped, whole, once the last reference to it goes.
"""

from __future__ import annotations

import mmap

__all__ = ["page_buffer"]


def page_buffer(nbytes: int) -> mmap.mmap:
    """A zeroed, writable buffer of `nbytes` (a buffer-protocol object; no close needed)."""
    return mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)

"""The C allocator of a long-lived server whose pages run in many threads: give freed memory back.

glibc's malloc serves a request above its mmap threshold with a mapping of its own, returned to
the system when freed. The threshold starts at 128 KiB and rises, each time such a block is
freed, up to 32 MiB; from then on the tensors a page computes (matrices of a few MiB, in the
threads Streamlit runs each page in) come from malloc's arenas, and what is freed there mostly
stays resident. Setting the threshold (which also stops it rising) keeps large blocks mapped.
What it saves is measured in docs/results/explorer-speed.md (*Several people on one server*).
"""
from __future__ import annotations

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
THRESHOLD = 1 << 17  # bytes


def give_back_large_blocks(threshold: int = THRESHOLD) -> bool:
    """Serve every allocation of `threshold` bytes or more with its own mapping (glibc's
    mallopt(M_MMAP_THRESHOLD)), process-wide, from now on. False where the C library is not glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):
        return False

"""Process-wide settings of the jobs that stream data."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("tunnelscope.runtime")

_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def bound_heap(threshold: int = 1 << 20) -> bool:
    """Serve every allocation above ``threshold`` bytes by its own mapping, returned to the
    system when freed.

    glibc raises its mmap threshold each time a large block is freed, so a stream of blocks of
    varying size (decoded images, canvases of whole images) soon lands on the heap and fragments
    it: measured here, a training data path grew by 470 MB of resident memory over two epochs and
    stayed flat with the threshold fixed. For processes that make such blocks (prepare, data-loader
    workers), not for those that compute on fixed-size tensors: each fresh mapping costs page
    faults. No-op (False) where the C library has no ``mallopt``.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, int(threshold)))
    except (OSError, AttributeError, TypeError):
        log.info("mallopt unavailable (%s): heap growth is not bounded", name)
        return False

"""Pages of a shared mapping: map them in one call before reading, shed them after.

The node reads a trainer's weights through a shared mapping of the trainer's handover file
(:mod:`swarmlearn.roles.local.handover`), and so do the round lanes that send them
(:mod:`swarmlearn.p2p.bulk_push`). Both advise the kernel around each read: one call maps a
range's pages (``MADV_POPULATE_READ``, cheaper than a fault per page), and after it the
node's resident set lets them go (``MADV_DONTNEED`` on a shared mapping: the bytes stay in
the file). Any other buffer is left alone.
"""

from __future__ import annotations

import contextlib
import mmap

import numpy as np

#: Linux 5.14's MADV_POPULATE_READ: map a range's pages in one call instead of a fault each.
MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)


def _advise(view: object, advice: int) -> None:
    if not isinstance(view, memoryview) or not isinstance(view.obj, mmap.mmap) or not view:
        return
    whole = view.obj
    with contextlib.suppress(ValueError, BufferError, OSError):  # closed, or an old kernel
        base = np.frombuffer(whole, np.uint8).ctypes.data
        start = np.frombuffer(view.cast("B"), np.uint8).ctypes.data - base
        first = start - start % mmap.PAGESIZE
        stop = min(len(whole), start + view.nbytes)
        whole.madvise(advice, first, stop - first)


def map_pages(view: object) -> None:
    """Map the pages under ``view`` (a slice of a handover file's map) into this process in
    one call, before reading them all (hashing, sending): cheaper than a fault per page."""
    _advise(view, MADV_POPULATE_READ)


def shed_pages(view: object) -> None:
    """Let this process's mapping forget the pages under ``view`` (``MADV_DONTNEED``) when
    ``view`` is a slice of a handover file's map; any other buffer: nothing happens.

    The mapping is shared, so the bytes stay in the file (the trainer's): only this
    process's resident set sheds them, until they are touched again (a minor fault, no
    copy). The node calls it on the pages it has hashed, sent or written, so it never
    holds the trainer's whole model resident beside its own buffers. Pages are rounded
    outwards: a neighbour's bytes sharing a page are safe for the same reason.
    """
    _advise(view, mmap.MADV_DONTNEED)

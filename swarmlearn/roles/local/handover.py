"""Shared-memory handover of weights between a training process and its node (same host).

Over the local socket the weights would cross the kernel twice each way; instead the trainer
keeps one memory-mapped file (in ``/dev/shm`` where it exists, mode 0600) the size of its
model, writes its flat weights there and sends only the file's path. The node sends its
chunks straight from the file and assembles the merged model in the same file as the
merged pieces arrive (each where this node's own chunks for that range were, sent by then),
so it holds no second copy of the model; the trainer reads the merged weights in place. On
a failed round the file may hold a partial merge: the trainer keeps its model's weights
(the SwarmCallback flattens them into the file again for the next round). About 10x faster
than the socket for a 100 MB model. After the first round the file's name is removed (both
sides keep their mappings), so a killed trainer leaks no memory.

``SWARM_HANDOVER=socket`` turns it off (the weights then travel in the socket's frames).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import secrets
from pathlib import Path

# Where the node reads a handover file (hashing, sending, writing merged pieces) it maps the
# pages first and sheds them after (swarmlearn/pages.py, shared with the round lanes).
from swarmlearn.pages import map_pages as map_pages
from swarmlearn.pages import shed_pages as shed_pages

SHM_DIR = Path("/dev/shm")


def shared_handover_enabled() -> bool:
    return os.environ.get("SWARM_HANDOVER", "shm").strip().lower() != "socket"


class SharedBuffer:
    """A file-backed shared mapping of ``size`` bytes; the trainer's side creates it."""

    def __init__(self, size: int, directory: Path | None = None) -> None:
        folder = directory or (SHM_DIR if SHM_DIR.is_dir() else Path("/tmp"))
        self.path = folder / f"swarmlearn-handover-{os.getpid()}-{secrets.token_hex(6)}"
        descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(descriptor, size)
            self.map = mmap.mmap(descriptor, size)
        finally:
            os.close(descriptor)
        self.size = size

    def unlink(self) -> None:
        """Remove the name once the node has mapped it: the mapping lives on for both, and a
        trainer killed later leaves nothing behind in /dev/shm."""
        self.path.unlink(missing_ok=True)

    def view(self) -> memoryview:
        return memoryview(self.map)

    def close(self) -> None:
        self.path.unlink(missing_ok=True)
        with contextlib.suppress(BufferError):  # views of it still alive: freed with them
            self.map.close()


def open_shared(path: str, size: int) -> mmap.mmap:
    """The node's side: map a trainer's handover file, which must hold exactly ``size`` bytes."""
    descriptor = os.open(path, os.O_RDWR)
    try:
        found = os.fstat(descriptor).st_size
        if found != size:
            raise ValueError(f"handover file {path} holds {found} bytes, the layout says {size}")
        return mmap.mmap(descriptor, size)
    finally:
        os.close(descriptor)

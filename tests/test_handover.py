"""The shared-memory handover between a trainer and its node (roles/local/handover.py), and the
socket path it replaces (``SWARM_HANDOVER=socket``), which must give the same weights."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from swarmlearn.roles.local.handover import SharedBuffer, map_pages, open_shared, shed_pages
from tests.test_callback_torch import our_style_script, run_scripts, two_daemons


def test_the_handover_file_is_private_sized_and_removed(tmp_path: Path) -> None:
    buffer = SharedBuffer(4096, tmp_path)
    assert buffer.path.stat().st_mode & 0o777 == 0o600
    buffer.view()[:4] = b"abcd"
    mapped = open_shared(str(buffer.path), 4096)
    assert mapped[:4] == b"abcd"  # the node sees what the trainer wrote, in place
    mapped[:4] = b"wxyz"
    assert bytes(buffer.view()[:4]) == b"wxyz"  # and the trainer what the node writes back
    mapped.close()
    with pytest.raises(ValueError, match="holds 4096 bytes, the layout says 8192"):
        open_shared(str(buffer.path), 8192)
    buffer.close()
    assert not buffer.path.exists()


def _resident_shmem_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssShmem:"):
            return int(line.split()[1])
    raise AssertionError("no RssShmem in /proc/self/status")


def test_shed_pages_leave_the_bytes_in_the_file_and_out_of_the_resident_set() -> None:
    size = 32 * 1024 * 1024
    trainer = SharedBuffer(size)
    node = open_shared(str(trainer.path), size)
    view = memoryview(node)
    view[:] = bytes(range(256)) * (size // 256)  # the node wrote it: all resident here
    before = _resident_shmem_kb()
    shed_pages(view[1000 : size // 2 + 5])  # unaligned: rounded outwards
    after = _resident_shmem_kb()
    assert before - after >= size // 2 // 1024 - 4  # half the map left the resident set
    assert view[size // 2 - 1] == (size // 2 - 1) % 256  # the bytes are still the file's
    assert bytes(trainer.view()[:256]) == bytes(range(256))
    map_pages(view[: size // 2])  # back in, in one call (Linux >= 5.14; else on first touch)
    assert _resident_shmem_kb() - after >= size // 2 // 1024 - 4
    shed_pages(b"not a map")  # any other buffer: nothing happens
    shed_pages(memoryview(bytearray(10)))
    del view
    node.close()
    trainer.close()


@pytest.mark.process
def test_the_socket_handover_gives_the_same_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SWARM_HANDOVER", "socket")
    out: dict[int, dict[str, torch.Tensor]] = {}
    with two_daemons(tmp_path) as data:
        run_scripts(
            *(
                threading.Thread(target=our_style_script, args=(data[i] / "sl.sock", i, out))
                for i in range(2)
            )
        )
    assert sorted(out) == [0, 1]
    for name, tensor in out[0].items():
        assert torch.equal(tensor, out[1][name]), name

"""The threaded bulk path over real loopback TLS: several sources and lanes, a corrupt source
banned, a broken connection resumed, the peer-id check, the manifest, the ceiling."""

from __future__ import annotations

import random
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from swarmlearn.errors import RemoteProtocolError
from swarmlearn.p2p.bulk import BlobServer, Fetch, Source, dial_tls, fetch_manifest
from swarmlearn.p2p.identity import Identity
from swarmlearn.p2p.lane import Conn, TlsPipe, dial_lane
from swarmlearn.p2p.tls import client_context
from swarmlearn.p2p.transfer import BlobManifest, BlobTooLarge
from swarmlearn.p2p.wire import Message
from tests.conftest import Pki

pytestmark = pytest.mark.process

WAIT_S = 20.0

BLOB = random.Random(9).randbytes(3 * 1024 * 1024 + 123)
MANIFEST = BlobManifest.build(BLOB, 256 * 1024)


@contextmanager
def serving(server: BlobServer) -> Iterator[int]:
    listener = socket.create_server(("127.0.0.1", 0))
    thread = threading.Thread(target=server.serve_forever, args=(listener,), daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        server.stop()
        thread.join()
        listener.close()


def source(name: str, client: Identity, port: int, server: Identity) -> Source:
    return Source(name, lambda: dial_tls(client, "127.0.0.1", port, expect=server.peer_id))


class Corrupt(BlobServer):
    """Serves the honest manifest with every chunk's bytes flipped."""

    def __init__(self, identity: Identity) -> None:
        super().__init__(identity)
        self.served = threading.Event()  # set once it answered a request

    def _answer(self, tls: Conn, message: Message) -> None:
        super()._answer(tls, message)
        self.served.set()

    def add(self, manifest: BlobManifest, data: bytes | bytearray | memoryview) -> None:
        super().add(manifest, bytes(b ^ 0xFF for b in bytes(data)))


class AfterCorrupt(BlobServer):
    """Answers nothing until the corrupt source has sent a chunk (at most ``wait_s``): the bad
    source always gets its turn, however the threads are scheduled."""

    def __init__(self, identity: Identity, corrupt: Corrupt, wait_s: float = 30.0) -> None:
        super().__init__(identity)
        self.corrupt, self.wait_s = corrupt, wait_s

    def _answer(self, tls: Conn, message: Message) -> None:
        self.corrupt.served.wait(self.wait_s)  # once set, no wait
        super()._answer(tls, message)


class Flaky(BlobServer):
    """Drops the first connection that asks for chunks after serving two of them."""

    dropped = False

    def _answer(self, tls: Conn, message: Message) -> None:
        if not self.dropped and self.chunks_sent >= 2:
            type(self).dropped = True
            raise ConnectionResetError("dropped on purpose")
        super()._answer(tls, message)


def test_a_blob_comes_from_several_sources_over_several_lanes(pki: Pki) -> None:
    one, two = BlobServer(pki.sn), BlobServer(pki.sn)
    one.add(MANIFEST, BLOB)
    two.add(MANIFEST, memoryview(BLOB))
    with serving(one) as port1, serving(two) as port2:
        fetch = Fetch(
            MANIFEST,
            [source("one", pki.sl, port1, pki.sn), source("two", pki.sl, port2, pki.sn)],
            bytes_max=len(BLOB),
            window_chunks=2,
        )
        result = fetch.run()
    assert result.complete
    assert bytes(result.data) == BLOB
    assert result.banned == {}
    assert result.wasted_bytes == 0
    assert sum(result.chunks_from.values()) == MANIFEST.chunk_count
    assert all(count > 0 for count in result.chunks_from.values())


def test_a_source_serving_corrupt_chunks_is_banned_and_the_blob_completes(pki: Pki) -> None:
    bad = Corrupt(pki.sn)
    good = AfterCorrupt(pki.sn, bad)
    good.add(MANIFEST, BLOB)
    bad.add(MANIFEST, BLOB)
    with serving(good) as port1, serving(bad) as port2:
        result = Fetch(
            MANIFEST,
            [source("good", pki.sl, port1, pki.sn), source("bad", pki.sl, port2, pki.sn)],
            bytes_max=len(BLOB),
        ).run()
    assert result.complete
    assert bytes(result.data) == BLOB
    assert list(result.banned) == ["bad"]
    assert "bad hash" in result.banned["bad"]
    assert result.chunks_from.get("bad", 0) == 0


def test_a_broken_connection_is_redialed_and_the_fetch_resumes(pki: Pki) -> None:
    flaky = Flaky(pki.sn)
    flaky.add(MANIFEST, BLOB)
    with serving(flaky) as port:
        result = Fetch(
            MANIFEST, [source("flaky", pki.sl, port, pki.sn)], bytes_max=len(BLOB),
            lanes_per_source=1,
        ).run()  # fmt: skip
    assert Flaky.dropped
    assert result.complete
    assert bytes(result.data) == BLOB
    assert flaky.chunks_sent <= MANIFEST.chunk_count + 4  # what it held was not asked again


def test_the_manifest_travels_over_the_bulk_path_and_the_ceiling_holds(pki: Pki) -> None:
    server = BlobServer(pki.sn)
    server.add(MANIFEST, BLOB)
    with serving(server) as port:

        def dial() -> TlsPipe:
            return dial_tls(pki.sl, "127.0.0.1", port)

        assert fetch_manifest(dial, MANIFEST.root) == MANIFEST
        with pytest.raises(RemoteProtocolError, match="no blob"):
            fetch_manifest(dial, b"\0" * 32)
    with pytest.raises(BlobTooLarge):
        Fetch(MANIFEST, [source("x", pki.sl, 1, pki.sn)], bytes_max=len(BLOB) - 1)


def test_a_dial_that_reaches_another_peer_is_refused(pki: Pki) -> None:
    server = BlobServer(pki.sn)
    with serving(server) as port, pytest.raises(RemoteProtocolError, match="expected peer"):
        dial_tls(pki.sl, "127.0.0.1", port, expect=pki.sl.peer_id)


def test_a_source_bounds_its_lanes_and_their_handshakes(pki: Pki) -> None:
    server = BlobServer(pki.sn, timeout_s=1.0, threads_max=1)
    server.add(MANIFEST, BLOB)
    with serving(server) as port:
        silent = socket.create_connection(("127.0.0.1", port))  # takes the one slot
        refused = socket.create_connection(("127.0.0.1", port))  # over the pool: closed
        refused.settimeout(WAIT_S)
        assert refused.recv(1) == b""
        deadline = time.monotonic() + WAIT_S
        while server.handshakes_failed == 0 and time.monotonic() < deadline:
            time.sleep(0.01)  # the silent one is cut at its handshake deadline (1 s)
        assert server.handshakes_failed == 1
        result = Fetch(MANIFEST, [source("s", pki.sl, port, pki.sn)], bytes_max=len(BLOB)).run()
        assert result.complete
        silent.close()
        refused.close()
    assert server.join(WAIT_S) == 0
    assert server.threads.refused >= 1
    assert server.threads.live == 0


def test_a_writer_lane_has_one_handshake_deadline(pki: Pki) -> None:
    with socket.create_server(("127.0.0.1", 0)) as mute:  # accepts (the kernel), never speaks
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            dial_lane(
                client_context(pki.sl),
                mute.getsockname()[:2],
                expect=None,
                reader=False,
                dial_timeout_s=WAIT_S,
                handshake_timeout_s=0.3,
                io_timeout_s=WAIT_S,
            )
        assert time.monotonic() - started < WAIT_S / 2

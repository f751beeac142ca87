"""Blobs for the p2p service: serving and fetching over bulk lanes, from trio.

Theory of operation
-------------------
Weights do not travel on a node's message connection: :mod:`swarmlearn.p2p.bulk` moves them
over dedicated blocking TLS *lanes* driven by worker threads (OpenSSL and hashlib release
the GIL, so the node's trio thread keeps serving consensus messages meanwhile). This module
is the glue between that and the trio service:

- **Serving**: :meth:`BlobService.serve` builds a manifest over a view of the data and adds
  it to a :class:`~swarmlearn.p2p.bulk.BlobServer`. Lanes arrive on the node's one listening
  port: the service reads the first byte of every TCP connection (``LANE_BULK``) and hands
  the socket to :meth:`take_lane`, which serves it on a thread of the server's bounded pool
  (``lanes_max``; more are closed at once and counted).
- **Fetching**: :meth:`BlobService.fetch` asks the sources for the manifest in turn (checked
  against the root), then runs :class:`~swarmlearn.p2p.bulk.Fetch` (several sources, several
  lanes each, every chunk verified) under ``trio.to_thread.run_sync``; a trio cancellation
  or the ``fetch_timeout_s`` deadline cancels the lanes. A fetch that ends incomplete (every
  source gave up) leaves its buffer and bitset behind, and the next fetch of the same root
  resumes from them, re-verifying what it holds.
- Lanes are dialed with :func:`~swarmlearn.p2p.lane.dial_lane` (the same certificates, the
  handshake under a deadline, the source's peer id checked).
"""

from __future__ import annotations

import mmap
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import trio

from swarmlearn.errors import ConfigError, SwarmlearnError
from swarmlearn.p2p.bulk import BlobServer, Fetch, Source, fetch_manifest
from swarmlearn.p2p.identity import Identity, PeerId
from swarmlearn.p2p.lane import LANE_ERRORS, TlsPipe, dial_lane
from swarmlearn.p2p.multiaddr import PeerAddress
from swarmlearn.p2p.tls import client_context
from swarmlearn.p2p.transfer import BlobManifest, BytesLike

LANE_MESSAGES = b"M"  # the first byte of a message connection (TLS + mux follow)
LANE_BULK = b"B"  # the first byte of a bulk lane (TLS + blob requests follow)
CLOSE_JOIN_S = 2.0  # at close, how long the lanes' threads have to end (then: leaked)


class FetchError(SwarmlearnError):
    """A blob could not be fetched (no source, every source failed, or the deadline)."""


@dataclass(frozen=True)
class BlobConfig:
    chunk_bytes: int = 4 * 1024 * 1024
    bytes_max: int = 2 * 1024**3  # the largest blob this node fetches
    lanes_per_source: int = 2
    window_chunks: int = 4
    lane_timeout_s: float = 30.0  # a lane silent this long is broken
    fetch_timeout_s: float = 600.0
    lanes_max: int = 64  # inbound lanes served at once (a thread each); more are closed

    def __post_init__(self) -> None:
        if self.chunk_bytes < 1 or self.bytes_max < 1:
            raise ConfigError("blobs: chunk_bytes and bytes_max must be >= 1")
        if min(self.lanes_per_source, self.window_chunks, self.lanes_max) < 1:
            raise ConfigError("blobs: lanes_per_source, window_chunks and lanes_max must be >= 1")
        if self.lane_timeout_s <= 0 or self.fetch_timeout_s <= 0:
            raise ConfigError("blobs: lane_timeout_s and fetch_timeout_s must be > 0")


@dataclass
class BlobCounters:
    lanes_served: int = 0
    lanes_refused: int = 0  # over lanes_max
    fetches_completed: int = 0
    fetches_failed: int = 0
    bytes_fetched: int = 0
    chunks_resumed: int = 0


@dataclass(frozen=True)
class FetchedBlob:
    manifest: BlobManifest
    data: memoryview
    elapsed_s: float
    chunks_from: dict[str, int]  # source peer id -> chunks it delivered
    banned: dict[str, str]  # source peer id -> why it was banned


Dialer = Callable[[], TlsPipe]


class BlobService:
    """Serves and fetches blobs for one node (see the module docstring)."""

    def __init__(self, identity: Identity, config: BlobConfig | None = None) -> None:
        self.identity = identity
        self.config = config or BlobConfig()
        self.server = BlobServer(
            identity, timeout_s=self.config.lane_timeout_s, threads_max=self.config.lanes_max
        )
        self.counters = BlobCounters()
        self._client = client_context(identity)
        self._partial: dict[bytes, tuple[memoryview, bytes]] = {}
        self._fetches: set[Fetch] = set()

    # ------------------------------------------------------------ serving

    async def serve(self, data: BytesLike, chunk_bytes: int | None = None) -> BlobManifest:
        """Serve ``data`` (a view is kept: it must not change while served); its manifest.
        Hashing runs in a worker thread (hashlib releases the GIL), not on the event loop."""
        build = BlobManifest.build
        size = chunk_bytes or self.config.chunk_bytes
        manifest = await trio.to_thread.run_sync(build, data, size, abandon_on_cancel=True)
        self.server.add(manifest, data)
        return manifest

    def stop_serving(self, root: bytes) -> None:
        self.server.remove(root)

    def serving(self) -> list[bytes]:
        return sorted(self.server.blobs)

    def take_lane(self, stream: trio.SocketStream) -> None:
        """Serve an accepted bulk lane (its first byte already read) on a thread of the
        server's pool; closed at once when ``lanes_max`` are served."""
        raw = socket.socket(fileno=stream.socket.detach())
        raw.setblocking(True)
        if not self.server.take(raw):
            self.counters.lanes_refused += 1
            raw.close()
            return
        self.counters.lanes_served += 1

    # ------------------------------------------------------------ fetching

    def dialer(self, address: PeerAddress) -> Dialer:
        """A function that opens one lane to ``address`` (whose peer id it checks)."""
        if address.peer is None:
            raise FetchError(f"{address}: a bulk source needs a peer id")
        expect = PeerId.parse(address.peer)
        timeout_s = self.config.lane_timeout_s

        def dial() -> TlsPipe:
            pipe = dial_lane(
                self._client,
                (address.host, address.port),
                expect=str(expect),
                reader=True,
                dial_timeout_s=timeout_s,
                handshake_timeout_s=timeout_s,
                io_timeout_s=timeout_s,
                first_byte=LANE_BULK,
            )
            assert isinstance(pipe, TlsPipe)
            return pipe

        return dial

    async def fetch(
        self,
        root: bytes,
        sources: Sequence[PeerAddress],
        buffer: bytearray | memoryview | None = None,
    ) -> FetchedBlob:
        """Fetch the blob ``root`` from ``sources`` (addresses with peer ids), verified."""
        if not sources:
            raise FetchError(f"blob {root.hex()[:16]}: no source to fetch it from")
        named = [Source(str(address.peer), self.dialer(address)) for address in sources]
        with trio.move_on_after(self.config.fetch_timeout_s) as deadline:
            manifest = await self._manifest(root, named)
            return await self._fetch(manifest, named, buffer)
        assert deadline.cancelled_caught
        self.counters.fetches_failed += 1
        raise FetchError(f"blob {root.hex()[:16]}: not fetched in {self.config.fetch_timeout_s} s")

    async def _manifest(self, root: bytes, sources: Sequence[Source]) -> BlobManifest:
        errors = []
        for source in sources:
            try:
                return await trio.to_thread.run_sync(
                    fetch_manifest, source.dial, root, abandon_on_cancel=True
                )
            except LANE_ERRORS as error:
                errors.append(f"{source.name[:8]}: {error}")
        self.counters.fetches_failed += 1
        raise FetchError(f"blob {root.hex()[:16]}: no manifest ({'; '.join(errors)})")

    async def _fetch(
        self,
        manifest: BlobManifest,
        sources: Sequence[Source],
        buffer: bytearray | memoryview | None,
    ) -> FetchedBlob:
        config = self.config
        resume = None
        partial = self._partial.pop(manifest.root, None)
        if partial is not None:
            buffer, resume = partial
            self.counters.chunks_resumed += sum(bin(byte).count("1") for byte in resume)
        elif buffer is None:
            # Anonymous memory: the kernel zeroes pages as the lanes first write them, so no
            # one (least of all the event loop, holding the GIL) spends time clearing it.
            size = manifest.total_bytes
            buffer = memoryview(mmap.mmap(-1, max(1, size)))[:size]
        fetch = Fetch(
            manifest,
            sources,
            bytes_max=config.bytes_max,
            buffer=buffer,
            lanes_per_source=config.lanes_per_source,
            window_chunks=config.window_chunks,
            resume=resume,
        )
        self._fetches.add(fetch)
        try:
            result = await trio.to_thread.run_sync(fetch.run, abandon_on_cancel=True)
        except trio.Cancelled:
            fetch.cancel()  # the lanes stop; the buffer is not kept (a lane may still write)
            raise
        finally:
            self._fetches.discard(fetch)
        if not result.complete:
            self._partial[manifest.root] = (result.data, fetch.assembler.bitset())
            self.counters.fetches_failed += 1
            why = "; ".join(f"{s[:8]}: {reason}" for s, reason in sorted(result.banned.items()))
            raise FetchError(
                f"blob {manifest.root.hex()[:16]}: incomplete, every source gave up"
                f"{' (' + why + ')' if why else ''}; a new fetch resumes"
            )
        self.counters.fetches_completed += 1
        self.counters.bytes_fetched += manifest.total_bytes
        return FetchedBlob(
            manifest, result.data, result.elapsed_s, result.chunks_from, result.banned
        )

    def close(self) -> None:
        """Stop serving and fetching: lanes are shut down and their threads end (waited for
        up to ``CLOSE_JOIN_S``; they never call into trio, so the wait cannot deadlock)."""
        self.server.stop()
        for fetch in list(self._fetches):
            fetch.cancel()
        self.server.join(CLOSE_JOIN_S)

"""The local endpoint: how a training process on the same host hands weights to its node.

A Unix socket in the node's data directory (mode 0600: only the owner's processes may use
it), carrying the same framed messages as the network (``u32 length | body``) without TLS.
The trainer sends :class:`LocalContribute` (its flat weights in the merge engine's layout,
raw after a small header: no copy into CBOR); the node answers with :class:`LocalProgress`
lines while the round runs, then :class:`LocalRoundDone` (the merged weights, verified
against the ledger's root) or :class:`LocalRoundFailed` (keep your own weights).

With the shared-memory handover the node assembles the merged weights in the trainer's
handover file, over its weights. A new attempt of the round after that (a node died mid
exchange) needs them again: the node sends :class:`LocalRefill`, the trainer writes its
weights into the file again and answers :class:`LocalRefilled`; the node hashes the file and
the round checks it against the commitment. A trainer says it can refill in its
:class:`LocalContribute` (``refill``); a trainer that cannot sees the round fail instead.

A trainer that joins late (or restarts) first asks for the contract's latest merged model
(:class:`LocalLatest`): the node fetches it from a peer, verifies it against the ledger's root
(:mod:`swarmlearn.roles.sl.latest`) and answers :class:`LocalLatestReply` (the model in
the handover file when the trainer sent one, else in the frame; or none yet, or why not).
The messages are in :mod:`swarmlearn.roles.local.messages`.

Every connection is a trainer *session*, with an id the node assigns (increasing, from the
clock's nanoseconds: never one an earlier run of the node used). What a round delivers goes
to the session that contributed to it only; a session's handover file is its own (a path
another session mapped is refused); when the connection closes, the node hears
``on_closed(session)`` and the session's claims go with it (its queued weights, its check-ins
in rounds still open).

:class:`LocalClient` is the trainer's side: plain blocking sockets, since it runs inside a
training loop (the SwarmCallback of the callback issue builds on it).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import socket
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import trio

from swarmlearn.digest import content_digest
from swarmlearn.errors import ConfigError, ModelMismatchError, RemoteProtocolError
from swarmlearn.merge.manifest import Layout
from swarmlearn.p2p.framing import FrameReader, encode_frame
from swarmlearn.p2p.wire import Message, decode_body
from swarmlearn.roles.local.handover import (
    SharedBuffer,
    map_pages,
    open_shared,
    shared_handover_enabled,
    shed_pages,
)
from swarmlearn.roles.local.messages import LocalContribute as LocalContribute
from swarmlearn.roles.local.messages import LocalLatest as LocalLatest
from swarmlearn.roles.local.messages import LocalLatestReply as LocalLatestReply
from swarmlearn.roles.local.messages import LocalPerf as LocalPerf
from swarmlearn.roles.local.messages import LocalProgress as LocalProgress
from swarmlearn.roles.local.messages import LocalRefill as LocalRefill
from swarmlearn.roles.local.messages import LocalRefilled as LocalRefilled
from swarmlearn.roles.local.messages import LocalRoundDone as LocalRoundDone
from swarmlearn.roles.local.messages import LocalRoundFailed as LocalRoundFailed
from swarmlearn.roles.local.messages import LocalTensor as LocalTensor

LOCAL_FRAME_BYTES_MAX = 2**32 - 1
RECEIVE_BYTES = 1024 * 1024
HASH_THREADS = min(4, os.cpu_count() or 1)
VERDICT_GRACE_S = 5.0

#: ``on_contribute(contribution, reply, chunk_hashes, session)``: the weights' chunk hashes are
#: computed here, in worker threads, so the event loop does not spend a model's worth of hashing.
OnContribute = Callable[
    ["LocalContribute", Callable[[Message], None], tuple[bytes, ...], int], None
]
#: ``on_refilled(contract, answer, chunk_hashes, session)``: the trainer's answer to a
#: LocalRefill, with the hashes of its handover file's bytes (empty when it could not refill).
OnRefilled = Callable[[str, "LocalRefilled", tuple[bytes, ...], int], None]
#: ``on_latest(request, reply, session)``: a trainer asks for the contract's latest model.
OnLatest = Callable[["LocalLatest", Callable[[Message], None], int], None]
#: ``on_closed(session)``: a trainer's connection is gone.
OnClosed = Callable[[int], None]
#: Handover files mapped by sessions, remembered so no other session may use one.
CLAIMED_FILES_MAX = 10_000


# ---------------------------------------------------------------- the node's side (trio)


class LocalEndpoint:
    """Serves trainers on a Unix socket; one connection per trainer, one contract each."""

    def __init__(
        self,
        path: Path,
        on_contribute: OnContribute,
        on_refilled: OnRefilled | None = None,
        on_latest: OnLatest | None = None,
        on_perf: Callable[[LocalPerf], None] | None = None,
        on_closed: OnClosed | None = None,
    ) -> None:
        self.path = path
        self.on_contribute = on_contribute
        self.on_refilled = on_refilled
        self.on_latest = on_latest
        self.on_perf = on_perf
        self.on_closed = on_closed
        self.last_session = 0
        self.claimed: OrderedDict[str, int] = OrderedDict()  # handover file -> its session

    def new_session(self) -> int:
        """An id no session of this node had, nor (clock permitting) one of an earlier run."""
        self.last_session = max(self.last_session + 1, time.time_ns())
        return self.last_session

    def claim(self, path: str, session: int) -> str:
        """'' when ``path`` may be ``session``'s handover file, else why not."""
        owner = self.claimed.setdefault(path, session)
        self.claimed.move_to_end(path)
        while len(self.claimed) > CLAIMED_FILES_MAX:
            self.claimed.popitem(last=False)
        return "" if owner == session else "another trainer session's handover file"

    async def serve(self, *, task_status: trio.TaskStatus[Path] = trio.TASK_STATUS_IGNORED) -> None:
        if self.path.exists():
            self.path.unlink()  # a socket left by a node that died
        with trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
            await listener.bind(str(self.path))
            os.chmod(self.path, 0o600)
            listener.listen()
            async with trio.open_nursery() as nursery:
                task_status.started(self.path)
                while True:
                    sock, _ = await listener.accept()
                    nursery.start_soon(self._serve_one, trio.SocketStream(sock))

    async def _serve_one(self, stream: trio.SocketStream) -> None:
        send, receive = trio.open_memory_channel[Message](1024)
        shared: list[mmap.mmap] = []  # the trainer's handover file, once it sends one
        session = self.new_session()

        def reply(message: Message) -> None:
            if (
                isinstance(message, LocalRoundDone | LocalLatestReply)
                and shared
                and len(message.data) == len(shared[0])
            ):
                data = message.data
                if not (isinstance(data, memoryview) and data.obj is shared[0]):
                    shared[0][:] = data  # the merged weights, straight into the trainer's map
                message = replace(message, data=b"", shared=True)  # (or merged there already)
            with contextlib.suppress(
                trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError
            ):
                send.send_nowait(message)  # a trainer that went away loses nothing of ours

        async def write() -> None:
            async for message in receive:
                for buffer in encode_frame(message, LOCAL_FRAME_BYTES_MAX):
                    await stream.send_all(buffer)

        reader = FrameReader(LOCAL_FRAME_BYTES_MAX)
        latest: list[tuple[str, Layout]] = []  # this trainer's latest contract and layout
        async with stream, trio.open_nursery() as nursery:
            nursery.start_soon(write)
            try:
                while data := await stream.receive_some(RECEIVE_BYTES):
                    reader.feed(data)
                    while (body := reader.next_frame()) is not None:
                        message = decode_body(body)
                        await self._on_message(message, shared, latest, reply, session)
            except (RemoteProtocolError, trio.BrokenResourceError):
                pass
            send.close()
            nursery.cancel_scope.cancel()
            for mapped in shared:
                _close_map(mapped)
            shared.clear()  # ``reply`` outlives this connection: it must not keep the map
            if self.on_closed is not None:
                self.on_closed(session)

    async def _on_message(
        self,
        message: Message,
        shared: list[mmap.mmap],
        latest: list[tuple[str, Layout]],
        reply: Callable[[Message], None],
        session: int,
    ) -> None:
        if isinstance(message, LocalPerf):
            if self.on_perf is not None:
                self.on_perf(message)
            return
        if isinstance(message, LocalContribute):
            problem = self.claim(message.shared, session) if message.shared else ""
            contribution = None if problem else _take_shared(message, shared, reply)
            if problem:
                reply(LocalRoundFailed(0, f"cannot use the handover file: {problem}"))
            if contribution is not None:
                latest[:] = [(contribution.contract, contribution.layout())]
                hashes = await trio.to_thread.run_sync(
                    hash_chunks, contribution.layout(), contribution.data
                )
                self.on_contribute(contribution, reply, hashes, session)
        elif isinstance(message, LocalRefilled) and latest and self.on_refilled is not None:
            (contract, layout), hashes = latest[0], ()
            if message.ok and shared and len(shared[0]) == layout.total_bytes:
                view = memoryview(shared[0])  # what the trainer wrote: the round compares
                hashes = await trio.to_thread.run_sync(hash_chunks, layout, view)
                view.release()
            self.on_refilled(contract, message, hashes, session)
        elif isinstance(message, LocalLatest) and self.on_latest is not None:
            if message.shared:  # the model goes into this handover file (the next rounds' too)
                problem = self.claim(message.shared, session)
                problem = problem or _map_shared(shared, message.shared, message.total_bytes)
                if problem:
                    reply(LocalLatestReply(0, b"", b"", f"cannot use the handover file: {problem}"))
                    return
            self.on_latest(message, reply, session)


def _close_map(mapped: mmap.mmap) -> None:
    with contextlib.suppress(BufferError):  # a round still reads it: unmapped with its views
        mapped.close()


def hash_chunks(layout: Layout, flat: bytes | bytearray | memoryview) -> tuple[bytes, ...]:
    """The BLAKE3 hash of each chunk of ``flat``, in ``HASH_THREADS`` threads (GIL released)."""
    view = memoryview(flat).cast("B")
    if len(view) != layout.total_bytes:
        raise ValueError(f"flat bytes are {len(view)} long, the layout says {layout.total_bytes}")

    def one(index: int) -> bytes:
        start, stop = layout.chunk_span(index)
        map_pages(view[start:stop])
        digest = content_digest(view[start:stop])
        shed_pages(view[start:stop])  # a handover file's pages: the trainer's, not resident here
        return digest

    with ThreadPoolExecutor(HASH_THREADS) as pool:
        return tuple(pool.map(one, range(layout.chunk_count)))


def _take_shared(
    message: LocalContribute, shared: list[mmap.mmap], reply: Callable[[Message], None]
) -> LocalContribute | None:
    """A contribution whose weights are in a handover file: a view of the mapping, not a copy.

    The trainer waits for the round's outcome before it writes the file again. The round
    assembles the merged weights in the file as they arrive (no second model in the node);
    the trainer reads them there on ``LocalRoundDone``, and ignores the file on a failure.
    """
    if not message.shared:
        return message
    problem = _map_shared(shared, message.shared, message.total_bytes)
    if problem:
        reply(LocalRoundFailed(0, f"cannot use the handover file: {problem}"))
        return None
    return replace(message, data=memoryview(shared[0]), shared="")


def _map_shared(shared: list[mmap.mmap], path: str, size: int) -> str:
    """Map the trainer's handover file at ``path`` (unless one of ``size`` bytes is mapped
    already: the trainer keeps one); '' or why it cannot be used."""
    try:
        if not shared or len(shared[0]) != size:
            for mapped in shared:
                _close_map(mapped)
            shared[:] = [open_shared(path, size)]
    except (OSError, ValueError) as error:
        return f"{error} (SWARM_HANDOVER=socket)"
    return ""


# ---------------------------------------------------------------- the trainer's side (blocking)

#: Writes the trainer's weights (those of the round it is in) into the given handover view.
Refill = Callable[[memoryview], object]


def _copy_into(flat: bytes | bytearray | memoryview, out: memoryview) -> None:
    out[:] = memoryview(flat).cast("B")


@dataclass(frozen=True)
class RoundOutcome:
    round: int
    merged: bytes | bytearray | memoryview | None  # None: the round failed; keep your own weights
    root: bytes
    reason: str
    training_over: bool = False  # every node of the round has finished training
    participants: int = 0  # how many nodes' weights the merge holds
    #: The round failed after the node merged into the handover file: the file holds no
    #: one's weights (the weights the trainer keeps are its model's, not the file's).
    overwritten: bool = False
    refused: bool = False  # the ledger refused this node's check-in (``reason`` says why)


@dataclass(frozen=True)
class LatestOutcome:
    """The contract's latest merged model, as the node fetched and verified it."""

    round: int  # 0: none (no round has finished yet, or ``reason`` says why not)
    merged: bytes | bytearray | memoryview | None  # valid until the next call
    root: bytes  # the ledger's root of round ``round``'s merged model
    reason: str = ""


class LocalClient:
    """Blocking client for a training process: contribute, wait for the merged weights."""

    def __init__(
        self,
        path: Path,
        *,
        timeout_s: float = 600.0,
        on_progress: Callable[[str], None] | None = None,
    ) -> None:
        self.path = path
        self.timeout_s = timeout_s
        self.sock = self._connect()
        self.reader = FrameReader(LOCAL_FRAME_BYTES_MAX)
        #: When the current wait ends (``time.monotonic()``): a sync's syncTimeout counts
        #: from its start, whatever progress the node reports meanwhile.
        self.deadline = 0.0
        self.last_send_s = 0.0  # handing the weights over, in the latest round
        self.last_receive_s = 0.0  # reading the latest reply (the merged weights)
        self.on_progress = on_progress
        self.shared: SharedBuffer | None = None  # the handover file (handover.py), once used
        self.use_shared = shared_handover_enabled()

    def _connect(self) -> socket.socket:
        """A connection to the node: a new trainer session there."""
        if not self.path.exists():
            raise ConfigError(
                f"{self.path}: no swarm node's local endpoint here (is swarm-node running?)"
            )
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(self.path))
        except ConnectionRefusedError:
            sock.close()
            raise ConfigError(
                f"{self.path}: no swarm node answers here (is swarm-node running?)"
            ) from None
        return sock

    def _end_session(self) -> None:
        """End this session (the node lets go of what it holds for it); the next message
        goes on a new connection, a new session."""
        self.sock.close()
        self.reader = FrameReader(LOCAL_FRAME_BYTES_MAX)
        if self.shared is not None:  # the node may still read it: the next session's is new
            self.shared.close()
            self.shared = None

    def sync_round(
        self,
        contract: str,
        layout: Layout,
        flat: bytes | bytearray | memoryview,
        *,
        weight: int = 1,
        min_peers: int = 2,
        merge_method: str = "mean",
        perf: tuple[float, float, int, int] | None = None,
        final: bool = False,
        refill: Refill | None = None,
    ) -> RoundOutcome:
        """Hand over the weights (and HPE's perfdata: loss, metric, epochs done, epochs in
        all); block until the round ends (or the socket times out). With the shared-memory
        handover, the node assembles the merged weights in the handover file itself: those
        returned are a view of it, valid until the next call; after a failed round the file
        may hold a partial merge (``overwritten``): keep the weights you have, not the file's.

        If the round needs the weights again after merged bytes landed over them (a node
        died mid exchange and the round goes on without it), they are written into the file
        again: by ``refill(file view)``, or, without it, copied from ``flat`` (when ``flat``
        is not the file itself; else the round fails, as the weights are gone)."""
        started = time.perf_counter()
        payload, shared = flat, ""
        staging = self.staging(len(flat))
        refiller: Refill | None = None
        if staging is not None and self.shared is not None:
            if not (isinstance(flat, memoryview) and flat.obj is self.shared.map):
                staging[:] = flat  # else the caller wrote its weights there already
                refiller = refill or partial(_copy_into, flat)
            else:
                refiller = refill
            payload, shared = b"", str(self.shared.path)
        message = LocalContribute.of(
            contract,
            layout,
            payload,
            weight=weight,
            min_peers=min_peers,
            merge_method=merge_method,
            perf=perf,
            final=final,
            shared=shared,
            sync_timeout_s=self.timeout_s,
            refill=refiller is not None,
        )
        # The node fails a round still open at syncTimeout and says so; a moment more for
        # that verdict to arrive before a silent node is given up on.
        self.deadline = time.monotonic() + self.timeout_s + min(VERDICT_GRACE_S, self.timeout_s)
        self._send(message)
        self.last_send_s = time.perf_counter() - started
        try:
            return self._wait_for_round(refiller)
        finally:
            if self.shared is not None:
                self.shared.unlink()  # the node has it mapped by now (or never will)

    def latest(self, contract: str, layout: Layout, timeout_s: float = 60.0) -> LatestOutcome:
        """The contract's latest merged model (HPE: a node that joins late, or restarts,
        starts from it), fetched by the node from a peer and verified against the ledger's
        root; in the handover file when there is one (a view, valid until the next call).
        Blocks ``timeout_s`` at most. A model that differs from the contract's is a
        :class:`ConfigError` naming the tensor."""
        staging = self.staging(layout.total_bytes)
        shared = "" if staging is None or self.shared is None else str(self.shared.path)
        self.deadline = time.monotonic() + timeout_s + min(VERDICT_GRACE_S, timeout_s)
        self._send(LocalLatest.of(contract, layout, timeout_s, shared))
        try:
            reply = self._wait_for_latest(contract, timeout_s)
        finally:
            if self.shared is not None:
                self.shared.unlink()  # the node has it mapped by now (or never will)
        if reply.mismatch:
            raise ModelMismatchError(f"trainingContract {contract!r}: {reply.reason}")
        if reply.round == 0 or reply.reason:
            return LatestOutcome(reply.round, None, b"", reply.reason)
        merged = reply.data
        if reply.shared and self.shared is not None:
            merged = self.shared.view()
        return LatestOutcome(reply.round, merged, reply.root)

    def report_perf(self, contract: str, number: int, perf: tuple[float, float, int, int]) -> None:
        """HPE's PERFDATA for round ``number``, measured after it (loss, metric, epochs done,
        epochs in all): the final round's, on the final merged model. No answer."""
        loss, metric, done, total = perf
        self._send(LocalPerf(contract, number, float(loss), float(metric), done, total))

    def _wait_for_latest(self, contract: str, timeout_s: float) -> LocalLatestReply:
        while True:
            reply = self._receive(f"no answer about {contract!r}'s latest model", timeout_s)
            if isinstance(reply, LocalProgress) and self.on_progress is not None:
                self.on_progress(reply.text)
            elif isinstance(reply, LocalLatestReply):
                return reply

    def staging(self, size: int) -> memoryview | None:
        """Where to write the next contribution of ``size`` bytes so that handing it over
        copies nothing: the shared handover file (None with ``SWARM_HANDOVER=socket``). What
        is there is the node's to read until the round ends."""
        if not self.use_shared:
            return None
        if self.shared is None or self.shared.size != size:
            if self.shared is not None:
                self.shared.close()
            self.shared = SharedBuffer(size)
        return self.shared.view()

    def _send(self, message: Message) -> None:
        if self.sock.fileno() == -1:  # a session ended at a timeout: a new one
            self.sock = self._connect()
        for buffer in encode_frame(message, LOCAL_FRAME_BYTES_MAX):
            self.sock.sendall(buffer)

    def _refill(self, ask: LocalRefill, refiller: Refill | None) -> None:
        """Write the round's weights into the handover file again, and tell the node."""
        if refiller is None or self.shared is None:
            self._send(LocalRefilled(ask.round, False, "this trainer cannot refill its weights"))
            return
        if self.on_progress is not None:
            self.on_progress(
                f"round {ask.round}: refilling the handover file for attempt {ask.attempt}"
            )
        try:
            refiller(self.shared.view())
        except Exception as error:  # the caller's refill: the node fails the round and says why
            self._send(LocalRefilled(ask.round, False, f"{type(error).__name__}: {error}"))
            return
        self._send(LocalRefilled(ask.round, True))

    def _wait_for_round(self, refiller: Refill | None = None) -> RoundOutcome:
        while True:
            reply = self._receive()
            if isinstance(reply, LocalRefill):
                self._refill(reply, refiller)
            elif isinstance(reply, LocalProgress):
                if self.on_progress is not None:
                    self.on_progress(reply.text)
            elif isinstance(reply, LocalRoundDone):
                merged = reply.data  # a writable view of the frame just read: no further copy
                if reply.shared and self.shared is not None:
                    merged = self.shared.view()
                return RoundOutcome(
                    reply.round,
                    merged,
                    reply.root,
                    "",
                    reply.training_over,
                    reply.participants,
                )
            elif isinstance(reply, LocalRoundFailed):
                return RoundOutcome(
                    reply.round,
                    None,
                    b"",
                    reply.reason,
                    overwritten=reply.overwritten,
                    refused=reply.refused,
                )

    def _receive(self, silence: str = "", wait_s: float = 0.0) -> Message:
        """The node's next message, before ``self.deadline``; past it, this session ends
        (the node lets go of what it holds for it) and a :class:`ConfigError` says why."""
        first_data = None
        while (body := self.reader.next_frame()) is None:
            left_s = self.deadline - time.monotonic()
            try:
                if left_s <= 0:
                    raise TimeoutError
                self.sock.settimeout(left_s)
                data = self.sock.recv(RECEIVE_BYTES)
                first_data = first_data or time.perf_counter()
            except TimeoutError:
                self._end_session()  # the next call is a new session, nothing left over
                if silence:
                    raise ConfigError(f"{silence} from the swarm node in {wait_s:g} s") from None
                raise ConfigError(
                    f"the round did not end within syncTimeout={self.timeout_s:g} s from the "
                    "start of the sync: fewer nodes checked in than minPeers, or the node is "
                    "stuck (its log, or `swarmlearn ledger refusals`, says why)"
                ) from None
            if not data:
                raise ConfigError("the swarm node closed the local endpoint")
            self.reader.feed(data)
        # from the first byte read to the whole frame: for the merged weights, the handover
        self.last_receive_s = 0.0 if first_data is None else time.perf_counter() - first_data
        return decode_body(body)

    def close(self) -> None:
        self.sock.close()
        if self.shared is not None:
            self.shared.close()
            self.shared = None

    def __enter__(self) -> LocalClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

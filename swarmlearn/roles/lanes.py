"""Round lanes: weight chunks between nodes over blocking TLS connections driven by threads.

Theory of operation
-------------------
A round moves the model about twice through every node (reduce-scatter, all-gather). On the
node's message connections (trio's ``SSLStream``) every 16 KiB TLS record is a trip through
the event loop that also runs consensus, so a 100 MB round spent most of its time there. The
round's messages (manifests, chunks, merged pieces) travel instead on *lanes*: one extra
mutual-TLS connection per ordered pair of nodes (same certificates, peer id and SN role
checked on both ends), written and read by plain threads with blocking calls. OpenSSL,
the socket calls and BLAKE3 release the GIL, so lanes encrypt, decrypt and hash beside the
event loop, which keeps serving votes.

- Each node listens for lanes on a port of its own and announces it on its message
  connections (:class:`LanePort`); the host is the one the ledger records for that node.
- Sending (:meth:`RoundLanes.send`, called by the node's outbox from the event loop): the
  message joins the peer's queue (bounded in bytes; a full queue drops, as a lossy link
  would: the round's deadline rule repairs loss). The peer's sender thread dials when it
  has no connection and writes each frame with ``sendall`` on views of the weights: the
  model is never copied to be sent. Frames to one peer keep their order (a manifest before
  its chunks).
- Receiving: a thread per accepted lane reads each frame into its own buffer (the only
  copy is OpenSSL's), decodes it, hashes the payload there, and hands message and digest
  to the event loop (``deliver``). Payload bytes handed over but not yet handled by the
  node are bounded (``RECEIVE_BUDGET_BYTES``; the node calls :meth:`RoundLanes.release`
  when it handled one): a lane waits before reading more, so a node whose loop is busy
  slows its senders (TCP backpressure) instead of piling up a model's worth of frames.
- Per sender, too (``PEER_BUDGET_BYTES``): its payloads delivered and not yet handled, plus
  its chunks the node's merge holds for their turn (the fixed participant order;
  :meth:`RoundLanes.set_held`, from the node after each input). Over it, that sender's lane
  waits (one frame always may when it has none), so only that sender slows down. No
  deadlock: every sender sends an owner's chunks in chunk order, so the participant the
  merge waits for holds nothing (its earlier regions are complete) and is always read.

A lane that cannot be dialed or breaks (a firewall that lets only the message port through,
a peer that restarted) hands the message it was writing, and the rest of its queue, back
to the node's message connection (``fallback``), and that peer gets no lane for
``LANE_RETRY_S``: rounds go on, slower, rather than losing chunks. Nothing here
decides anything about the round: the sans-IO core still verifies every chunk against the
sender's commitment (with the digest computed here) and owns every deadline.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import trio

from swarmlearn.digest import content_digest
from swarmlearn.errors import RemoteProtocolError
from swarmlearn.p2p.bulk import TlsPipe, recv_exact
from swarmlearn.p2p.framing import FRAME_BYTES_MAX_DEFAULT, FRAME_LEN, encode_frame
from swarmlearn.p2p.identity import NODE_ROLES, Identity
from swarmlearn.p2p.tls import client_context, peer_certificate_info, server_context
from swarmlearn.p2p.wire import Message, decode_body, payload_of
from swarmlearn.roles.handover import map_pages, shed_pages
from swarmlearn.sansio import NodeId

log = logging.getLogger(__name__)

QUEUE_BYTES_MAX = 512 * 1024 * 1024  # per peer, payload bytes waiting to be sent
DIAL_TIMEOUT_S = 3.0  # TCP connect (a firewall that drops the lane port costs this, then
#                       the message connection is used for LANE_RETRY_S)
HANDSHAKE_TIMEOUT_S = 10.0
SEND_TIMEOUT_S = 60.0  # one frame's write; a peer that reads nothing for this long is dropped
ACCEPT_POLL_S = 0.2
RECEIVE_BUDGET_BYTES = 32 * 1024 * 1024  # payloads delivered, not yet handled by the node
PEER_BUDGET_BYTES = 8 * 1024 * 1024  # one sender's payloads delivered and not handled, and
#                                      its chunks held for their turn by the node's merge
LANE_RETRY_S = 120.0  # after a lane to a peer failed, its messages take the message connection

#: ``deliver(sender, message, digest)``: runs in the event loop's thread; ``digest`` is the
#: the BLAKE3 hash of the message's payload (``None`` when it has none).
Deliver = Callable[[NodeId, Message, bytes | None], None]
#: ``fallback(peer, message)``: runs in the event loop's thread; sends ``message`` on the
#: node's message connection instead.
Fallback = Callable[[NodeId, Message], None]


@dataclass(frozen=True)
class LanePort(Message, tag=0xA4):
    """Sent on a message connection: this node accepts round lanes on ``port``."""

    port: int


class _Sender:
    """One peer's outgoing lane: a queue and the thread that drains it."""

    def __init__(self, lanes: RoundLanes, peer: NodeId) -> None:
        self.lanes = lanes
        self.peer = peer
        self.queue: queue.SimpleQueue[Message | None] = queue.SimpleQueue()
        self.queued_bytes = 0
        self.lock = threading.Lock()
        self.sock: ssl.SSLSocket | None = None
        self.thread = threading.Thread(target=self._run, name=f"lane-{peer[:8]}", daemon=True)
        self.thread.start()

    def put(self, message: Message) -> bool:
        size = len(payload_of(message))
        with self.lock:
            if self.queued_bytes + size > QUEUE_BYTES_MAX:
                return False
            self.queued_bytes += size
        self.queue.put(message)
        return True

    def _run(self) -> None:
        while True:
            message = self.queue.get()
            if message is None:
                break
            self._one(message)
            # Not kept while waiting for the next: it is a view of a whole model (a merged
            # one would stay alive into the next round, a second model's worth of memory).
            del message
        self._close()

    def _one(self, message: Message) -> None:
        try:
            if self.lanes.is_down(self.peer):
                self.lanes.fall_back(self.peer, message)
            else:
                self._send(message)
        except (OSError, ssl.SSLError, RemoteProtocolError) as error:
            log.info(
                "round lane to %s: %s; using the message connection for %g s",
                self.peer[:8],
                error or type(error).__name__,
                LANE_RETRY_S,
            )
            self._close()
            self.lanes.mark_down(self.peer)
            self.lanes.fall_back(self.peer, message)  # a partial frame is never delivered
        finally:
            with self.lock:
                self.queued_bytes -= len(payload_of(message))

    def _send(self, message: Message) -> None:
        if self.sock is None:
            self.sock = self._dial()
        map_pages(payload_of(message))
        for part in encode_frame(message):
            self.sock.sendall(part)
        shed_pages(payload_of(message))  # sent from a handover file: not kept resident here

    def _dial(self) -> ssl.SSLSocket:
        address = self.lanes.address(self.peer)
        if address is None:
            raise RemoteProtocolError("no lane address known")
        raw = socket.create_connection(address, timeout=DIAL_TIMEOUT_S)
        raw.settimeout(HANDSHAKE_TIMEOUT_S)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock = self.lanes.client.wrap_socket(raw)
            found = peer_certificate_info(sock.getpeercert(binary_form=True)).peer_id
        except (OSError, ssl.SSLError, RemoteProtocolError):
            raw.close()
            raise
        if str(found) != self.peer:
            sock.close()
            raise RemoteProtocolError(f"lane reached {found.short}, not {self.peer[:8]}")
        sock.settimeout(SEND_TIMEOUT_S)
        return sock

    def _close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
            self.sock = None

    def stop(self) -> None:
        self.queue.put(None)
        sock = self.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class RoundLanes:
    """A node's round lanes: its lane listener, and one sender per peer (see module doc)."""

    def __init__(
        self, identity: Identity, deliver: Deliver, fallback: Fallback | None = None
    ) -> None:
        self.me = str(identity.peer_id)
        self.client = client_context(identity)
        self.server = server_context(identity)
        self.deliver = deliver
        self.fallback = fallback
        self.port = 0
        self.dropped = 0  # messages lost: a full queue, or a failed lane with no fallback
        self.fallen_back = 0  # messages handed back to the message connection
        self._down_until: dict[NodeId, float] = {}
        self._pending_bytes = 0  # payload bytes delivered, not yet released by the node
        self._pending_by: dict[NodeId, int] = {}  # the same, per sender
        self._held_by: dict[NodeId, int] = {}  # chunk bytes the merge holds, per sender
        self.stalled: set[NodeId] = set()  # senders whose lane waits now for their budget
        self._budget = threading.Condition()
        self._hosts: dict[NodeId, str] = {}
        self._ports: dict[NodeId, int] = {}
        self._senders: dict[NodeId, _Sender] = {}
        self._receiving: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._listener: socket.socket | None = None

    # ------------------------------------------------------------ addresses

    def set_host(self, peer: NodeId, host: str) -> None:
        self._hosts[peer] = host

    def set_port(self, peer: NodeId, port: int) -> None:
        self._ports[peer] = port

    def release(self, size: int, peer: NodeId | None = None) -> None:
        """The node handled a delivered payload of ``size`` bytes from ``peer`` (any thread;
        ``peer`` None: bytes of no payload)."""
        with self._budget:
            self._pending_bytes -= size
            if peer is not None:
                self._pending_by[peer] = self._pending_by.get(peer, 0) - size
            self._budget.notify_all()

    def set_held(self, held: dict[NodeId, int]) -> None:
        """The bytes of each sender's chunks the node's merge holds now (absent: none)."""
        with self._budget:
            if held != self._held_by:
                self._held_by = dict(held)
                self._budget.notify_all()

    def peer_bytes(self, peer: NodeId) -> int:
        """``peer``'s payloads delivered and not handled, plus its chunks held."""
        with self._budget:
            return self._pending_by.get(peer, 0) + self._held_by.get(peer, 0)

    def _take(self, size: int, peer: NodeId) -> None:
        """Wait until ``size`` more bytes fit the receive budget and ``peer``'s (one frame
        always may: in all, and from a peer with nothing delivered and not let go)."""
        with self._budget:
            while not self._stop.is_set():
                mine = self._pending_by.get(peer, 0) + self._held_by.get(peer, 0)
                over_peer = mine > 0 and mine + size > PEER_BUDGET_BYTES
                if over_peer:
                    self.stalled.add(peer)
                if not over_peer and not (
                    self._pending_bytes > 0 and self._pending_bytes + size > RECEIVE_BUDGET_BYTES
                ):
                    break
                self._budget.wait(ACCEPT_POLL_S)
            self.stalled.discard(peer)
            self._pending_bytes += size

    def is_down(self, peer: NodeId) -> bool:
        return time.monotonic() < self._down_until.get(peer, 0.0)

    def mark_down(self, peer: NodeId) -> None:
        self._down_until[peer] = time.monotonic() + LANE_RETRY_S

    def fall_back(self, peer: NodeId, message: Message) -> None:
        """From a sender thread: ``message`` goes on the message connection (or is lost)."""
        token, fallback = self._token, self.fallback
        if token is None or fallback is None or self._stop.is_set():
            self.dropped += 1
            return
        self.fallen_back += 1  # counted first: the loop may look as soon as it has it
        try:
            trio.from_thread.run_sync(fallback, peer, message, trio_token=token)
        except trio.RunFinishedError:
            self.fallen_back -= 1
            self.dropped += 1

    def address(self, peer: NodeId) -> tuple[str, int] | None:
        host, port = self._hosts.get(peer), self._ports.get(peer)
        return None if host is None or port is None else (host, port)

    # ------------------------------------------------------------ sending (event loop)

    def send(self, peer: NodeId, message: Message) -> bool:
        """Queue ``message`` on the lane to ``peer``; False when the peer has no lane (yet)."""
        if self._stop.is_set() or self.address(peer) is None or self.is_down(peer):
            return False
        sender = self._senders.get(peer)
        if sender is None:
            sender = self._senders[peer] = _Sender(self, peer)
        if not sender.put(message):
            self.dropped += 1
        return True

    # ------------------------------------------------------------ running

    async def serve(
        self,
        host: str,
        port: int = 0,
        *,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept lanes on ``host:port`` (0: a free port) until cancelled; reports the port."""
        self._token = trio.lowlevel.current_trio_token()
        listener = socket.create_server((host, port))
        listener.settimeout(ACCEPT_POLL_S)
        self._listener = listener
        self.port = int(listener.getsockname()[1])
        accepter = threading.Thread(target=self._accept, name="lanes-accept", daemon=True)
        accepter.start()
        task_status.started(self.port)
        try:
            await trio.sleep_forever()
        finally:
            self.close()

    def close(self) -> None:
        self._stop.set()
        for sender in list(self._senders.values()):
            sender.stop()
        with self._lock:
            for sock in self._receiving:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        if self._listener is not None:
            self._listener.close()

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            try:
                raw, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._receive, args=(raw,), daemon=True).start()

    def _receive(self, raw: socket.socket) -> None:
        raw.settimeout(HANDSHAKE_TIMEOUT_S)  # then reads wait for the next round, unbounded
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            self._receiving.add(raw)
        try:
            with TlsPipe(raw, self.server, server_side=True) as pipe:
                peer = peer_certificate_info(pipe.peer_certificate())
                if not peer.roles & NODE_ROLES or str(peer.peer_id) == self.me:
                    raise RemoteProtocolError(f"{peer.peer_id.short} may not open a round lane")
                raw.settimeout(None)
                self._read_frames(pipe, str(peer.peer_id))
        except (OSError, ssl.SSLError, RemoteProtocolError, trio.RunFinishedError) as error:
            log.info("round lane ended: %s", error or type(error).__name__)
        finally:
            with self._lock:
                self._receiving.discard(raw)
            raw.close()

    def _read_frames(self, pipe: TlsPipe, peer: NodeId) -> None:
        prefix = bytearray(FRAME_LEN.size)
        while not self._stop.is_set():
            try:
                recv_exact(pipe, memoryview(prefix))
            except ConnectionError:
                return  # the sender closed the lane between frames
            (size,) = FRAME_LEN.unpack(prefix)
            if not 4 <= size <= FRAME_BYTES_MAX_DEFAULT:
                raise RemoteProtocolError(f"lane frame of {size} bytes")
            self._take(size, peer)
            try:
                body = bytearray(size)
                recv_exact(pipe, memoryview(body))
                message = decode_body(body)
                payload = payload_of(message)
            except BaseException:
                self.release(size)
                raise
            with self._budget:  # the node releases the payload (with its peer) once handled
                self._pending_by[peer] = self._pending_by.get(peer, 0) + len(payload)
            self.release(size - len(payload))
            digest = content_digest(payload) if payload else None
            assert self._token is not None
            try:
                trio.from_thread.run_sync(
                    self.deliver, peer, message, digest, trio_token=self._token
                )
            except BaseException:
                self.release(len(payload), peer)
                raise
            del body, message, payload  # the node has them; not kept while the lane waits

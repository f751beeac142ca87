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
  would: the round's receiver asks for what it lacks again, :mod:`swarmlearn.roles.sl.repair`,
  and the deadline rule ends what that cannot repair). The peer's sender thread dials when it
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

What a lane peer can make a node hold is bounded (issue 19): at most ``LANE_THREADS_MAX``
lanes are served at once (more are closed at once, counted in ``refused``); the whole TLS
handshake must end within ``HANDSHAKE_TIMEOUT_S`` (a byte a second does not keep it open);
a frame over its message type's limit is refused from its header
(:func:`~swarmlearn.p2p.limits.frame_bytes_max_for`); a frame's buffer grows a step
(``STEP_BYTES``) at a time as its bytes arrive, and the frames being read hold at most
``INFLIGHT_BYTES_MAX`` together (the oldest always may go on), so a sender that announces
64 MiB and goes silent holds one step and nobody else's turn; its reads of one frame may
take ``FRAME_TIMEOUT_S`` plus a second per ``FRAME_RATE_MIN_BYTES_S`` (the time the lane
waits for the node's budget does not count), and between frames ``LANE_IDLE_S``: past
either the lane is cut (``frame_timeouts``, ``idle_closed``). A sender redials a lane
idle for ``SENDER_IDLE_S`` (under ``LANE_IDLE_S``), so an idle cut never eats a frame.

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
from swarmlearn.p2p.bulk import TlsPipe
from swarmlearn.p2p.framing import FRAME_BYTES_MAX_DEFAULT, FRAME_LEN, encode_frame
from swarmlearn.p2p.identity import NODE_ROLES, Identity
from swarmlearn.p2p.limits import FrameRefused, frame_bytes_max_for
from swarmlearn.p2p.tls import client_context, peer_certificate_info, server_context
from swarmlearn.p2p.wire import TAG_PEEK_BYTES, Message, decode_body, payload_of, peek_tag
from swarmlearn.roles.local.handover import map_pages, shed_pages
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
LANE_THREADS_MAX = 64  # lanes served (and handshakes) at once; more are closed at once
INFLIGHT_BYTES_MAX = 32 * 1024 * 1024  # frames being read, all lanes (the oldest may exceed)
STEP_BYTES = 1024 * 1024  # a frame's buffer grows by this much, taken from the budgets first
FRAME_TIMEOUT_S = 10.0  # one frame's reads may take this, plus a second per
FRAME_RATE_MIN_BYTES_S = 1024 * 1024  # ... this many bytes of it
LANE_IDLE_S = 300.0  # silence between frames before an accepted lane is closed
SENDER_IDLE_S = 120.0  # a sender redials a lane idle this long (under LANE_IDLE_S)
_ZEROS = memoryview(bytes(STEP_BYTES))

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
        self.sent_at = 0.0  # time.monotonic() of the last frame written
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
        if self.sock is not None and time.monotonic() - self.sent_at > SENDER_IDLE_S:
            self._close()  # the receiver may be about to cut it (LANE_IDLE_S): a fresh one
        if self.sock is None:
            self.sock = self._dial()
        map_pages(payload_of(message))
        for part in encode_frame(message):
            self.sock.sendall(part)
        self.sent_at = time.monotonic()
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
        self.refused = 0  # lanes closed at accept: LANE_THREADS_MAX were served already
        self.handshakes_failed = 0  # timed out, or no node certificate
        self.frame_timeouts = 0  # senders that stopped mid-frame, cut off
        self.frames_refused = 0  # over their type's limit, or undecodable
        self.idle_closed = 0  # lanes silent for LANE_IDLE_S between frames
        self._slots = threading.BoundedSemaphore(LANE_THREADS_MAX)
        self._frames: dict[int, int] = {}  # bytes arrived of each frame being read
        self._frame_count = 0
        self._inflight_bytes = 0  # their sum
        self.inflight_peak_bytes = 0
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
            return self._bytes_of(peer)

    def _wait_turn(self, size: int, peer: NodeId) -> None:
        """Before a frame of ``size`` bytes: wait until it fits the receive budget and
        ``peer``'s (one frame always may: in all, and from a peer with nothing delivered and
        not let go). Nothing is reserved: bytes count once they arrive (:meth:`_grow`)."""
        with self._budget:
            while not self._stop.is_set():
                mine = self._bytes_of(peer)
                over_peer = mine > 0 and mine + size > PEER_BUDGET_BYTES
                if over_peer:
                    self.stalled.add(peer)
                if not over_peer and not (
                    self._pending_bytes > 0 and self._pending_bytes + size > RECEIVE_BUDGET_BYTES
                ):
                    break
                self._budget.wait(ACCEPT_POLL_S)
            self.stalled.discard(peer)

    def _grow(self, frame: int, size: int) -> None:
        """Frame number ``frame`` is to hold ``size`` more bytes: wait while the frames being
        read hold ``INFLIGHT_BYTES_MAX``, unless it is the oldest of them (which always may,
        so they end one by one: read whole, or cut off by their deadline)."""
        with self._budget:
            while (
                not self._stop.is_set()
                and self._inflight_bytes + size > INFLIGHT_BYTES_MAX
                and frame != min(self._frames)
            ):
                self._budget.wait(ACCEPT_POLL_S)
            self._inflight_bytes += size
            self._frames[frame] += size
            self.inflight_peak_bytes = max(self.inflight_peak_bytes, self._inflight_bytes)

    def _bytes_of(self, peer: NodeId) -> int:
        return self._pending_by.get(peer, 0) + self._held_by.get(peer, 0)

    def _open_frame(self) -> int:
        with self._budget:
            self._frame_count += 1
            self._frames[self._frame_count] = 0
            return self._frame_count

    def _settle(self, frame: int, peer: NodeId, kept: int) -> None:
        """Frame number ``frame`` of ``peer`` ended; ``kept`` of its bytes (its payload) stay
        pending until the node releases them."""
        with self._budget:
            self._inflight_bytes -= self._frames.pop(frame)
            self._pending_by[peer] = self._pending_by.get(peer, 0) + kept
            self._pending_bytes += kept
            self._budget.notify_all()

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
            if not self._slots.acquire(blocking=False):
                self.refused += 1
                log.info("refused a round lane: %d served already", LANE_THREADS_MAX)
                raw.close()
                continue
            threading.Thread(target=self._receive, args=(raw,), daemon=True).start()

    def statistics(self) -> dict[str, int]:
        """Counters of what lanes refused and cut off (for ``/metrics``)."""
        return {
            "refused": self.refused,
            "handshakes_failed": self.handshakes_failed,
            "frame_timeouts": self.frame_timeouts,
            "frames_refused": self.frames_refused,
            "idle_closed": self.idle_closed,
            "dropped": self.dropped,
            "fallen_back": self.fallen_back,
        }

    def _receive(self, raw: socket.socket) -> None:
        try:
            self._serve_lane(raw)
        finally:
            self._slots.release()

    def _serve_lane(self, raw: socket.socket) -> None:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            self._receiving.add(raw)
        try:
            try:
                pipe = TlsPipe(
                    raw, self.server, server_side=True, handshake_timeout_s=HANDSHAKE_TIMEOUT_S
                )
                peer = peer_certificate_info(pipe.peer_certificate())
                if not peer.roles & NODE_ROLES or str(peer.peer_id) == self.me:
                    raise RemoteProtocolError(f"{peer.peer_id.short} may not open a round lane")
            except (OSError, ssl.SSLError, RemoteProtocolError) as error:
                self.handshakes_failed += 1
                log.info("refused a round lane: %s", error or type(error).__name__)
                return
            with pipe:
                self._read_frames(pipe, raw, str(peer.peer_id))
        except TimeoutError as error:
            self.frame_timeouts += 1
            log.info("round lane cut off: %s", error)
        except RemoteProtocolError as error:
            self.frames_refused += 1
            log.info("round lane closed: %s", error)
        except (OSError, ssl.SSLError, trio.RunFinishedError) as error:
            log.info("round lane ended: %s", error or type(error).__name__)
        finally:
            with self._lock:
                self._receiving.discard(raw)
            raw.close()

    def _read_frames(self, pipe: TlsPipe, raw: socket.socket, peer: NodeId) -> None:
        prefix = bytearray(FRAME_LEN.size)
        while not self._stop.is_set():
            try:
                _read_within(pipe, raw, memoryview(prefix), _Allowance(LANE_IDLE_S))
            except ConnectionError:
                return  # the sender closed the lane between frames
            except TimeoutError:
                self.idle_closed += 1
                return
            (size,) = FRAME_LEN.unpack(prefix)
            if not 4 <= size <= FRAME_BYTES_MAX_DEFAULT:
                raise FrameRefused(f"lane frame of {size} bytes")
            self._one_frame(pipe, raw, peer, size)

    def _one_frame(self, pipe: TlsPipe, raw: socket.socket, peer: NodeId, size: int) -> None:
        allowance = _Allowance(FRAME_TIMEOUT_S + size / FRAME_RATE_MIN_BYTES_S)
        self._wait_turn(size, peer)  # the node's backlog, not the peer's time
        frame = self._open_frame()
        body = bytearray()
        try:
            while len(body) < size:
                step = min(STEP_BYTES, size - len(body))
                self._grow(frame, step)
                start = len(body)
                body += _ZEROS[:step]
                with memoryview(body) as view, view[start:] as part:
                    _read_within(pipe, raw, part, allowance)
                if start == 0:
                    _check_type(body, size)
            message = decode_body(body)
            payload = payload_of(message)
        except BaseException:
            self._settle(frame, peer, 0)
            raise
        self._settle(frame, peer, len(payload))
        digest = content_digest(payload) if payload else None
        assert self._token is not None
        try:
            trio.from_thread.run_sync(self.deliver, peer, message, digest, trio_token=self._token)
        except BaseException:
            self.release(len(payload), peer)
            raise
        del body, message, payload  # the node has them; not kept while the lane waits


class _Allowance:
    """Seconds a peer has left to deliver what is being read."""

    def __init__(self, seconds: float) -> None:
        self.left_s = seconds


def _read_within(
    pipe: TlsPipe, raw: socket.socket, view: memoryview, allowance: _Allowance
) -> None:
    """Fill ``view``; ``TimeoutError`` once the reads took ``allowance`` in all."""
    got = 0
    while got < len(view):
        if allowance.left_s <= 0:
            raise TimeoutError(f"{len(view) - got} bytes of a frame did not arrive in time")
        raw.settimeout(allowance.left_s)
        started = time.monotonic()
        try:
            count = pipe.recv_into(view[got:])
        finally:
            allowance.left_s -= time.monotonic() - started
        if not count:
            raise ConnectionError("connection closed mid-frame")
        got += count


def _check_type(body: bytearray, size: int) -> None:
    tag = peek_tag(memoryview(body)[:TAG_PEEK_BYTES], size)
    if tag is not None and size > (limit := frame_bytes_max_for(tag, FRAME_BYTES_MAX_DEFAULT)):
        raise FrameRefused(
            f"lane frame of {size} bytes over the {limit}-byte limit of tag {tag:#x}"
        )

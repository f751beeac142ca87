"""Round lanes: a sync round's messages pushed to its participants over lanes.

Theory of operation
-------------------
A round moves the model about twice through every node (reduce-scatter, all-gather). On the
node's message connections every 16 KiB TLS record is a trip through the event loop that
also runs consensus, so the round's messages (manifests, chunks, merged pieces: a round's
and a merged-model fetch's) travel on *lanes* (:mod:`swarmlearn.p2p.lane`): one mutual-TLS
connection per ordered pair of participants, dialed when the first message for that peer
is sent, written and read by threads with blocking calls, closed when idle.

- Each node accepts lanes on a port of its own, or on its host's one port (a lane's first
  byte, :data:`LANE_ROUND`, tells it from a link there: :meth:`RoundLanes.take`), and
  announces that port on its message connections (:class:`LanePort`); the host is the one
  the ledger records for that node. A lane starts with that byte on either port.
- Sending (:meth:`RoundLanes.send`, called by the node from the event loop): the message
  joins the peer's queue (bounded in bytes; a full queue drops, as a lossy link would: the
  round's receiver asks for what it lacks again, :mod:`swarmlearn.roles.sl.repair`, and the
  deadline rule ends what that cannot repair). The peer's sender thread dials when it has no
  connection and writes each frame with ``sendall`` on views of the weights: the model is
  never copied to be sent. Frames to one peer keep their order (a manifest before its
  chunks). A sender with nothing to send for ``sender_idle_s`` closes its lane and its
  thread ends (``idle_closed_out``); the receiver sees the close between frames and ends
  its side (``peer_closed``). So lanes exist among a round's participants only, while it
  runs.
- Receiving: a thread per accepted lane reads each frame into its own buffer (the only
  copy is OpenSSL's), decodes it, hashes the payload there, and hands message and digest
  to the event loop (``deliver``, queued with ``run_sync_soon`` in the lane's order: the
  lane does not wait for a busy loop to take each frame). Payload bytes handed over but not
  yet handled by the node are bounded (``receive_budget_bytes``; the node calls
  :meth:`RoundLanes.release` when it handled one): a lane waits before reading more, so a
  node whose loop is busy slows its senders (TCP backpressure) instead of piling up a
  model's worth of frames.
- Per sender, too (``peer_budget_bytes``): its payloads delivered and not yet handled, plus
  its chunks the node's merge holds for their turn (the fixed participant order;
  :meth:`RoundLanes.set_held`, from the node after each input). Over it, that sender's lane
  waits (one frame always may when it has none), so only that sender slows down. No
  deadlock: every sender sends an owner's chunks in chunk order, so the participant the
  merge waits for holds nothing (its earlier regions are complete) and is always read.

What a lane peer can make a node hold is bounded (issue 19): at most ``threads_max`` lanes
are served at once (more are closed at once, counted in ``refused``); the whole TLS
handshake must end within ``handshake_timeout_s``; only swarm nodes (``NODE_ROLES``) get a
lane; a frame over its message type's limit is refused from its header
(:func:`~swarmlearn.p2p.limits.frame_bytes_max_for`); a frame's buffer grows a step
(``step_bytes``) at a time as its bytes arrive, and the frames being read hold at most
``inflight_bytes_max`` together (the oldest always may go on), so a sender that announces
64 MiB and goes silent holds one step and nobody else's turn; its reads of one frame may
take ``frame_timeout_s`` plus a second per ``frame_rate_min_bytes_s`` (the time the lane
waits for the node's budget does not count), and between frames ``idle_s``: past either
the lane is cut (``frame_timeouts``, ``idle_closed``). Senders close a lane idle for
``sender_idle_s`` (under ``idle_s``), so an idle cut never eats a frame. Every lane thread,
sender or receiver, runs in a bounded :class:`~swarmlearn.p2p.lane.LaneThreads` pool: its
end is counted, and :meth:`RoundLanes.close` leaves none running (``serve`` waits for them).

A lane that cannot be dialed or breaks (a firewall that lets only the message port through,
a peer that restarted) hands the message it was writing, and the rest of its queue, back
to the node's message connection (``fallback``), and that peer gets no lane for
``retry_s``: rounds go on, slower, rather than losing chunks. Nothing here decides
anything about the round: the sans-IO core still verifies every chunk against the sender's
commitment (with the digest computed here) and owns every deadline.
"""

from __future__ import annotations

import logging
import queue
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import trio

from swarmlearn.digest import content_digest
from swarmlearn.errors import RemoteProtocolError
from swarmlearn.p2p.framing import FRAME_BYTES_MAX_DEFAULT, FRAME_LEN
from swarmlearn.p2p.identity import NODE_ROLES, Identity
from swarmlearn.p2p.lane import (
    ACCEPT_POLL_S,
    LANE_ERRORS,
    Acceptor,
    Allowance,
    Conn,
    LaneThreads,
    TlsPipe,
    accept_lane,
    dial_lane,
    read_within,
    send_message,
)
from swarmlearn.p2p.limits import FrameRefused, frame_bytes_max_for
from swarmlearn.p2p.tls import client_context, server_context
from swarmlearn.p2p.wire import TAG_PEEK_BYTES, Message, decode_body, payload_of, peek_tag
from swarmlearn.pages import map_pages, shed_pages
from swarmlearn.sansio import NodeId

log = logging.getLogger(__name__)

QUEUE_BYTES_MAX = 512 * 1024 * 1024  # per peer, payload bytes waiting to be sent
DIAL_TIMEOUT_S = 3.0  # TCP connect (a firewall that drops the lane port costs this, then
#                       the message connection is used for LANE_RETRY_S)
HANDSHAKE_TIMEOUT_S = 10.0
SEND_TIMEOUT_S = 60.0  # one frame's write; a peer that reads nothing for this long is dropped
RECEIVE_BUDGET_BYTES = 32 * 1024 * 1024  # payloads delivered, not yet handled by the node
PEER_BUDGET_BYTES = 8 * 1024 * 1024  # one sender's payloads delivered and not handled, and
#                                      its chunks held for their turn by the node's merge
LANE_RETRY_S = 120.0  # after a lane to a peer failed, its messages take the message connection
LANE_THREADS_MAX = 64  # lanes served (and handshakes) at once; more are closed at once
SENDERS_MAX = 256  # peers with a sender thread at once; more take the message connection
INFLIGHT_BYTES_MAX = 32 * 1024 * 1024  # frames being read, all lanes (the oldest may exceed)
STEP_BYTES = 1024 * 1024  # a frame's buffer grows by this much, taken from the budgets first
FRAME_TIMEOUT_S = 10.0  # one frame's reads may take this, plus a second per
FRAME_RATE_MIN_BYTES_S = 1024 * 1024  # ... this many bytes of it
LANE_IDLE_S = 300.0  # silence between frames before an accepted lane is closed
SENDER_IDLE_S = 120.0  # a sender closes its lane idle this long (under LANE_IDLE_S)
CLOSE_JOIN_S = 5.0  # at close, how long the lanes' threads have to end (then: leaked)
LANE_ROUND = b"R"  # a round lane's first byte (beside a host's "M" links and "B" blob lanes)


@dataclass(frozen=True)
class LaneLimits:
    """The round lanes' bounds and deadlines (the module constants; tests shrink them)."""

    queue_bytes_max: int = QUEUE_BYTES_MAX
    dial_timeout_s: float = DIAL_TIMEOUT_S
    handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S
    send_timeout_s: float = SEND_TIMEOUT_S
    receive_budget_bytes: int = RECEIVE_BUDGET_BYTES
    peer_budget_bytes: int = PEER_BUDGET_BYTES
    retry_s: float = LANE_RETRY_S
    threads_max: int = LANE_THREADS_MAX
    senders_max: int = SENDERS_MAX
    inflight_bytes_max: int = INFLIGHT_BYTES_MAX
    step_bytes: int = STEP_BYTES
    frame_timeout_s: float = FRAME_TIMEOUT_S
    frame_rate_min_bytes_s: float = FRAME_RATE_MIN_BYTES_S
    idle_s: float = LANE_IDLE_S
    sender_idle_s: float = SENDER_IDLE_S


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


#: Queued on a sender by :meth:`RoundLanes.open`: dial the lane now, before anything is sent.
_DIAL = object()


class _Sender:
    """One peer's outgoing lane: a queue and the pool thread that drains it."""

    def __init__(self, lanes: RoundLanes, peer: NodeId) -> None:
        self.lanes = lanes
        self.peer = peer
        self.queue: queue.SimpleQueue[Message | object | None] = queue.SimpleQueue()
        self.queued_bytes = 0
        self.lock = threading.Lock()
        self.sock: ssl.SSLSocket | None = None

    def put(self, message: Message) -> bool:
        size = len(payload_of(message))
        with self.lock:
            if self.queued_bytes + size > self.lanes.limits.queue_bytes_max:
                return False
            self.queued_bytes += size
        self.queue.put(message)
        return True

    def run(self) -> None:
        try:
            while True:
                try:
                    message = self.queue.get(timeout=self.lanes.limits.sender_idle_s)
                except queue.Empty:
                    if self.lanes.retire(self):
                        break
                    continue
                if message is None:
                    break
                if message is _DIAL:
                    self._open()
                    continue
                assert isinstance(message, Message)
                self._one(message)
                # Not kept while waiting for the next: it is a view of a whole model (a merged
                # one would stay alive into the next round, a second model's worth of memory).
                del message
        finally:
            self._close()

    def _one(self, message: Message) -> None:
        try:
            if self.lanes.stopping:
                self.lanes.dropped += 1  # closing: what is still queued is not sent
            elif self.lanes.is_down(self.peer):
                self.lanes.fall_back(self.peer, message)
            else:
                self._send(message)
        except LANE_ERRORS as error:
            log.info(
                "round lane to %s: %s; using the message connection for %g s",
                self.peer[:8],
                error or type(error).__name__,
                self.lanes.limits.retry_s,
            )
            self._close()
            self.lanes.mark_down(self.peer)
            self.lanes.fall_back(self.peer, message)  # a partial frame is never delivered
        finally:
            with self.lock:
                self.queued_bytes -= len(payload_of(message))

    def _open(self) -> None:
        """Dial ahead of the first message; a failure is no fault yet (the first send dials
        again, and only its failure takes the peer to the message connection)."""
        if self.sock is not None or self.lanes.stopping or self.lanes.is_down(self.peer):
            return
        try:
            self.sock = self._dial()
        except LANE_ERRORS as error:
            self.lanes.open_failed += 1
            log.info("round lane to %s not opened ahead: %s", self.peer[:8], error or "failed")

    def _send(self, message: Message) -> None:
        if self.sock is None:
            self.sock = self._dial()
        map_pages(payload_of(message))
        send_message(self.sock, message)
        shed_pages(payload_of(message))  # sent from a handover file: not kept resident here

    def _dial(self) -> ssl.SSLSocket:
        lanes, limits = self.lanes, self.lanes.limits
        address = lanes.address(self.peer)
        if address is None:
            raise RemoteProtocolError("no lane address known")
        sock = dial_lane(
            lanes.client,
            address,
            expect=self.peer,
            reader=False,
            dial_timeout_s=limits.dial_timeout_s,
            handshake_timeout_s=limits.handshake_timeout_s,
            io_timeout_s=limits.send_timeout_s,
            first_byte=LANE_ROUND,
            hold=lanes.out.hold,  # close() wakes a dial still in its handshake
        )
        assert isinstance(sock, ssl.SSLSocket)
        return sock

    def _close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def stop(self) -> None:
        self.queue.put(None)


class RoundLanes:
    """A node's round lanes: its lane listener, and one sender per peer (see module doc)."""

    def __init__(
        self,
        identity: Identity,
        deliver: Deliver,
        fallback: Fallback | None = None,
        limits: LaneLimits | None = None,
    ) -> None:
        self.me = str(identity.peer_id)
        self.limits = limits = limits or LaneLimits()
        self.client = client_context(identity)
        self.server = server_context(identity)
        self.deliver = deliver
        self.fallback = fallback
        self.port = 0
        self.dropped = 0  # messages lost: a full queue, or a failed lane with no fallback
        self.fallen_back = 0  # messages handed back to the message connection
        self.refused = 0  # lanes closed at accept: threads_max were served already
        self.handshakes_failed = 0  # timed out, no node certificate, or this node itself
        self.frame_timeouts = 0  # senders that stopped mid-frame, cut off
        self.frames_refused = 0  # over their type's limit, or undecodable
        self.idle_closed = 0  # accepted lanes silent for idle_s between frames, cut off
        self.opened_ahead = 0  # senders started by open(), before a message
        self.open_failed = 0  # ... whose dial ahead failed
        self.idle_closed_out = 0  # this node's lanes idle for sender_idle_s, closed by it
        self.peer_closed = 0  # accepted lanes the sender closed between frames
        self.into = LaneThreads("round-lanes-in", limits.threads_max)  # one per accepted lane
        self.out = LaneThreads("round-lanes-out", limits.senders_max)  # one per peer sent to
        self._accepting = LaneThreads("round-lanes-accept", 1)
        self._acceptor: Acceptor | None = None
        self._zeros = memoryview(bytes(limits.step_bytes))
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
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None

    # ------------------------------------------------------------ addresses

    def set_host(self, peer: NodeId, host: str) -> None:
        self._hosts[peer] = host

    def set_port(self, peer: NodeId, port: int) -> None:
        self._ports[peer] = port

    def address(self, peer: NodeId) -> tuple[str, int] | None:
        host, port = self._hosts.get(peer), self._ports.get(peer)
        return None if host is None or port is None else (host, port)

    # ------------------------------------------------------------ budgets

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
        limits = self.limits
        with self._budget:
            while not self._stop.is_set():
                mine = self._bytes_of(peer)
                over_peer = mine > 0 and mine + size > limits.peer_budget_bytes
                if over_peer:
                    self.stalled.add(peer)
                pending = self._pending_bytes
                over_all = pending > 0 and pending + size > limits.receive_budget_bytes
                if not over_peer and not over_all:
                    break
                self._budget.wait(ACCEPT_POLL_S)
            self.stalled.discard(peer)

    def _grow(self, frame: int, size: int) -> None:
        """Frame number ``frame`` is to hold ``size`` more bytes: wait while the frames being
        read hold ``inflight_bytes_max``, unless it is the oldest of them (which always may,
        so they end one by one: read whole, or cut off by their deadline)."""
        with self._budget:
            while (
                not self._stop.is_set()
                and self._inflight_bytes + size > self.limits.inflight_bytes_max
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

    # ------------------------------------------------------------ sending

    def send(self, peer: NodeId, message: Message) -> bool:
        """Queue ``message`` on the lane to ``peer`` (from the event loop); False when the
        peer has no lane (no address yet, down, or no sender thread left): the caller sends
        it on the message connection."""
        if not self._may_lane(peer):
            return False
        with self._lock:
            sender = self._sender_for(peer)
            if sender is None:
                return False
            taken = sender.put(message)
        if not taken:
            self.dropped += 1
        return True

    def _may_lane(self, peer: NodeId) -> bool:
        """Not closing, the peer's lane address known, the peer not down."""
        return not self._stop.is_set() and self.address(peer) is not None and not self.is_down(peer)

    def _sender_for(self, peer: NodeId) -> _Sender | None:
        """``peer``'s sender, started if it has none (None: no sender thread left); under
        ``_lock``."""
        sender = self._senders.get(peer)
        if sender is None:
            sender = _Sender(self, peer)
            if not self.out.start(sender.run, name=f"lane-{peer[:8]}"):
                return None
            self._senders[peer] = sender
        return sender

    def open(self, peers: Iterable[NodeId]) -> None:
        """Dial the lanes to ``peers`` now, ahead of the round's first chunk (from the event
        loop; peers whose lane address is not known yet, or with a lane already, are left).
        A round's first exchange otherwise opens all its lanes at once: at 32 daemons on 2
        cores, 240 TLS handshakes when the exchange starts, beside the ledger, took its
        first attempt to 3-4x the second's time and sometimes past its deadline."""
        for peer in peers:
            if not self._may_lane(peer):
                continue
            with self._lock:
                if peer in self._senders:
                    continue
                sender = self._sender_for(peer)
                if sender is None:
                    return  # no sender thread left: the round's sends fall back as they would
                self.opened_ahead += 1
                sender.queue.put(_DIAL)

    def retire(self, sender: _Sender) -> bool:
        """From ``sender``'s thread, idle for ``sender_idle_s``: True when it ends (nothing was
        queued meanwhile); its lane is closed, and counted."""
        with self._lock:
            if not sender.queue.empty():
                return False
            if self._senders.get(sender.peer) is sender:
                del self._senders[sender.peer]
        if sender.sock is not None:
            self.idle_closed_out += 1
            log.debug("round lane to %s idle: closed", sender.peer[:8])
        return True

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def is_down(self, peer: NodeId) -> bool:
        return time.monotonic() < self._down_until.get(peer, 0.0)

    def mark_down(self, peer: NodeId) -> None:
        self._down_until[peer] = time.monotonic() + self.limits.retry_s

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

    # ------------------------------------------------------------ running

    async def serve(
        self,
        host: str,
        port: int | None = 0,
        *,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept lanes on ``host:port`` (0: a free port; None: no port of their own, lanes
        come through :meth:`take` from the host's) until cancelled; reports the port (0 for
        None). On the way out every lane closes and its thread is waited for."""
        self._token = trio.lowlevel.current_trio_token()
        if self._stop.is_set():
            raise RuntimeError("round lanes: serve() after close()")
        if port is not None:
            listener = socket.create_server((host, port))
            self.port = int(listener.getsockname()[1])
            self._acceptor = Acceptor(
                listener, self._serve_accepted, self.into, self._accepting, on_refused=self._refused
            )
            if not self._acceptor.start():
                raise RuntimeError("round lanes: serve() after close()")
        task_status.started(self.port)
        try:
            await trio.sleep_forever()
        finally:
            self.close()
            with trio.CancelScope(shield=True):  # the threads may call into this loop
                await trio.to_thread.run_sync(self.join, CLOSE_JOIN_S)

    def take(self, raw: socket.socket) -> bool:
        """Serve a lane accepted elsewhere (a host's listener, which read its first byte) on
        a thread of the pool; False (the caller closes ``raw``) when ``threads_max`` are
        served."""
        if not self.into.start(self._serve_taken, raw, name="round-lane", holds=raw):
            self._refused()
            return False
        return True

    def _serve_taken(self, raw: socket.socket) -> None:
        try:
            self._serve_lane(raw)
        finally:
            raw.close()

    def _refused(self) -> None:
        self.refused += 1

    def close(self) -> None:
        """Stop: senders end, every lane's socket is shut down (any thread; see :meth:`join`)."""
        self._stop.set()
        with self._lock:
            senders = list(self._senders.values())
        for sender in senders:
            sender.stop()
        if self._acceptor is not None:
            self._acceptor.close()
        for pool in (self._accepting, self.into, self.out):
            pool.close()
        with self._budget:
            self._budget.notify_all()

    def join(self, timeout_s: float) -> int:
        """Wait (blocking, not from the event loop while it must run ``deliver``) for every
        lane thread after :meth:`close`; how many outlived ``timeout_s`` (logged, counted)."""
        deadline = time.monotonic() + timeout_s
        return sum(
            pool.join(max(0.0, deadline - time.monotonic()))
            for pool in (self._accepting, self.into, self.out)
        )

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
            "opened_ahead": self.opened_ahead,
            "open_failed": self.open_failed,
        }

    def thread_statistics(self) -> dict[str, dict[str, int]]:
        """The lane thread pools' counters (live, started, refused, ended, failed, leaked),
        and the lanes closed at either end between frames."""
        return {
            "in": self.into.statistics() | {"peer_closed": self.peer_closed},
            "out": self.out.statistics() | {"idle_closed": self.idle_closed_out},
        }

    # ------------------------------------------------------------ receiving (lane threads)

    def _serve_accepted(self, raw: socket.socket) -> None:
        """A lane accepted on the lane port: its first byte, then the lane."""
        try:
            raw.settimeout(self.limits.handshake_timeout_s)
            first = raw.recv(1)
        except OSError as error:  # TimeoutError included
            first = b""
            log.info("refused a round lane: %s", error or type(error).__name__)
        if first != LANE_ROUND:
            self.handshakes_failed += 1
            log.info("refused a round lane: first byte %r", first)
            return
        self._serve_lane(raw)

    def _serve_lane(self, raw: socket.socket) -> None:
        limits = self.limits
        try:
            pipe, peer = accept_lane(
                raw,
                self.server,
                reader=True,
                handshake_timeout_s=limits.handshake_timeout_s,
                io_timeout_s=None,
                roles=NODE_ROLES,
                me=self.me,
            )
        except LANE_ERRORS as error:
            self.handshakes_failed += 1
            log.info("refused a round lane: %s", error or type(error).__name__)
            return
        assert isinstance(pipe, TlsPipe)
        try:
            self._read_frames(pipe, str(peer.peer_id))
        except TimeoutError as error:
            self.frame_timeouts += 1
            log.info("round lane cut off: %s", error)
        except RemoteProtocolError as error:
            self.frames_refused += 1
            log.info("round lane closed: %s", error)
        except (OSError, ssl.SSLError, trio.RunFinishedError) as error:
            log.info("round lane ended: %s", error or type(error).__name__)

    def _read_frames(self, pipe: Conn, peer: NodeId) -> None:
        prefix = bytearray(FRAME_LEN.size)
        while not self._stop.is_set():
            try:
                read_within(pipe, memoryview(prefix), Allowance(self.limits.idle_s))
            except ConnectionError:
                self.peer_closed += 1  # the sender closed the lane between frames
                return
            except TimeoutError:
                self.idle_closed += 1
                return
            (size,) = FRAME_LEN.unpack(prefix)
            if not 4 <= size <= FRAME_BYTES_MAX_DEFAULT:
                raise FrameRefused(f"lane frame of {size} bytes")
            self._one_frame(pipe, peer, size)

    def _one_frame(self, pipe: Conn, peer: NodeId, size: int) -> None:
        limits = self.limits
        allowance = Allowance(limits.frame_timeout_s + size / limits.frame_rate_min_bytes_s)
        self._wait_turn(size, peer)  # the node's backlog, not the peer's time
        frame = self._open_frame()
        body = bytearray()
        try:
            while len(body) < size:
                step = min(limits.step_bytes, size - len(body))
                self._grow(frame, step)
                start = len(body)
                body += self._zeros[:step]
                with memoryview(body) as view, view[start:] as part:
                    read_within(pipe, part, allowance)
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
        try:  # queued for the loop, not waited for: the lane reads on (the budget bounds it)
            self._token.run_sync_soon(self.deliver, peer, message, digest)
        except BaseException:
            self.release(len(payload), peer)
            raise
        del body, message, payload  # the node has them; not kept while the lane waits


def _check_type(body: bytearray, size: int) -> None:
    tag = peek_tag(memoryview(body)[:TAG_PEEK_BYTES], size)
    if tag is not None and size > (limit := frame_bytes_max_for(tag, FRAME_BYTES_MAX_DEFAULT)):
        raise FrameRefused(
            f"lane frame of {size} bytes over the {limit}-byte limit of tag {tag:#x}"
        )

"""The SL round core as tables: each row is an input, the effects it must give (in order) and
what the round must look like after it.

The core runs over a real swarm ledger (:class:`~swarmlearn.consensus.ledger.app.SwarmApp`)
fed blocks by the table: a :class:`Block` row commits the transactions the core submitted
since the last block, plus the named peers' own, then tells the core (``LedgerChanged``), as
the node does after every commit. Nodes are ``a``, ``b``, ``c`` in peer-id order, so ``a``
(this node) owns range 0 of every plan. The model is 96 float32 numbers in 64-byte chunks
(6 chunks): two participants own 3 chunks each, three own 2 each. One clock runs the ledger's
block times and the core's ``now``; a :class:`Fire` row fires a timer the core set, at its
time. Effects are written short (:class:`Submit`, :class:`Sent`, :class:`Timer`, :class:`Said`,
:class:`Fault`, ...), peer ids in texts as their names. Every node merges with the table's
method (``mean`` unless it says another).
"""

from __future__ import annotations

import datetime as dt
import mmap
import re
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st

from swarmlearn.consensus.ledger.app import DEFAULT_CONTRACT, SwarmApp
from swarmlearn.consensus.ledger.rounds import RoundStatus
from swarmlearn.consensus.ledger.txs import (
    CheckIn,
    CheckOut,
    Exclude,
    Heartbeat,
    Join,
    Merged,
    SignedTx,
)
from swarmlearn.consensus.tendermint.events import TxRefused
from swarmlearn.consensus.tendermint.types import Block as LedgerBlock
from swarmlearn.consensus.tendermint.types import BlockHeader
from swarmlearn.merge import ModelState, build_manifest, flatten, layout_of
from swarmlearn.merge.manifest import chunk_hashes, manifest_root
from swarmlearn.merge.sharded import float_piece_count
from swarmlearn.p2p.certs import create_ca, issue_certificate
from swarmlearn.p2p.identity import IdentityPaths, Role, load_identity
from swarmlearn.p2p.wire import Message, decode_header
from swarmlearn.roles.sl.core import SLRoundCore
from swarmlearn.roles.sl.global_merge import row_width
from swarmlearn.roles.sl.messages import (
    Contribute,
    FetchLatest,
    FetchMerged,
    LatestFailed,
    LatestModel,
    LatestProgress,
    LedgerChanged,
    MergedPiece,
    MergedUnavailable,
    MergePartials,
    NeedRefill,
    PeerFault,
    Progress,
    Refilled,
    ResendRound,
    ResendUnheld,
    RoundChunk,
    RoundDone,
    RoundFailed,
    RoundManifest,
    RoundPart,
    SessionClosed,
    ShedPages,
    SubmitSigned,
    specs_of,
)
from swarmlearn.roles.sl.repair import ASKS_SERVED_MAX, resend_bytes_max
from swarmlearn.roles.sl.timers import (
    AttemptDeadline,
    AttemptHalfway,
    CheckInDue,
    CloseDue,
    FetchTick,
    GoneWait,
    LatestDeadline,
    LatestStall,
    ProgressDue,
    QueuedTimeout,
    RefillDeadline,
    RepairDue,
    SyncTimeout,
)
from swarmlearn.sansio import Deliver, Log, Metric, Receive, Request, Send, SetTimer, TimerFired
from tests.test_swarm_app import CHAIN, Swarm, der, signed

pytestmark = pytest.mark.unit

C = DEFAULT_CONTRACT
EPOCH = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
T0_MS = int(EPOCH.timestamp() * 1000)
CHUNK_BYTES = 64
NAMES = ("a", "b", "c")


# ---------------------------------------------------------------- what a row gives


@dataclass(frozen=True)
class Sync:
    """The trainer hands over its weights (a ``Contribute``); ``in_file``: in its handover
    file (a shared mapping the merged model is assembled in), and it can refill them."""

    session: int = 0
    wait_s: float | None = None
    in_file: bool = False


@dataclass(frozen=True)
class Refill:
    """The trainer wrote its weights into its handover file again (``ok``; ``wrong``: other
    weights than it committed to), or could not."""

    ok: bool = True
    wrong: bool = False


@dataclass(frozen=True)
class Block:
    """A block commits, ``after_ms`` after the last one: the core's transactions since the
    last block (unless ``mine`` is False), then the named peers' check-ins and merged
    reports (the root this node reported; the model it must fetch when it reported none)."""

    checkins: tuple[str, ...] = ()
    merged: tuple[str, ...] = ()
    after_ms: int = 100
    mine: bool = True


@dataclass(frozen=True)
class Manifest:
    """``sender``'s manifest of its committed weights."""

    sender: str
    attempt: int = 1


@dataclass(frozen=True)
class Chunk:
    """``sender``'s chunk ``index`` (``bad``: bytes other than those it committed to)."""

    sender: str
    index: int
    attempt: int = 1
    bad: bool = False


@dataclass(frozen=True)
class Piece:
    """``sender``'s merged range, in one piece (``attempt`` -1: the model this node fetched);
    ``start``: put at another byte offset."""

    sender: str
    attempt: int = 1
    start: int | None = None


@dataclass(frozen=True)
class Asks:
    """``sender`` asks for the merged model of round ``number`` (``FetchMerged``): its
    manifest, and the chunks ``indexes``."""

    sender: str
    number: int = 1
    indexes: tuple[int, ...] = ()


@dataclass(frozen=True)
class FetchedManifest:
    """``sender``'s manifest of the merged model this node fetches (``bad``: of other bytes)."""

    sender: str
    bad: bool = False


@dataclass(frozen=True)
class Fetched:
    """``sender``'s chunk ``index`` of the merged model this node fetches (``bad``: zeros)."""

    sender: str
    index: int
    bad: bool = False


@dataclass(frozen=True)
class Partials:
    """``sender``'s partial sums of ``step`` of a global method: rows of the size its range
    has (zeros; ``negative``: -1.0, which no sum of squares is), or of ``size`` bytes."""

    sender: str
    step: int
    size: int | None = None
    negative: bool = False


@dataclass(frozen=True)
class Unavailable:
    """``sender`` holds no merged model of the round (the answer to ``FetchMerged``)."""

    sender: str


@dataclass(frozen=True)
class Fire:
    """The timer with ``tag`` fires (at its time when the core set it; else now)."""

    tag: Hashable


@dataclass(frozen=True)
class Refused:
    """The node's mempool refuses this node's check-in, saying ``reason``."""

    reason: str


@dataclass(frozen=True)
class Latest:
    """A trainer that joins late asks for the contract's latest model (``FetchLatest``)."""

    wait_s: float = 60.0


@dataclass(frozen=True)
class SessionEnds:
    session: int


@dataclass(frozen=True)
class AsksAgain:
    """``sender`` lost some of this node's ``what`` of the attempt and asks for them again
    (``ResendRound``: chunk indexes, piece offsets or the step)."""

    sender: str
    what: RoundPart
    indexes: tuple[int, ...] = ()
    attempt: int = 1


@dataclass(frozen=True)
class CannotResend:
    """``sender`` holds no more the ``what`` this node asked it for (``ResendUnheld``)."""

    sender: str
    what: RoundPart
    indexes: tuple[int, ...] = ()


Given = (
    Sync
    | Refill
    | Block
    | Manifest
    | Chunk
    | Piece
    | Partials
    | Asks
    | FetchedManifest
    | Fetched
    | Unavailable
    | Fire
    | Refused
    | Latest
    | SessionEnds
    | AsksAgain
    | CannotResend
)


# ---------------------------------------------------------------- effects, written short


@dataclass(frozen=True)
class Submit:
    """A transaction for the ledger: its type, and what it is about."""

    tx: str
    about: Any = None


@dataclass(frozen=True)
class Sent:
    to: str
    what: str  # the message's type
    at: int | None = None  # a chunk's index, a piece's byte offset
    attempt: int = 1  # the attempt it is of (-1: a merged model served; 1 where none is named)


@dataclass(frozen=True)
class Asked:
    """This node asks ``to`` for the merged model it fetches (``FetchMerged``): its manifest,
    or the chunks ``indexes``."""

    to: str
    indexes: tuple[int, ...] | str = "manifest"


@dataclass(frozen=True)
class AskedAgain:
    """This node asks ``to`` for the parts of the attempt it lacks (``ResendRound``)."""

    to: str
    what: RoundPart
    indexes: tuple[int, ...] = ()


@dataclass(frozen=True)
class Unheld:
    """This node tells ``to`` it cannot resend these (``ResendUnheld``)."""

    to: str
    what: RoundPart
    indexes: tuple[int, ...] = ()


@dataclass(frozen=True)
class Timer:
    tag: Hashable
    delay_s: float


@dataclass(frozen=True)
class Said:
    """Progress for the trainer."""

    text: str


@dataclass(frozen=True)
class Logged:
    level: str
    text: str


@dataclass(frozen=True)
class Counted:
    metric: str


@dataclass(frozen=True)
class Fault:
    """The peer broke the round's protocol: the node's policing counts it against it."""

    peer: str
    reason: str


@dataclass(frozen=True)
class Shed:
    """Bytes of the handover file the round wrote: the node may let their pages go."""

    start: int
    size: int


@dataclass(frozen=True)
class AskRefill:
    """The trainer is asked to write its weights into its file again, for ``attempt``."""

    attempt: int


@dataclass(frozen=True)
class Done:
    """The trainer gets the merged model (of ``participants`` nodes)."""

    participants: int


@dataclass(frozen=True)
class Failed:
    reason: str


@dataclass(frozen=True)
class Model:
    """The latest model for a late trainer: that of ``round`` (0: none finished yet)."""

    round: int


@dataclass(frozen=True)
class NoModel:
    """No latest model for a late trainer, and why."""

    reason: str


@dataclass(frozen=True)
class Row:
    given: Given
    effects: list[Any]
    state: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Table:
    nodes: int  # a, b (and c) joined the swarm
    rows: list[Row]
    method: str = "mean"  # every node's merge method


# ---------------------------------------------------------------- the harness


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Swarm:
    """Three SL nodes of one swarm, named a, b, c in the order of their peer ids."""
    root = tmp_path_factory.mktemp("tables")
    ca = create_ca(root / "ca", now=EPOCH)
    made = []
    for index in range(len(NAMES)):
        issued = issue_certificate(ca, f"n{index}", root, hosts=[], roles=[Role.SL], now=EPOCH)
        paths = IdentityPaths(issued.cert_path, issued.key_path, root / "ca" / "ca.pem")
        made.append(load_identity(paths, now=EPOCH))
    made.sort(key=lambda identity: str(identity.peer_id))
    ca_der = ca.certificate.public_bytes(serialization.Encoding.DER)
    return Swarm(ca_der, dict(zip(NAMES, made, strict=True)))


def weights_of(name: str) -> ModelState:
    return ModelState({"w": np.arange(96, dtype=np.float32) + 1000 * NAMES.index(name)})


LAYOUT = layout_of(weights_of("a"), chunk_bytes=CHUNK_BYTES)


class Harness:
    def __init__(self, swarm: Swarm, nodes: int, method: str = "mean") -> None:
        people, ca_der = swarm.people, swarm.ca_der
        self.method = method
        self.people = people
        self.names = NAMES[:nodes]
        self.ids = {name: str(people[name].peer_id) for name in self.names}
        self.by_id = {peer: name for name, peer in self.ids.items()}
        self.app = SwarmApp(CHAIN, ca_der, T0_MS)
        self.now_ms = T0_MS
        self.height = 0
        self.flat = {name: bytes(flatten(weights_of(name), LAYOUT)) for name in self.names}
        self.hashes = {name: chunk_hashes(LAYOUT, flat) for name, flat in self.flat.items()}
        self.core = SLRoundCore(self.ids["a"], self.app, self._sign_mine)
        self.submitted: list[bytes] = []
        self.check_in = b""  # the last check-in the core sent
        self.timers: dict[Hashable, int] = {}  # tag -> when it fires (ms)
        self.my_root = b""  # the merged root this node reported
        self.file = mmap.mmap(-1, LAYOUT.total_bytes)  # the trainer's handover file
        self._block([signed(people[n], Join(f"{n}:1", der(people[n]))) for n in self.names])

    @property
    def now(self) -> float:
        return self.now_ms / 1000

    def _sign_mine(self, body: Message) -> bytes:
        return signed(self.people["a"], body)

    def _block(self, txs: list[bytes], after_ms: int = 100) -> None:
        self.height += 1
        self.now_ms += after_ms
        header = BlockHeader(CHAIN, self.height, self.now_ms, "v", b"", b"", b"", b"")
        self.app.execute_block(LedgerBlock(header, tuple(txs)))

    def apply(self, given: Given) -> list[Any]:
        core = self.core
        match given:
            case Sync(session, wait_s, in_file):
                flat: bytes | memoryview = self.flat["a"]
                if in_file:
                    self.file[:] = self.flat["a"]
                    flat = memoryview(self.file)
                c = Contribute(
                    C,
                    flat,
                    LAYOUT,
                    1,
                    2,
                    self.method,
                    wait_s=wait_s,
                    refill=in_file,
                    session=session,
                )
                effects = core.handle(Request(c), self.now)
            case Refill(ok, wrong):
                if ok:
                    self.file[:] = self.flat["b" if wrong else "a"]
                refilled = Refilled(C, 1, ok, "" if ok else "its model is gone")
                effects = core.handle(Request(refilled), self.now)
            case Block():
                effects = self._apply_block(given)
            case Manifest(sender, attempt):
                m = RoundManifest(C, 1, attempt, self.hashes[sender])
                effects = core.handle(Receive(self.ids[sender], m), self.now)
            case Chunk(sender, index, attempt, bad):
                start, stop = LAYOUT.chunk_span(index)
                data = self.flat[sender][start:stop]
                data = bytes(stop - start) if bad else data
                chunk = RoundChunk(C, 1, attempt, index, data)
                effects = core.handle(Receive(self.ids[sender], chunk), self.now)
            case Piece(sender, attempt, start):
                piece = self._piece(sender, attempt)
                if start is not None:
                    piece = MergedPiece(C, 1, attempt, start, piece.data)
                effects = core.handle(Receive(self.ids[sender], piece), self.now)
            case Partials(sender, step, size, negative):
                rows = self._rows(sender, size, -1.0 if negative else 0.0)
                partials = MergePartials(C, 1, self._attempt(), step, rows)
                effects = core.handle(Receive(self.ids[sender], partials), self.now)
            case Asks(sender, number, indexes):
                wants = FetchMerged(C, number, True, indexes)
                effects = core.handle(Receive(self.ids[sender], wants), self.now)
            case FetchedManifest(sender, bad):
                model = self.flat["a"] if bad else fetched_model()
                manifest = RoundManifest(C, 1, -1, chunk_hashes(LAYOUT, model))
                effects = core.handle(Receive(self.ids[sender], manifest), self.now)
            case Fetched(sender, index, bad):
                start, stop = LAYOUT.chunk_span(index)
                data = bytes(stop - start) if bad else fetched_model()[start:stop]
                piece = MergedPiece(C, 1, -1, start, data)
                effects = core.handle(Receive(self.ids[sender], piece), self.now)
            case Unavailable(sender):
                message = MergedUnavailable(C, 1)
                effects = core.handle(Receive(self.ids[sender], message), self.now)
            case Fire(tag):
                self.now_ms = max(self.now_ms, self.timers.pop(tag, self.now_ms))
                effects = core.handle(TimerFired(tag), self.now)
            case Refused(reason):
                check_in = self.check_in  # the last one sent; the mempool refused it:
                if check_in in self.submitted:  # no block will hold it
                    self.submitted.remove(check_in)
                effects = core.handle(Request(TxRefused(check_in, reason)), self.now)
            case Latest(wait_s):
                effects = core.handle(Request(FetchLatest(C, LAYOUT, wait_s)), self.now)
            case SessionEnds(session):
                effects = core.handle(Request(SessionClosed(session)), self.now)
            case AsksAgain(sender, what, indexes, attempt):
                ask = ResendRound(C, 1, attempt, what, indexes)
                effects = core.handle(Receive(self.ids[sender], ask), self.now)
            case CannotResend(sender, what, indexes):
                answer = ResendUnheld(C, 1, self._attempt(), what, indexes)
                effects = core.handle(Receive(self.ids[sender], answer), self.now)
        for effect in effects:
            if isinstance(effect, SubmitSigned):
                self.submitted.append(effect.tx)
                body = body_of(effect.tx)
                if isinstance(body, CheckIn):
                    self.check_in = effect.tx
                if isinstance(body, Merged):
                    self.my_root = body.root
            if isinstance(effect, SetTimer):
                self.timers[effect.tag] = self.now_ms + round(effect.delay_s * 1000)
        return [self.describe(effect) for effect in effects]

    def _apply_block(self, given: Block) -> list[Any]:
        people = self.people
        txs = self.submitted if given.mine else []
        self.submitted = []
        for name in given.checkins:
            txs.append(signed(people[name], self._check_in(name)))
        for name in given.merged:
            root = self.my_root or self._fetched_root()
            txs.append(signed(people[name], Merged(C, 1, self._attempt(), root)))
        before = len(self.app.state.refusals)
        self._block(txs, given.after_ms)
        refused = [reason for _, _, reason in list(self.app.state.refusals)[before:]]
        assert refused == [], refused
        return self.core.handle(Request(LedgerChanged()), self.now)

    def _check_in(self, name: str) -> CheckIn:
        root = manifest_root(LAYOUT, self.hashes[name])
        return CheckIn(C, 1, root, 1, 2, specs_of(LAYOUT), LAYOUT.total_bytes, self.method)

    def _attempt(self) -> int:
        return self.app.state.contracts[C].rounds[1].attempt

    def _piece(self, sender: str, attempt: int) -> MergedPiece:
        state = self.core.rounds[(C, 1)]
        assert state.attempt is not None
        assert state.attempt.plan is not None
        shard = state.attempt.plan.shards[state.attempt.participants.index(self.ids[sender])]
        data = self.flat[sender][shard.start_byte : shard.stop_byte]
        return MergedPiece(C, 1, attempt, shard.start_byte, data)

    def _rows(self, sender: str, size: int | None, value: float) -> bytes:
        attempt = self.core.rounds[(C, 1)].attempt
        assert attempt is not None
        assert attempt.plan is not None
        owner = attempt.participants.index(self.ids[sender])
        count = float_piece_count(LAYOUT, attempt.plan.shards[owner])
        numbers = count * row_width(attempt.method, len(attempt.participants))
        data = np.full(numbers, value, "<f8").tobytes()
        return data if size is None else bytes(size)

    def _fetched_root(self) -> bytes:
        return build_manifest(LAYOUT, fetched_model()).root

    def named(self, text: str) -> str:
        for peer, name in self.by_id.items():
            text = text.replace(peer[:8], name)
        return re.sub(r"root [0-9a-f]{12}", "root <root>", text)

    def describe(self, effect: Any) -> Any:
        match effect:
            case SubmitSigned(tx):
                body = body_of(tx)
                match body:
                    case Exclude(culprit=culprit):
                        return Submit("Exclude", self.by_id[culprit])
                    case Merged(attempt=attempt) | Heartbeat(attempt=attempt):
                        return Submit(type(body).__name__, attempt)
                    case CheckOut(session=session):
                        return Submit("CheckOut", session)
                return Submit(type(body).__name__)
            case Send(to, FetchMerged(manifest=manifest, indexes=indexes)):
                return Asked(self.by_id[to], "manifest" if manifest else indexes)
            case Send(to, ResendRound(what=part, indexes=indexes)):
                return AskedAgain(self.by_id[to], part, indexes)
            case Send(to, ResendUnheld(what=part, indexes=indexes)):
                return Unheld(self.by_id[to], part, indexes)
            case Send(to, message):
                what = type(message).__name__
                at = getattr(message, "index", getattr(message, "start", None))
                return Sent(self.by_id[to], what, at, getattr(message, "attempt", 1))
            case SetTimer(tag, delay_s):
                return Timer(tag, round(delay_s, 3))
            case Deliver(Progress(text=text) | LatestProgress(text=text)):
                return Said(self.named(text))
            case Deliver(LatestModel(round=number)):
                return Model(number)
            case Deliver(LatestFailed(reason=reason)):
                return NoModel(self.named(reason))
            case Deliver(PeerFault(peer, reason)):
                return Fault(self.by_id[peer], self.named(reason))
            case Deliver(ShedPages(start, size)):
                return Shed(start, size)
            case Deliver(NeedRefill(attempt=attempt)):
                return AskRefill(attempt)
            case Deliver(RoundDone(participants=count)):
                return Done(count)
            case Deliver(RoundFailed(reason=reason)):
                return Failed(self.named(reason))
            case Log(text, level):
                return Logged(level, self.named(text))
            case Metric(name, _):
                return Counted(name)
        return effect

    def state(self) -> dict[str, Any]:
        """Round 1 as a row names it: the ledger's status of it, whether the core holds it
        (``round``) and its messages held for a later attempt (``early``), the contracts with
        queued weights; then whether it is finished, whether merged bytes were written over
        its weights in the trainer's file, the attempt it waits for a refill for, its
        attempt (-1: fetching the merged model), the attempt's participants, whose
        manifests it holds, chunks waiting for their sender's manifest, owners whose merged
        range arrived, whether it reported its merged root, the partial sums it holds by
        step (a global method); and a fetch's sources asked now, the chunks it holds and its
        pass."""
        state = self.core.rounds.get((C, 1))
        record = self.app.state.contracts[C].rounds.get(1)
        found: dict[str, Any] = {
            "ledger": None if record is None else record.status,
            "round": state is not None,
            "early": len(self.core.book.early.held),
            "queued": sorted(self.core.sessions.queued),
        }
        if state is None:
            return found
        attempt = state.attempt
        found["finished"] = state.finished
        found["overwritten"] = state.overwritten
        found["refilling"] = state.refilling
        found["attempt"] = None if attempt is None else attempt.number
        if attempt is not None:
            names = [self.by_id.get(p, p) for p in attempt.participants]
            found["participants"] = tuple(names)
            found["manifests"] = sorted(names[i] for i in attempt.manifests if i >= 0)
            found["waiting"] = [(names[p], chunk) for p, chunk, _, _ in attempt.waiting]
            found["pieces"] = sorted(names[i] for i in attempt.pieces if i >= 0)
            found["reported"] = attempt.reported
            found["partials"] = {
                step: sorted(names[i] for i in rows) for step, rows in attempt.partials.items()
            }
        fetch = state.fetch
        if fetch is not None:
            held = 0 if fetch.assembler is None else fetch.assembler.held_count
            asking = tuple(self.by_id[p] for p in fetch.asking())
            found["fetching"] = (asking, held, fetch.pass_number)
        return found


def fetched_model() -> bytes:
    """The merged model the other participants agreed on, when this node missed it."""
    return bytes(flatten(ModelState({"w": np.full(96, 7.0, np.float32)}), LAYOUT))


def body_of(tx: bytes) -> Message:
    envelope = decode_header(tx)
    assert isinstance(envelope, SignedTx)
    return envelope.decoded_body()


def run_table(swarm: Swarm, table: Table) -> None:
    harness = Harness(swarm, table.nodes, table.method)
    for index, row in enumerate(table.rows):
        effects = harness.apply(row.given)
        assert effects == row.effects, f"row {index}: {row.given}"
        state = harness.state()
        for key, expected in row.state.items():
            assert state[key] == expected, f"row {index}: {row.given}: {key}"


# ---------------------------------------------------------------- the tables

CHECKING_IN = [
    Submit("CheckIn"),
    Said("checking in"),
    Timer(ProgressDue(C, 1), 30.0),
    Timer(CheckInDue(C, 1), 2.0),  # sent again unless the ledger holds it by then
]
#: The attempt's timers when the ledger closes the round: its deadline (10 s for a small
#: model, plus the node's 0.5 s margin) and halfway to it.
#: And the loss repair's timer (a second after the start, roles/sl/repair.py).
ATTEMPT_1 = [
    Timer(AttemptDeadline(C, 1, 1), 10.5),
    Timer(AttemptHalfway(C, 1, 1), 5.25),
    Timer(RepairDue(C, 1, 1), 1.0),
]
#: Of two participants, a owns chunks 0-2 and sends b its chunks of b's range.
TO_B = [Sent("b", "RoundManifest"), *(Sent("b", "RoundChunk", i) for i in (3, 4, 5))]
WITH_2 = Said("round 1: exchanging with 2 participants")
#: Of three, a owns chunks 0-1 and sends b chunks 2-3, c chunks 4-5.
TO_B_AND_C = [
    *[Sent("b", "RoundManifest"), Sent("b", "RoundChunk", 2), Sent("b", "RoundChunk", 3)],
    *[Sent("c", "RoundManifest"), Sent("c", "RoundChunk", 4), Sent("c", "RoundChunk", 5)],
]
WITH_3 = Said("round 1: exchanging with 3 participants")
OPEN, EXCHANGING = RoundStatus.OPEN, RoundStatus.EXCHANGING
DONE, FAILED = RoundStatus.DONE, RoundStatus.FAILED
TWICE = "chunk 0 of participant 1 arrived twice"
ELSEWHERE = "chunk 3 does not overlap owner 0's range"
UNLIKE = "chunk 1 does not match its commitment"
DROPPED = "round 1: dropped partial sums of step"
PARTIALS = Counted("sl_partials_dropped")
WRONG_SIZE = "its partial sums of step 0: 8 bytes, its range's rows are 80"
NEGATIVE = "its partial sums of step 0: negative or non-finite sums of squares"

#: Merged bytes land in the trainer's file, then c is excluded: attempt 2 needs a's weights.
REFILL_ASKED = [
    Row(Sync(in_file=True), CHECKING_IN),
    Row(Block(checkins=("b", "c")), [*ATTEMPT_1, *TO_B_AND_C, WITH_3]),
    Row(Piece("b"), [Shed(128, 128)], {"overwritten": True}),  # over a's chunks 2-3, sent
    Row(Manifest("c"), []),
    Row(
        Chunk("c", 0, bad=True),
        [
            Submit("Exclude", "c"),
            Logged("warning", "round 1: excluding c: chunk 0 does not match its commitment"),
        ],
    ),
    Row(
        Block(),
        [
            AskRefill(2),
            Said(
                "round 1: attempt 2 needs this node's weights again; asking the trainer to"
                " refill its handover file"
            ),
            Timer(RefillDeadline(C, 1, 2), 10.5),
        ],
        {"attempt": None, "refilling": 2},
    ),
]
PARTIAL_MERGE = " (the handover file holds a partial merge: keep your own weights)"
#: b and c finish round 1 without a (which has no trainer yet); then a's trainer asks.
LATE = [
    Row(Block(checkins=("b", "c")), [], {"ledger": OPEN}),
    Row(Block(after_ms=2500), [], {"ledger": EXCHANGING}),  # the grace period is over
    Row(Block(merged=("b", "c")), [], {"ledger": DONE, "round": False}),
    Row(
        Latest(),
        [
            Timer(LatestDeadline(C), 60.0),
            Asked("b"),  # both participants at once, for the manifest
            Asked("c"),
            Timer(LatestStall(C, 1, 1), 10.0),
            Said("fetching the swarm's model of round 1 from b, c"),
            Logged("info", "fetching the swarm's model of round 1 from b, c"),
        ],
    ),
    Row(Unavailable("b"), [Timer(LatestStall(C, 1, 1), 10.0)]),  # b holds it no more
]
TICK = FetchTick(C, 1)
#: b and c finish round 1 without a (it heard no piece): at the deadline a fetches the model
#: from both at once, asking each for the manifest first.
MISSED = [
    Row(Sync(), CHECKING_IN),
    Row(Block(checkins=("b", "c")), [*ATTEMPT_1, *TO_B_AND_C, WITH_3]),
    Row(Block(merged=("b", "c")), [], {"ledger": EXCHANGING}),  # a hears no piece
    Row(
        Block(after_ms=11_000),
        [
            Asked("b"),
            Asked("c"),
            Timer(TICK, 10.0),
            Said("round 1: fetching the merged model from b, c"),
        ],
        {"ledger": DONE, "attempt": -1, "fetching": (("b", "c"), 0, 1)},
    ),
]
LIES = "its chunk 3 does not match the ledger's root (bad hash)"
BAD_MANIFEST = Logged(
    "warning",
    "round 1: c: its manifest of the model does not match the ledger's root; asking the others",
)
NOT_FETCHED = (
    "the merged model could not be fetched: no source sent it (0/6 chunks from 2 peer(s) in"
    " 3 pass(es))"
)
PAST_DEADLINE = (
    "the merged model could not be fetched: not complete by its deadline (1/6 chunks from"
    " 2 peer(s) in 2 pass(es))"
)
NO_PEER = "no peer holds the swarm's model of round 1 any more"

MANIFEST, CHUNKS, PIECES = RoundPart.MANIFEST, RoundPart.CHUNKS, RoundPart.PIECES
REPAIR = RepairDue(C, 1, 1)
#: b's range (of two participants): chunks 3-5, its merged pieces cut at bytes 192, 256, 320.
B_CUTS = (192, 256, 320)
A_PIECES = [Sent("b", "MergedPiece", start) for start in (0, 64, 128)]
TWICE_RESENT = Counted("sl_resends_duplicate")
#: a lost b's chunk 1 (of a's range): a second after the attempt began it asks b for it, and
#: for b's merged pieces (none came yet).
LOST_CHUNK = [
    Row(Sync(), CHECKING_IN),
    Row(Block(checkins=("b",)), [*ATTEMPT_1, *TO_B, WITH_2]),
    Row(Manifest("b"), []),
    Row(Chunk("b", 0), []),
    Row(Chunk("b", 2), []),  # chunk 1 is lost
    Row(
        Fire(REPAIR),
        [AskedAgain("b", CHUNKS, (1,)), AskedAgain("b", PIECES, B_CUTS), Timer(REPAIR, 1.0)],
    ),
]


def dropped_ask(why: str) -> list[Any]:
    return [Logged("debug", f"round 1: dropped an ask from b: {why}"), Counted("sl_asks_dropped")]


TABLES: dict[str, Table] = {
    "commit_exchange_merge_deliver": Table(
        2,
        [
            Row(Sync(), CHECKING_IN, {"ledger": None, "attempt": None}),
            Row(  # both SL members are in: the ledger closes the round at once
                Block(checkins=("b",)),
                [*ATTEMPT_1, *TO_B, WITH_2],
                {"ledger": EXCHANGING, "attempt": 1, "participants": ("a", "b")},
            ),
            Row(Chunk("b", 1), [], {"waiting": [("b", 1)], "manifests": ["a"]}),  # before b's
            Row(Manifest("b"), [], {"waiting": [], "manifests": ["a", "b"]}),  # ... folded now
            Row(Chunk("b", 2), [], {"pieces": []}),  # out of order: 2 before 0
            Row(  # a's range is merged: its pieces go out, cut at chunk boundaries
                Chunk("b", 0),
                [Sent("b", "MergedPiece", start) for start in (0, 64, 128)],
                {"pieces": ["a"]},
            ),
            Row(  # a piece outside its owner's range is dropped
                Piece("b", start=0),
                [Logged("warning", "round 1: a merged piece outside its owner's range")],
                {"pieces": ["a"]},
            ),
            Row(
                Piece("b"),
                [Submit("Merged", 1), Said("round 1: merged, root <root>")],
                {"pieces": ["a", "b"], "reported": True},
            ),
            Row(Block(merged=("b",)), [Done(2)], {"ledger": DONE, "finished": True}),
            Row(  # kept for peers that fetch it: its manifest, and the chunks asked for
                Asks("b", indexes=(0, 5)),
                [
                    Sent("b", "RoundManifest", None, -1),
                    Sent("b", "MergedPiece", 0, -1),
                    Sent("b", "MergedPiece", 320, -1),
                ],
            ),
            Row(
                Asks("b", indexes=(6,)),  # no such chunk: garbage
                [Logged("info", "round 1: dropped a malformed ask for the merged model from b")],
            ),
            Row(Asks("b", 2), [Sent("b", "MergedUnavailable")]),
            Row(Fire(AttemptDeadline(C, 1, 1)), [], {"finished": True}),  # over: nothing to do
        ],
    ),
    "messages_before_the_attempt_wait_for_it": Table(
        2,
        [
            Row(Sync(), CHECKING_IN),
            Row(Manifest("b"), [], {"early": 1, "attempt": None}),  # b's ledger is ahead
            Row(Chunk("b", 0), [], {"early": 2}),
            Row(  # replayed once the attempt starts here
                Block(checkins=("b",)),
                [*ATTEMPT_1, *TO_B, WITH_2],
                {"early": 0, "attempt": 1, "manifests": ["a", "b"]},
            ),
        ],
    ),
    "peer_faults_and_a_new_attempt_without_the_culprit": Table(
        3,
        [
            Row(Sync(), CHECKING_IN),
            Row(
                Block(checkins=("b", "c")),
                [*ATTEMPT_1, *TO_B_AND_C, WITH_3],
                {"participants": ("a", "b", "c")},
            ),
            Row(Manifest("b"), []),
            Row(Chunk("b", 0), []),
            Row(  # the merge refuses it (RemoteProtocolError): the peer's fault, counted
                Chunk("b", 0),
                [
                    Logged("warning", f"round 1: chunk 0 from b: {TWICE}"),
                    Counted("sl_chunks_refused"),
                    Fault("b", f"round 1: {TWICE}"),
                ],
            ),
            Row(  # as committed, but not a's to merge
                Chunk("b", 3),
                [
                    Logged("warning", f"round 1: chunk 3 from b: {ELSEWHERE}"),
                    Counted("sl_chunks_refused"),
                    Fault("b", f"round 1: {ELSEWHERE}"),
                ],
            ),
            Row(Manifest("c"), [], {"manifests": ["a", "b", "c"]}),
            Row(  # unlike its commitment: the ledger is asked to exclude its sender
                Chunk("c", 1, bad=True),
                [
                    Submit("Exclude", "c"),
                    Logged("warning", f"round 1: excluding c: {UNLIKE}"),
                ],
                {"attempt": 1},
            ),
            Row(  # the ledger re-plans: attempt 2 without c
                Block(),
                [
                    Timer(AttemptDeadline(C, 1, 2), 10.5),
                    Timer(AttemptHalfway(C, 1, 2), 5.25),
                    Timer(RepairDue(C, 1, 2), 1.0),
                    Sent("b", "RoundManifest", None, 2),
                    *(Sent("b", "RoundChunk", i, 2) for i in (3, 4, 5)),
                    WITH_2,
                ],
                {"attempt": 2, "participants": ("a", "b"), "manifests": ["a"]},
            ),
            Row(Chunk("c", 0), []),  # of attempt 1: stale
            Row(Fire(AttemptHalfway(C, 1, 1)), []),  # the timer of attempt 1: stale too
        ],
    ),
    "partial_sums_that_no_honest_owner_sends": Table(
        3,
        [
            Row(Sync(), CHECKING_IN),
            Row(  # a global method: a longer deadline; no rows before a's range is complete
                Block(checkins=("b", "c")),
                [
                    Timer(AttemptDeadline(C, 1, 1), 13.53),
                    Timer(AttemptHalfway(C, 1, 1), 6.765),
                    Timer(RepairDue(C, 1, 1), 1.0),
                    *TO_B_AND_C,
                    WITH_3,
                ],
                {"partials": {}},
            ),
            Row(Partials("b", 1), [], {"partials": {1: ["b"]}}),  # a step ahead: kept
            Row(  # far ahead: dropped, counted
                Partials("b", 5),
                [Logged("warning", f"{DROPPED} 5 from b (this node is at step 0)"), PARTIALS],
            ),
            Row(  # twice
                Partials("b", 1),
                [Logged("warning", f"{DROPPED} 1 from b (this node is at step 0)"), PARTIALS],
                {"partials": {1: ["b"]}},
            ),
            Row(  # the wrong size for c's range: as a bad chunk, c is excluded
                Partials("c", 0, size=8),
                [
                    Submit("Exclude", "c"),
                    Logged("warning", f"round 1: excluding c: {WRONG_SIZE}"),
                    PARTIALS,
                    Fault("c", f"round 1: {WRONG_SIZE}"),
                ],
            ),
            Row(  # a negative sum of squares
                Partials("b", 0, negative=True),
                [
                    Submit("Exclude", "b"),
                    Logged("warning", f"round 1: excluding b: {NEGATIVE}"),
                    PARTIALS,
                    Fault("b", f"round 1: {NEGATIVE}"),
                ],
            ),
        ],
        method="geomedian",
    ),
    "a_new_attempt_after_merged_bytes_landed_asks_for_a_refill": Table(
        3,
        [
            *REFILL_ASKED,
            Row(
                Refill(),
                [
                    Said("round 1: weights refilled and verified; joining attempt 2"),
                    Timer(AttemptDeadline(C, 1, 2), 10.5),
                    Timer(AttemptHalfway(C, 1, 2), 5.25),
                    Timer(RepairDue(C, 1, 2), 1.0),
                    Sent("b", "RoundManifest", None, 2),
                    *(Sent("b", "RoundChunk", i, 2) for i in (3, 4, 5)),
                    WITH_2,
                ],
                {"attempt": 2, "refilling": None, "overwritten": False},
            ),
            Row(Fire(RefillDeadline(C, 1, 2)), [], {"attempt": 2}),  # refilled: nothing
        ],
    ),
    "a_refill_that_does_not_come_fails_the_round": Table(
        3,
        [
            *REFILL_ASKED,
            Row(
                Fire(RefillDeadline(C, 1, 2)),
                [
                    Failed(
                        "attempt 2: the trainer did not refill its weights by its deadline"
                        + PARTIAL_MERGE
                    )
                ],
                {"finished": True, "refilling": None},
            ),
        ],
    ),
    "a_refill_of_other_weights_fails_the_round": Table(
        3,
        [
            *REFILL_ASKED,
            Row(
                Refill(wrong=True),
                [
                    Failed(
                        "attempt 2: the refilled weights are not the committed ones (chunk 0 of 6"
                        f" differs){PARTIAL_MERGE}"
                    )
                ],
                {"finished": True},
            ),
        ],
    ),
    "a_silent_peer_at_the_deadline": Table(
        2,
        [
            Row(Sync(), CHECKING_IN),
            Row(Block(checkins=("b",)), [*ATTEMPT_1, *TO_B, WITH_2]),
            Row(Fire(AttemptHalfway(C, 1, 1)), [Submit("Heartbeat", 1)]),  # a is alive
            Row(
                Fire(AttemptDeadline(C, 1, 1)),
                [Submit("Heartbeat", 1), Said("round 1: attempt 1 past its deadline")],
            ),
            Row(  # the ledger's deadline rule: only a is alive, fewer than minPeers
                Block(),
                [Failed("1 participant(s) left, fewer than min_peers")],
                {"ledger": FAILED, "finished": True},
            ),
        ],
    ),
    "a_node_that_missed_the_merge_fetches_it_from_several_peers": Table(
        3,
        [
            *MISSED,
            Row(AsksAgain("b", CHUNKS, (2,), attempt=-1), []),  # a fetch is no attempt
            Row(  # the chunks split between the two, each checked against the manifest
                FetchedManifest("b"),
                [Asked("b", (0, 1, 2)), Asked("c", (3, 4, 5))],
                {"fetching": (("b", "c"), 0, 1)},
            ),
            Row(Fetched("b", 0), [], {"fetching": (("b", "c"), 1, 1)}),
            Row(  # c lies: dropped for good, its chunks asked of b as b's window frees
                Fetched("c", 3, bad=True),
                [
                    Logged("warning", f"round 1: c: {LIES}; asking the others"),
                    Asked("b", (3,)),
                    Timer(TICK, 10.0),
                ],
                {"fetching": (("b",), 1, 1)},
            ),
            Row(Fetched("c", 4), [], {"fetching": (("b",), 1, 1)}),  # not asked of it now
            Row(Fetched("b", 1), [Asked("b", (4,))]),
            Row(Fetched("b", 2), [Asked("b", (5,))]),
            *[Row(Fetched("b", i), []) for i in (3, 4)],
            Row(Fetched("b", 5), [Done(3)], {"finished": True}),  # the ledger's root
            Row(Fire(TICK), []),  # its timer: over
        ],
    ),
    "a_fetch_no_peer_answers_ends_in_bounded_passes": Table(
        3,
        [
            *MISSED,
            Row(Unavailable("b"), [Timer(TICK, 10.0)], {"fetching": (("c",), 0, 1)}),
            Row(  # no source left: the next pass after a backoff
                Unavailable("c"), [Timer(TICK, 1.0)], {"fetching": ((), 0, 1)}
            ),
            Row(Fire(TICK), [Asked("b"), Asked("c"), Timer(TICK, 10.0)]),
            Row(FetchedManifest("c", bad=True), [BAD_MANIFEST, Timer(TICK, 10.0)]),
            Row(Unavailable("b"), [Timer(TICK, 2.0)], {"fetching": ((), 0, 2)}),
            Row(Fire(TICK), [Asked("b"), Timer(TICK, 10.0)]),  # c is not asked again
            Row(
                Unavailable("b"),
                [
                    Logged("warning", f"round 1: {NOT_FETCHED}"),
                    Failed(NOT_FETCHED),
                ],
                {"finished": True},
            ),
            Row(Block(), [], {"finished": True}),  # and it stays over
        ],
    ),
    "a_fetch_drops_a_stalled_peer_and_ends_at_its_deadline": Table(
        3,
        [
            *MISSED,
            Row(FetchedManifest("b"), [Asked("b", (0, 1, 2)), Asked("c", (3, 4, 5))]),
            Row(Fetched("b", 0), []),
            Row(  # c sent nothing in a stall period: its chunks go to b
                Fire(TICK),
                [
                    Logged(
                        "warning",
                        "round 1: c sent nothing of the merged model in 10 s; asking the others",
                    ),
                    Asked("b", (3,)),
                    Timer(TICK, 10.0),
                ],
                {"fetching": (("b",), 1, 1)},
            ),
            Row(Fetched("c", 4), []),  # late, from a dropped source: not taken
            Row(  # b stalls too: the next pass after a backoff, up to the deadline (31 s)
                Fire(TICK),
                [
                    Logged(
                        "warning",
                        "round 1: b sent nothing of the merged model in 10 s; asking the others",
                    ),
                    Timer(TICK, 1.0),
                ],
            ),
            Row(
                Fire(TICK),
                [Asked("b", (1, 2, 3)), Asked("c", (4, 5)), Timer(TICK, 10.0)],
                {"fetching": (("b", "c"), 1, 2)},
            ),
            Row(
                Fire(TICK),
                [Logged("warning", f"round 1: {PAST_DEADLINE}"), Failed(PAST_DEADLINE)],
                {"finished": True},
            ),
        ],
    ),
    "a_late_trainer_gets_the_latest_model": Table(
        3,
        [
            Row(Latest(), [Timer(LatestDeadline(C), 60.0), Model(0)]),  # none finished yet
            *LATE,
            Row(FetchedManifest("c"), [Asked("c", (0, 1, 2, 3, 4, 5))]),
            *[Row(Fetched("c", i), []) for i in range(5)],
            Row(Fetched("c", 5), [Model(1)]),  # every chunk matched the ledger's root
            Row(Fire(LatestDeadline(C)), []),  # answered: nothing to end
        ],
    ),
    "a_late_trainer_whose_model_no_peer_holds": Table(
        3,
        [
            *LATE,
            Row(  # c sends nothing: no peer left, the fetch waits for a newer round
                Fire(LatestStall(C, 1, 1)),
                [
                    Logged(
                        "warning",
                        "round 1: c sent nothing of the merged model in 10 s; asking the others",
                    ),
                    Said(f"{NO_PEER}; waiting for the next round to finish"),
                    Logged("info", f"{NO_PEER}; waiting for the next round to finish"),
                ],
            ),
            Row(
                Fire(LatestDeadline(C)),
                [NoModel(f"{NO_PEER}, and no round finished since (is the training over?)")],
            ),
        ],
    ),
    "waiting_for_min_peers_and_sync_timeouts": Table(
        2,
        [
            Row(Sync(wait_s=60), [*CHECKING_IN, Timer(SyncTimeout(C, 1), 60.0)]),
            Row(Block(), [Said("round 1: 1/2 checked in")], {"ledger": OPEN}),
            Row(
                Fire(ProgressDue(C, 1)),
                [
                    Said("round 1: 1/2 checked in, waiting for minPeers=2 (30 s)"),
                    Timer(ProgressDue(C, 1), 30.0),
                ],
            ),
            Row(  # the next weights wait for the running round, their syncTimeout running
                Sync(session=2, wait_s=5),
                [
                    Said("round 1 still running; next weights queued"),
                    Timer(QueuedTimeout(C, 1, 2), 5.0),
                ],
                {"queued": [C]},
            ),
            Row(
                Fire(QueuedTimeout(C, 1, 2)),
                [
                    Failed(
                        "still queued behind round 1 at syncTimeout=5 s: this node's previous"
                        " round of the contract has not ended"
                    )
                ],
                {"queued": []},
            ),
            Row(  # still short of minPeers at the first weights' syncTimeout
                Fire(SyncTimeout(C, 1)),
                [
                    Submit("CheckOut", 0),
                    Failed(
                        "round 1: 1/2 checked in within syncTimeout=60 s, fewer than minPeers=2"
                    ),
                ],
                {"finished": True},
            ),
        ],
    ),
    "quorum_then_the_grace_period_closes_the_round": Table(
        3,
        [
            Row(Sync(), CHECKING_IN),
            Row(  # minPeers (2) are in, c is not: a block after the grace period closes it
                Block(checkins=("b",)),
                [Said("round 1: 2/2 checked in"), Timer(CloseDue(C, 1), 2.5)],
                {"ledger": OPEN},
            ),
            Row(Fire(CloseDue(C, 1)), [Submit("Heartbeat", 0)], {"ledger": OPEN}),
            Row(  # the heartbeat's block closes it, without c
                Block(),
                [*ATTEMPT_1, *TO_B, WITH_2],
                {"ledger": EXCHANGING, "participants": ("a", "b")},
            ),
            Row(Fire(CloseDue(C, 1)), []),  # in an attempt now: no close to wait for
        ],
    ),
    "a_lost_chunk_is_asked_for_again": Table(
        2,
        [
            *LOST_CHUNK,
            Row(Chunk("b", 1), A_PIECES, {"pieces": ["a"]}),  # resent: a's range is merged
            Row(Chunk("b", 1), [TWICE_RESENT]),  # the original was only slow: dropped quietly
            Row(  # b's pieces again, a backoff later; a's own range needs nothing more
                Fire(REPAIR),
                [AskedAgain("b", PIECES, B_CUTS), Timer(REPAIR, 2.0)],
            ),
            Row(
                Piece("b"),
                [Submit("Merged", 1), Said("round 1: merged, root <root>")],
                {"reported": True},
            ),
            Row(Piece("b"), [TWICE_RESENT], {"pieces": ["a", "b"]}),  # counted once
            Row(Fire(REPAIR), []),  # nothing lacks: the repair is over
        ],
    ),
    "a_peer_that_cannot_resend_leaves_the_attempt_to_its_deadline": Table(
        2,
        [
            *LOST_CHUNK,
            Row(
                CannotResend("b", CHUNKS, (1,)),
                [
                    Logged(
                        "info",
                        "round 1: b no longer holds its chunks of attempt 1; the attempt waits"
                        " for its deadline",
                    )
                ],
            ),
            Row(Fire(REPAIR), [AskedAgain("b", PIECES, B_CUTS), Timer(REPAIR, 2.0)]),
            *[  # asks 3 to 8 for b's pieces, 2 s apart (the backoff's cap)
                Row(Fire(REPAIR), [AskedAgain("b", PIECES, B_CUTS), Timer(REPAIR, 2.0)])
                for _ in range(3, 9)
            ],
            Row(  # every ask spent: the ledger's deadline rule decides
                Fire(REPAIR),
                [
                    Logged(
                        "warning",
                        "round 1: attempt 1 still lacks chunks from b, merged pieces from b; no"
                        " more asks (8 each at most): waiting for its deadline",
                    )
                ],
            ),
            Row(Fire(REPAIR), []),
        ],
    ),
    "a_peer_ask_is_answered_from_what_this_node_holds": Table(
        2,
        [
            Row(Sync(), CHECKING_IN),
            Row(Block(checkins=("b",)), [*ATTEMPT_1, *TO_B, WITH_2]),
            Row(AsksAgain("b", MANIFEST), [Sent("b", "RoundManifest")]),
            Row(
                AsksAgain("b", CHUNKS, (5, 3)),
                [Sent("b", "RoundChunk", 3), Sent("b", "RoundChunk", 5)],
            ),
            Row(AsksAgain("b", CHUNKS, (0,)), [Unheld("b", CHUNKS, (0,))]),  # not b's range
            Row(AsksAgain("b", PIECES, (0,)), []),  # not merged yet: they come when they are
            Row(AsksAgain("b", MANIFEST, attempt=2), []),  # an attempt not running here
            Row(Manifest("b"), []),
            Row(Chunk("b", 0), []),
            Row(Chunk("b", 1), []),
            Row(Chunk("b", 2), A_PIECES),
            Row(  # a cut of a's range; 100 is none
                AsksAgain("b", PIECES, (100, 64)),
                [Sent("b", "MergedPiece", 64), Unheld("b", PIECES, (100,))],
            ),
            Row(Piece("b"), [Submit("Merged", 1), Said("round 1: merged, root <root>")]),
            Row(Block(merged=("b",)), [Done(2)], {"finished": True}),
            Row(AsksAgain("b", CHUNKS, (3,)), [Unheld("b", CHUNKS, (3,))]),  # over here
        ],
    ),
    "an_ask_for_weights_the_merge_wrote_over": Table(
        3,
        [
            Row(Sync(in_file=True), CHECKING_IN),
            Row(Block(checkins=("b", "c")), [*ATTEMPT_1, *TO_B_AND_C, WITH_3]),
            Row(AsksAgain("c", CHUNKS, (4,)), [Sent("c", "RoundChunk", 4)]),  # (a copy)
            Row(Piece("b"), [Shed(128, 128)], {"overwritten": True}),  # over a's chunks 2-3
            Row(AsksAgain("b", CHUNKS, (2, 3)), [Unheld("b", CHUNKS, (2, 3))]),
            Row(AsksAgain("c", CHUNKS, (5,)), [Sent("c", "RoundChunk", 5)]),  # still as sent
        ],
    ),
    "a_flood_of_asks_is_dropped": Table(
        2,
        [
            Row(Sync(), CHECKING_IN),
            Row(Block(checkins=("b",)), [*ATTEMPT_1, *TO_B, WITH_2]),
            *[  # asks that cost nothing (a's range is not merged yet), up to the bound
                Row(AsksAgain("b", PIECES, (0,)), []) for _ in range(ASKS_SERVED_MAX)
            ],
            Row(AsksAgain("b", MANIFEST), dropped_ask("asks past the bound, or malformed")),
        ],
    ),
    "resends_past_a_model_s_worth_are_dropped": Table(
        2,
        [
            Row(Sync(), CHECKING_IN),
            Row(Block(checkins=("b",)), [*ATTEMPT_1, *TO_B, WITH_2]),
            *[  # 192 bytes each; at most 8 chunks' worth (512 bytes: the model is 384)
                Row(AsksAgain("b", CHUNKS, (3, 4, 5)), [*TO_B[1:]]) for _ in range(2)
            ],
            Row(
                AsksAgain("b", CHUNKS, (3, 4, 5)),
                [*TO_B[1:3], *dropped_ask("one model's worth resent already")],
            ),
            Row(AsksAgain("b", MANIFEST), dropped_ask("one model's worth resent already")),
        ],
    ),
    "a_check_in_the_mempool_refuses": Table(
        2,
        [
            Row(Sync(), CHECKING_IN),
            Row(Refused("mempool full"), [], {"finished": False}),  # passing: resent later
            Row(
                Refused("bad signature"),
                [Failed("the ledger refuses it: bad signature")],
                {"finished": True},
            ),
        ],
    ),
    "a_check_in_refused_while_joining_is_sent_again_without_a_block": Table(
        2,
        [
            Row(Sync(), CHECKING_IN),
            Row(Refused("a is not a member: join first"), [], {"finished": False}),
            # No block comes (the check-in was the only transaction): the timer resends it.
            Row(Fire(CheckInDue(C, 1)), [Submit("CheckIn"), Timer(CheckInDue(C, 1), 2.0)]),
            Row(Block(), [Said("round 1: 1/2 checked in")], {"ledger": OPEN}),
            Row(Fire(CheckInDue(C, 1)), [], {"finished": False}),  # on the ledger: no more
        ],
    ),
    "a_session_that_ends_takes_its_check_in_back": Table(
        2,
        [
            Row(Sync(session=7, wait_s=60), [*CHECKING_IN, Timer(SyncTimeout(C, 1), 60.0)]),
            Row(Block(), [Said("round 1: 1/2 checked in")], {"ledger": OPEN}),
            Row(SessionEnds(8), [], {"round": True}),  # another session's: nothing
            Row(
                SessionEnds(7),
                [Submit("CheckOut", 7), Timer(GoneWait(C, 1), 30.0)],
                {"finished": False},
            ),
            Row(  # the ledger abandons the round left empty; the node lets it go
                Block(),
                [Logged("info", "round 1: check-in withdrawn: its trainer went away")],
                {"ledger": FAILED, "round": False},
            ),
            Row(Fire(GoneWait(C, 1)), [], {"round": False}),
            Row(Fire(SyncTimeout(C, 1)), [], {"round": False}),
        ],
    ),
}


@pytest.mark.parametrize("table", TABLES.values(), ids=TABLES.keys())
def test_sl_core_table(nodes: Swarm, table: Table) -> None:
    run_table(nodes, table)


def test_timer_tags_are_values_of_their_kind() -> None:
    """Drivers key timers by tag: equal fields, the same timer (set again: replaced); tags of
    two kinds never collide, and print the same run after run (the simulator's fingerprint)."""
    assert ProgressDue(C, 1) == ProgressDue(C, 1)
    assert len({ProgressDue(C, 1), SyncTimeout(C, 1), GoneWait(C, 1), ProgressDue(C, 2)}) == 4
    assert len({AttemptDeadline(C, 1, 2), AttemptHalfway(C, 1, 2)}) == 2
    assert repr(FetchTick("x", 3)) == "FetchTick(contract='x', round=3)"


@settings(max_examples=40, deadline=None)
@given(
    in_file=st.booleans(),
    asks=st.lists(
        st.tuples(
            st.sampled_from(NAMES),
            st.sampled_from(list(RoundPart)),
            st.lists(st.integers(-3, 400), max_size=9).map(tuple),
            st.integers(-1, 2),
        ),
        max_size=40,
    ),
)
def test_any_ask_is_answered_within_the_bounds(
    nodes: Swarm, in_file: bool, asks: list[tuple[str, RoundPart, tuple[int, ...], int]]
) -> None:
    """Whatever peers ask to have resent, in an attempt or not: no crash, only resends of
    this attempt's messages to the asker (and "cannot"s and drops), never more than the bound
    of bytes per asker."""
    harness = Harness(nodes, 3)
    harness.apply(Sync(in_file=in_file))
    harness.apply(Block(checkins=("b", "c")))
    resent: dict[str, int] = {}
    for sender, what, indexes, attempt in asks:
        ask = ResendRound(C, 1, attempt, what, indexes)
        effects = harness.core.handle(Receive(harness.ids[sender], ask), harness.now)
        for effect in effects:
            if isinstance(effect, Send):
                assert effect.to == harness.ids[sender] != harness.ids["a"]
                message = effect.message
                assert getattr(message, "attempt", None) == attempt == 1
                resent[sender] = resent.get(sender, 0) + len(getattr(message, "data", b""))
            else:
                assert isinstance(effect, Log | Metric)
    assert all(nbytes <= resend_bytes_max(LAYOUT) for nbytes in resent.values())

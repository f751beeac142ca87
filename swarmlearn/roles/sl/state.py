"""What the SL round core (:mod:`swarmlearn.roles.sl.core`) remembers of a round, and how
it sends its contribution.

:class:`RoundBook` is what every part of the core shares: this node's rounds, the merged
models it keeps for peers, the early messages, and what any part does to a round (read its
ledger record, report progress, exclude a participant, end it). Each part is handed the
book when the core builds it. :class:`RoundState` is one contribution's round on one
contract (its check-in, the current attempt, the merged model once assembled);
:class:`Attempt` is one try at the exchange with a fixed participant list.
:class:`EarlyMessages` holds the round messages of an attempt this node has not yet seen the
ledger start (blocks commit at slightly different times on different nodes, or this node's
ledger lags), bounded in bytes, and hands them back when the attempt starts.
:func:`contribution_sends` cuts a contribution into an attempt's messages.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from swarmlearn.consensus.ledger.app import SwarmApp
from swarmlearn.consensus.ledger.rounds import RoundRecord
from swarmlearn.consensus.ledger.txs import Exclude, TensorSpec
from swarmlearn.merge import Layout, Mean, Method, RangeCollector, RangeMerge
from swarmlearn.merge.plan import ShardPlan
from swarmlearn.merge.sharded import GlobalSteps
from swarmlearn.p2p.wire import Message
from swarmlearn.roles.sl.fetch import ModelFetch
from swarmlearn.roles.sl.merged import KEPT_ROUNDS, Flat, KeptModels
from swarmlearn.roles.sl.messages import (
    Contribute,
    MergedPiece,
    MergePartials,
    Progress,
    RoundChunk,
    RoundFailed,
    RoundManifest,
    RoundPart,
    SLEffect,
    SubmitSigned,
)
from swarmlearn.sansio import Deliver, Log, NodeId, Send

EARLY_BYTES_MAX = 512 * 1024 * 1024

RoundMessage = RoundManifest | RoundChunk | MergedPiece | MergePartials
#: A transaction body -> the signed transaction (the node's key).
Sign = Callable[[Message], bytes]


@dataclass
class AttemptRepair:
    """An attempt's loss repair (roles/sl/repair.py): this node's asks, and the asks it served."""

    heard_at: float = 0.0  # the attempt's last message from a participant (or its start)
    # my asks by (peer index, part, step): how many, the last one when; those the peer
    # said it cannot answer
    asked: dict[tuple[int, RoundPart, int], int] = field(default_factory=dict)
    asked_at: dict[tuple[int, RoundPart, int], float] = field(default_factory=dict)
    unheld: set[tuple[int, RoundPart, int]] = field(default_factory=set)
    given_up: bool = False  # every ask spent: the attempt waits for its deadline
    asks_from: dict[str, int] = field(default_factory=dict)  # asks served, by asker
    sent_to: dict[str, int] = field(default_factory=dict)  # bytes resent, by asker


@dataclass
class Attempt:
    number: int
    participants: tuple[str, ...]
    me: int
    merge: RangeMerge | RangeCollector | None
    manifests: dict[int, tuple[bytes, ...]] = field(default_factory=dict)
    # chunks that came before their sender's manifest: participant, chunk, data, digest
    waiting: list[tuple[int, int, Any, bytes | None]] = field(default_factory=list)
    merged: bytearray | memoryview = field(default_factory=bytearray)
    pieces: set[int] = field(default_factory=set)  # owners whose whole range arrived
    bytes_from: dict[int, int] = field(default_factory=dict)  # merged bytes per owner
    reported: bool = False
    digests: dict[int, bytes] = field(default_factory=dict)  # merged chunks hashed by a lane
    merge_in_place: bool = False  # my range is merged straight into ``merged``
    in_file: bool = False  # ``merged`` is the trainer's handover file (the contribution)
    own_pending: set[int] = field(default_factory=set)  # my chunks of my range, not yet added
    plan: ShardPlan | None = None
    method: Method = field(default_factory=Mean)
    # a global method (roles/sl/global_merge.py): my steps, and each step's rows by owner
    steps: GlobalSteps | None = None
    partials: dict[int, dict[int, Any]] = field(default_factory=dict)
    my_rows: dict[int, bytes] = field(default_factory=dict)  # my rows of the last two steps
    # what came, for the repair: (participant, chunk) taken (folded or waiting); per owner,
    # the chunk cuts of its merged range that landed; chunks merged bytes were written over
    chunks_in: set[tuple[int, int]] = field(default_factory=set)
    cuts_in: dict[int, set[int]] = field(default_factory=dict)
    written: set[int] = field(default_factory=set)
    repair: AttemptRepair = field(default_factory=AttemptRepair)


@dataclass
class RoundState:
    contract: str
    number: int
    contribution: Contribute
    manifest_hashes: tuple[bytes, ...]
    root: bytes
    attempt: Attempt | None = None
    merged_root: bytes | None = None
    merged: bytearray | memoryview | None = None
    finished: bool = False
    last_progress: str = ""
    check_in: bytes = b""  # the signed CheckIn, resent until the ledger has it
    sent_at: float = 0.0
    overwritten: bool = False  # merged bytes were written over the contribution (in place)
    fetch: ModelFetch | None = None  # fetching the merged model the ledger settled on
    specs: tuple[TensorSpec, ...] = ()  # the contribution's tensors, as the ledger sees them
    contributed_at: float = 0.0
    refilling: int | None = None  # the attempt waiting for the trainer to refill its file
    generation: int = 0  # the contract's (RESET CONTRACT starts a new one; this round ends)
    gone_at: float | None = None  # when its trainer session went away
    check_out: bytes = b""  # the signed CheckOut of its check-in, resent until it is out


class EarlyMessages:
    """Round messages that came before their attempt started here, at most ``limit_bytes``."""

    def __init__(self, limit_bytes: int = EARLY_BYTES_MAX) -> None:
        self.limit_bytes = limit_bytes
        self.held: list[tuple[str, RoundMessage, bytes | None]] = []
        self.held_bytes = 0

    def keep(self, sender: str, message: RoundMessage, digest: bytes | None) -> bool:
        """Hold ``message``; False when the buffer is full (the message is dropped)."""
        size = _size(message)
        if self.held_bytes + size > self.limit_bytes:
            return False
        self.held.append((sender, message, digest))
        self.held_bytes += size
        return True

    def drop_through(self, contract: str, number: int) -> None:
        """Forget the messages of the contract's rounds up to ``number`` (over here)."""
        self.held = [h for h in self.held if h[1].contract != contract or h[1].round > number]
        self.held_bytes = sum(_size(m) for _, m, _ in self.held)

    def take(
        self, contract: str, number: int, attempt: int
    ) -> list[tuple[str, RoundMessage, bytes | None]]:
        """The messages of this attempt, in arrival order; those of its earlier attempts are
        dropped (stale)."""
        ready = [
            held
            for held in self.held
            if (held[1].contract, held[1].round, held[1].attempt) == (contract, number, attempt)
        ]
        gone = {id(m) for _, m, _ in ready}
        gone |= {
            id(m)
            for _, m, _ in self.held
            if (m.contract, m.round) == (contract, number) and m.attempt < attempt
        }
        self.held = [held for held in self.held if id(held[1]) not in gone]
        self.held_bytes = sum(_size(m) for _, m, _ in self.held)
        return ready


class RoundBook:
    """This node's rounds, by (contract, round number), and what every part of the core
    does to them."""

    def __init__(self, me: NodeId, app: SwarmApp, sign: Sign) -> None:
        self.me = me
        self.app = app  # the node's ledger application, read only
        self.sign = sign
        self.rounds: dict[tuple[str, int], RoundState] = {}
        self.kept = KeptModels()  # merged models, to serve peers that fetch them
        self.early = EarlyMessages()  # replayed when their attempt starts here

    def record(self, state: RoundState) -> RoundRecord | None:
        """The ledger's record of the round (None: the ledger has not seen it yet)."""
        contract = self.app.state.contracts.get(state.contract)
        return None if contract is None else contract.rounds.get(state.number)

    def current(self, contract: str, number: int, attempt: int) -> RoundState | None:
        """The round, when ``attempt`` is the attempt it runs here now."""
        state = self.rounds.get((contract, number))
        if state is None or state.attempt is None or state.attempt.number != attempt:
            return None
        return state

    def progress(self, state: RoundState, text: str) -> Deliver:
        state.last_progress = text
        return Deliver(Progress(state.contract, state.number, text, state.contribution.session))

    def exclude(self, state: RoundState, culprit: str, reason: str) -> list[SLEffect]:
        """Ask the ledger to exclude ``culprit`` from the attempt (a next one goes on
        without it)."""
        attempt = state.attempt
        assert attempt is not None
        report = Exclude(
            state.contract, state.number, attempt.number, culprit, reason, state.generation
        )
        return [
            SubmitSigned(self.sign(report)),
            Log(f"round {state.number}: excluding {culprit[:8]}: {reason}", "warning"),
        ]

    def keep(
        self,
        contract: str,
        number: int,
        root: bytes,
        flat: Flat,
        layout: Layout,
        hashes: tuple[bytes, ...] | None = None,
    ) -> None:
        """Keep a round's merged model for peers that fetch it (``hashes``: its chunk hashes,
        when known); finished rounds older than the kept ones are let go."""
        self.kept.keep(contract, number, root, flat, layout, hashes)
        for key in [k for k, r in self.rounds.items() if k[0] == contract and r.finished]:
            if key[1] < number - KEPT_ROUNDS:
                del self.rounds[key]

    def release_settled(self, contract: str, number: int) -> None:
        """Before round ``number`` assembles a merged model, free the kept ones of earlier
        rounds that no participant can still need."""
        for key in self.kept.release_settled(self.app, contract, number):
            old = self.rounds.get(key)
            if old is not None and old.finished:
                old.merged, old.attempt = None, None  # the attempt holds it too

    def finish(self, state: RoundState) -> None:
        """The round is over: let go of the trainer's weights (a view of its handover file,
        which must not stay mapped for a round that needs it no more)."""
        state.finished = True
        state.contribution = replace(state.contribution, flat=b"")
        self.drop_file_views(state)
        self.early.drop_through(state.contract, state.number)

    def drop_file_views(self, state: RoundState) -> None:
        """Forget every view of the trainer's handover file this round holds: the trainer
        writes its next weights there once it hears the outcome."""
        if state.attempt is not None and state.attempt.in_file:
            state.attempt = None
        if isinstance(state.merged, memoryview):
            state.merged = None
        kept = self.kept.kept.get((state.contract, state.number))
        if kept is not None and isinstance(kept[1], memoryview):
            self.kept.forget(state.contract, state.number)

    def failed(self, state: RoundState, reason: str, *, refused: bool = False) -> Deliver:
        """The round failed for this node: the trainer keeps its own weights (and hears
        whether its handover file was written over: it then holds no one's weights; and
        whether the ledger refused its check-in)."""
        self.finish(state)
        if state.overwritten:
            reason += " (the handover file holds a partial merge: keep your own weights)"
        session = state.contribution.session
        failed = RoundFailed(
            state.contract, state.number, reason, state.overwritten, session, refused
        )
        return Deliver(failed)


def _size(message: RoundMessage) -> int:
    return len(getattr(message, "data", getattr(message, "rows", b""))) + 64


def is_early(rounds: dict[tuple[str, int], RoundState], message: RoundMessage) -> bool:
    """``message`` belongs to an attempt this node has not started yet: keep it till then."""
    state = rounds.get((message.contract, message.round))
    if state is None and message.attempt >= 0:  # my ledger lags: my weights wait under
        return any(  # an earlier round, and move to this one when it catches up
            r.contract == message.contract and not r.finished and r.number < message.round
            for r in rounds.values()
        )
    if state is None or state.finished or message.attempt < 0:
        return False
    return state.attempt is None or state.attempt.number < message.attempt


def contribution_sends(
    me: NodeId, state: RoundState, attempt: Attempt, plan: ShardPlan
) -> list[Send]:
    """My manifest and my chunks of each other owner's range, as views of my weights (no
    copy). In the handover file, a chunk that straddles two ranges goes as a copy (one for
    both owners): one owner's merged piece may land on its bytes before the other owner has
    all of it."""
    c, number = state.contribution, attempt.number
    view = memoryview(c.flat)
    sends: list[Send] = []
    copies: dict[int, bytes] = {}
    for owner_index, owner in enumerate(attempt.participants):
        if owner == me:
            continue
        manifest = RoundManifest(state.contract, state.number, number, state.manifest_hashes)
        sends.append(Send(owner, manifest))
        for chunk in plan.shards[owner_index].chunks(c.layout):
            start, stop = c.layout.chunk_span(chunk)
            data: Any = view[start:stop]
            if attempt.in_file and len(plan.owners_of_chunk(chunk)) > 1:
                if chunk not in copies:
                    copies[chunk] = bytes(data)
                data = copies[chunk]
            sends.append(Send(owner, RoundChunk(state.contract, state.number, number, chunk, data)))
    return sends


def add_own(state: RoundState, attempt: Attempt, chunk: int) -> None:
    """Add my own chunk ``chunk`` of my range to my merge. Merged in place in my handover
    file, the range's folds write over my weights there: the chunk goes as a copy (held
    until its turn, and freed when folded) and the file holds a partial merge from now on."""
    assert attempt.merge is not None
    c = state.contribution
    start, stop = c.layout.chunk_span(chunk)
    data: Any = memoryview(c.flat)[start:stop]
    attempt.own_pending.discard(chunk)
    if attempt.in_file and attempt.merge_in_place:
        data = bytes(data)
        state.overwritten = True
    attempt.merge.add(attempt.me, chunk, data)


def global_waiting(attempt: Attempt) -> str:
    """What a global method's exchange still waits for ('' when nothing or not global)."""
    if not isinstance(attempt.merge, RangeCollector) or attempt.me in attempt.pieces:
        return ""
    if attempt.steps is None:
        return "; waiting for chunks of my range"
    got = attempt.partials.get(attempt.steps.step, {})
    missing = [p[:8] for i, p in enumerate(attempt.participants) if i not in got]
    return f"; step {attempt.steps.step} waits for partial sums from {', '.join(missing)}"


def held_by_sender(rounds: dict[tuple[str, int], RoundState], me: NodeId) -> dict[NodeId, int]:
    """Bytes of each peer's chunks that the current attempts' merges hold for their turn
    (the round lanes stop reading a peer that holds too many). A chunk stops counting when
    it is folded, or when its attempt or round ends: nothing else keeps it."""
    held: dict[NodeId, int] = {}
    for state in rounds.values():
        attempt = state.attempt
        if state.finished or attempt is None or attempt.merge is None:
            continue
        if isinstance(attempt.merge, RangeCollector):
            continue  # a global method holds N x its range by design, in any order
        for participant, nbytes in enumerate(attempt.merge.held_by):
            sender = attempt.participants[participant]
            if nbytes and sender != me:
                held[sender] = held.get(sender, 0) + nbytes
    return held

"""The SL side of a sync round (sans-IO): commit, reduce-scatter, merge by range, all-gather.

Theory of operation (DESIGN.md, "Sync round")
---------------------------------------------
The local trainer hands over its weights (:class:`Contribute`: the flat bytes in the merge
engine's layout). The core commits to them on the ledger before any byte moves: a signed
``CheckIn`` with the manifest root. The ledger (read through the node's swarm app) closes
the round and fixes the participants; participant ``i`` owns range ``i`` of
``plan_shards(layout, P)``. Then, per attempt:

1. every participant sends each other participant its manifest (the chunk hashes, checked
   against the committed root) and the chunks that overlap that participant's range;
2. each owner verifies every chunk against the sender's manifest and folds it into its
   :class:`RangeMerge` (fixed participant order: identical bytes whatever the arrival
   order). A chunk that does not match its commitment gets its sender excluded on the
   ledger (``Exclude``), which starts a new attempt without it. The global methods
   (geometric median, Krum: ``plan_shards(layout, P, "chunk")``) keep the range's chunks in a
   ``RangeCollector`` instead, and once complete the owners exchange per-piece partial sums
   step by step (``MergePartials``, :mod:`swarmlearn.roles.sl.global_merge`) until every
   participant has decided alike;
3. each owner sends its merged range to every participant (``MergedPiece``); each
   participant assembles the merged model, computes its manifest root and reports it
   (``Merged``);
4. when the ledger holds the round DONE with a root, a participant whose bytes have that
   root delivers them to the trainer; one that lacks them (late, restarted, dissenting)
   fetches them from a participant and verifies them against the ledger's root (bounded
   tries, then the round fails for it: :mod:`~swarmlearn.roles.sl.ends`). A FAILED
   round is delivered as such: the trainer keeps its own weights, never a partial merge.

Bytes and memory: the node's round lanes (:mod:`swarmlearn.p2p.bulk_push`) hash each chunk and
merged piece as it arrives and hand it in as :class:`Hashed`, so the core compares digests
(a plain ``Receive``, as in the simulator, is hashed here). Merged pieces are cut at chunk
boundaries, so the merged root reuses those digests. The contribution is kept as given, no
copy. When it is a writable view of the trainer's handover file, the merged model is
assembled in that file: a piece lands where this node's chunks of that range were (its owner
had them all before it merged; a chunk that straddles two ranges is sent as a copy), so the
node holds no second model. Its own range is merged in place there too (each of its own
chunks copied just before the range's first fold of it writes over it, and freed when
folded) when the trainer can refill; else apart, and copied in once merged. The cost: an
attempt after merged bytes landed (the ledger re-planned without a node that died) finds no
weights to send: the node asks its trainer to write them into the file again
(:class:`NeedRefill`; the trainer still has them: its model, or the bytes it handed over),
checks what the trainer wrote against its commitment (:class:`Refilled`) and joins the
attempt. A trainer that cannot refill: the node sits the attempt out and the trainer, told
``overwritten``, keeps its model's weights. Otherwise (weights in a socket frame) the
merged model gets its own buffer; one every participant agreed on is freed when the next
round starts.

Steps 1-3 send each message once; a lost one (a lane that broke mid-send) is asked for
again by the participant that lacks it (:mod:`swarmlearn.roles.sl.repair`: ``ResendRound``,
answered from what the peer still holds, bounded per attempt and asker), so a duplicate
that came because this node asked is dropped quietly, and merged pieces count by chunk cut
(never twice).

Every wait is bounded: the attempt deadline comes from the ledger (model size based); when
it passes, the core sends a ``Heartbeat`` so the ledger runs its deadline rule (finish with
agreeing reporters, re-plan with the live ones, or fail). Progress is delivered as it goes
("round 7: 2/3 checked in"); a round short of minPeers says so every ``WAIT_PROGRESS_S`` and
fails at the trainer's syncTimeout (``Contribute.wait_s``); a check-in the ledger refuses for
good (another model won the race to a contract's first check-in) fails it at the next block.
"""

from __future__ import annotations

from typing import Any

from swarmlearn.consensus.ledger.app import SwarmApp
from swarmlearn.consensus.ledger.rounds import RoundRecord, RoundStatus
from swarmlearn.consensus.ledger.txs import CheckIn, Merged, PerfData
from swarmlearn.consensus.tendermint.events import TxRefused
from swarmlearn.digest import content_digest
from swarmlearn.errors import RemoteProtocolError
from swarmlearn.merge import Layout, RangeCollector, RangeMerge, WeightSet, plan_shards
from swarmlearn.merge.manifest import chunk_hashes, manifest_root
from swarmlearn.merge.methods import method_scope, round_method
from swarmlearn.roles.sl.ends import DEADLINE_MARGIN_S, WAIT_PROGRESS_S, RoundEnds
from swarmlearn.roles.sl.fetch import Fetched
from swarmlearn.roles.sl.global_merge import RoundGlobal
from swarmlearn.roles.sl.latest import LatestModels
from swarmlearn.roles.sl.merged import KeptModels
from swarmlearn.roles.sl.messages import (
    Contribute,
    FetchLatest,
    FetchMerged,
    Hashed,
    LedgerChanged,
    MergedPiece,
    MergedUnavailable,
    MergePartials,
    NeedRefill,
    PeerFault,
    Progress,
    Refilled,
    ReportPerf,
    ResendRound,
    ResendUnheld,
    RoundChunk,
    RoundDone,
    RoundFailed,
    RoundManifest,
    RoundPart,
    SessionClosed,
    ShedPages,
    SLEffect,
    SubmitSigned,
    chunk_cuts,
    cuts_within,
    handover_file,
    merged_hashes,
    note_digest,
    range_out,
    specs_of,
)
from swarmlearn.roles.sl.refill import RoundRefill
from swarmlearn.roles.sl.repair import RoundRepair
from swarmlearn.roles.sl.sessions import RESEND_S, RoundSessions
from swarmlearn.roles.sl.state import (
    Attempt,
    RoundBook,
    RoundState,
    Sign,
    add_own,
    contribution_sends,
    is_early,
)
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
from swarmlearn.sansio import (
    Deliver,
    Input,
    Log,
    Metric,
    NodeId,
    Receive,
    Request,
    Send,
    SetTimer,
    TimerFired,
)

#: The core, and (re-exported from roles/sl/messages.py) what it speaks.
__all__ = [
    "Contribute",
    "FetchMerged",
    "Hashed",
    "LedgerChanged",
    "MergePartials",
    "MergedPiece",
    "NeedRefill",
    "Progress",
    "Refilled",
    "ResendRound",
    "ResendUnheld",
    "RoundChunk",
    "RoundDone",
    "RoundFailed",
    "RoundManifest",
    "SLEffect",
    "SLRoundCore",
    "SessionClosed",
    "SubmitSigned",
    "specs_of",
]


CHUNKS, PIECES = RoundPart.CHUNKS, RoundPart.PIECES


def layout_chunks(layout: Layout, start: int, size: int) -> range:
    """The chunks that bytes ``[start, start + size)`` of the layout touch."""
    if size <= 0:
        return range(0)
    return range(start // layout.chunk_bytes, (start + size - 1) // layout.chunk_bytes + 1)


# ---------------------------------------------------------------- the core


class SLRoundCore:
    """One SL node's rounds, for every contract it trains on.

    The core commits weights, follows the ledger's record of each round and runs the
    exchange of an attempt (manifests, chunks, the merge of its range, merged pieces). Its
    parts each own their inputs and state, and share the :class:`RoundBook` (the rounds):
    ``ends`` (the outcome: delivery, the merged-model fetch, waiting and attempt timers),
    ``sessions`` (queued weights, gone sessions, refused check-ins), ``refill``,
    ``latest`` (latest-model fetches for late trainers), ``global_merge`` (partial sums),
    and the book's ``kept`` models (served to peers that fetch them).
    """

    def __init__(self, me: NodeId, app: SwarmApp, sign: Sign) -> None:
        self.me = me
        self.app = app
        self.sign = sign  # body Message -> signed transaction bytes
        self.book = RoundBook(me, app, sign)
        self.ends = RoundEnds(self.book)
        self.sessions = RoundSessions(self.book, self._contribute)
        self.refill = RoundRefill(self.book, self._follow)
        self.latest = LatestModels(self.book)
        self.repair = RoundRepair(self.book)
        self.global_merge = RoundGlobal(self.book, self._after_merge_step, self.repair)
        self.nonce = 0  # check-ins signed: with the session, each one a distinct transaction

    @property
    def rounds(self) -> dict[tuple[str, int], RoundState]:
        return self.book.rounds

    @property
    def kept(self) -> KeptModels:
        return self.book.kept

    def fetch_sources(self) -> set[NodeId]:
        """The peers this node's running merged-model fetches ask now (a round's, a late
        trainer's): the host keeps links with them."""
        fetches = [s.fetch for s in self.rounds.values() if not s.finished and s.fetch]
        fetches += [f.fetch for f in self.latest.fetches.values() if f.fetch is not None]
        return {peer for fetch in fetches if not fetch.over for peer in fetch.asking()}

    @property
    def partials_dropped(self) -> int:
        """Partial sums dropped as garbage (a global method's exchange)."""
        return self.global_merge.partials_dropped

    def handle(self, event: Input, now: float) -> list[SLEffect]:
        match event:
            case Request(Contribute() as contribution):
                return self._contribute(contribution, now)
            case Request(LedgerChanged()):
                effects = [e for r in list(self.rounds.values()) for e in self._follow(r, now)]
                return effects + self.sessions.start_queued(now) + self.latest.follow(now)
            case Receive(
                sender,
                RoundManifest(attempt=-1) | MergedPiece(attempt=-1) | MergedUnavailable() as m,
            ):
                return self._fetched(sender, m, None, now)  # a merged model being fetched
            case Request(Hashed(sender, MergedPiece(attempt=-1) as piece, digest)):
                return self._fetched(sender, piece, digest, now)
            case Receive(
                sender, RoundManifest() | RoundChunk() | MergedPiece() | MergePartials() as message
            ):
                if is_early(self.rounds, message):
                    return self._keep_early(sender, message)
                self.repair.heard(sender, message.contract, message.round, message.attempt, now)
                return self._dispatch(sender, message)
            case Request(Hashed(sender, RoundChunk() | MergedPiece() as message, digest)):
                if is_early(self.rounds, message):
                    return self._keep_early(sender, message, digest)
                self.repair.heard(sender, message.contract, message.round, message.attempt, now)
                return self._dispatch(sender, message, digest)
            case Receive(_, ResendRound() | ResendUnheld()) | TimerFired(RepairDue()):
                return self.repair.handle(event, now)  # loss repair (roles/sl/repair.py)
            case Request(ReportPerf() as r):  # measured after the round: on its merged model
                perf = PerfData(
                    r.contract, r.round, r.loss, r.metric, r.epochs_done, r.epochs_total
                )
                return [SubmitSigned(self.sign(perf))]
            case Receive(sender, FetchMerged() as fetch):
                return self.kept.serve(sender, fetch)
            case TimerFired(CheckInDue(contract, number)):
                state = self.rounds.get((contract, number))
                return [] if state is None else self._follow(state, now, resend_due=True)
            case TimerFired(ProgressDue() | SyncTimeout() | CloseDue() | FetchTick()):
                return self.ends.handle(event, now)
            case TimerFired(AttemptHalfway() | AttemptDeadline()):
                return self.ends.handle(event, now)
            case Request(SessionClosed() | TxRefused()) | TimerFired(GoneWait() | QueuedTimeout()):
                return self.sessions.handle(event, now)
            case Request(Refilled()) | TimerFired(RefillDeadline()):
                return self.refill.handle(event, now)
            case Request(FetchLatest()) | TimerFired(LatestStall() | LatestDeadline()):
                return self.latest.handle(event, now)  # a trainer that joins late
        return []

    def _fetched(
        self,
        sender: NodeId,
        message: Fetched,
        digest: bytes | None,
        now: float,
    ) -> list[SLEffect]:
        """A fetched merged model's manifest or chunk, for the fetch that asked ``sender``
        for it (a late trainer's, roles/sl/latest.py, or a round's, roles/sl/ends.py); a
        ``MergedUnavailable`` goes to both."""
        effects: list[SLEffect] = []
        for part in (self.latest, self.ends):
            answer = part.fetched(sender, message, digest, now)
            if answer is not None:
                effects += answer
                if not isinstance(message, MergedUnavailable):
                    break
        return effects

    def _dispatch(
        self,
        sender: str,
        message: RoundManifest | RoundChunk | MergedPiece | MergePartials,
        digest: bytes | None = None,
    ) -> list[SLEffect]:
        if isinstance(message, MergePartials):
            return self.global_merge.on_partials(sender, message)
        if isinstance(message, RoundManifest):
            return self._on_manifest(sender, message)
        if isinstance(message, RoundChunk):
            return self._on_chunk(sender, message, digest)
        return self._on_piece(sender, message, digest)

    def _keep_early(
        self,
        sender: str,
        message: RoundManifest | RoundChunk | MergedPiece | MergePartials,
        digest: bytes | None = None,
    ) -> list[SLEffect]:
        if not self.book.early.keep(sender, message, digest):
            return [Log("dropped an early round message: the buffer is full", "warning")]
        return []

    def _replay_early(self, state: RoundState) -> list[SLEffect]:
        assert state.attempt is not None
        ready = self.book.early.take(state.contract, state.number, state.attempt.number)
        return [effect for s, m, d in ready for effect in self._dispatch(s, m, d)]

    # ------------------------------------------------------------ committing

    def _contribute(
        self, c: Contribute, now: float, started: float | None = None
    ) -> list[SLEffect]:
        """Check ``c`` in (or queue it behind the contract's running round). ``started``: when
        the trainer's sync began (its syncTimeout counts from there, queued or not)."""
        started = now if started is None else started
        contract = self.app.state.contracts.get(c.contract)
        specs = specs_of(c.layout)
        problem = self.app.check_in_problem(c.contract, c.merge_method, specs)
        if contract is None or problem is not None:
            number = 0 if contract is None else contract.next_round_number()
            reason = f"the ledger refuses it: {problem}"
            failed = RoundFailed(c.contract, number, reason, session=c.session, refused=True)
            return [Deliver(failed)]
        busy = [r for r in self.rounds.values() if r.contract == c.contract and not r.finished]
        if busy:  # one round at a time per contract: this one waits for the current one
            return self.sessions.queue(c, busy[0].number, started, now)
        number = contract.next_round_number()
        hashes = c.chunk_hashes
        if hashes is None or len(hashes) != c.layout.chunk_count:
            hashes = chunk_hashes(c.layout, c.flat)
        root = manifest_root(c.layout, hashes)
        state = RoundState(c.contract, number, c, hashes, root, specs=specs, contributed_at=started)
        state.generation = contract.generation
        self.rounds[(c.contract, number)] = state
        left_s = None if c.wait_s is None else max(0.0, c.wait_s - (now - started))
        self.nonce += 1
        check_in = CheckIn(
            c.contract,
            number,
            root,
            c.weight,
            c.min_peers,
            specs,
            c.layout.total_bytes,
            c.merge_method,
            c.final,
            c.session,
            0 if left_s is None else max(1, int(left_s * 1000)),
            contract.generation,
            nonce=self.nonce,
        )
        state.check_in = self.sign(check_in)
        state.sent_at = now
        effects: list[SLEffect] = [
            SubmitSigned(state.check_in),
            self.book.progress(state, "checking in"),
            SetTimer(ProgressDue(c.contract, number), WAIT_PROGRESS_S),
            SetTimer(CheckInDue(c.contract, number), RESEND_S),
        ]
        if left_s is not None:
            effects.append(SetTimer(SyncTimeout(c.contract, number), left_s))
        if c.perf is not None:
            loss, metric, done, total = c.perf
            report = PerfData(c.contract, number, loss, metric, done, total, contract.generation)
            effects.insert(1, SubmitSigned(self.sign(report)))
        return effects

    def _follow(self, state: RoundState, now: float, *, resend_due: bool = False) -> list[SLEffect]:
        """Act on the ledger's view of the round. ``resend_due``: the check-in's resend timer
        fired (its time is due even where ``now - sent_at`` rounds to just under ``RESEND_S``
        at a clock of 1.7e9 s)."""
        record = self.book.record(state)
        if state.finished or state.refilling is not None:  # (the trainer is writing its file)
            return []
        if state.gone_at is not None and (record is None or self.me not in record.participants):
            return self.sessions.gone_follow(state, record, now)  # its trainer went away
        contract = self.app.state.contracts.get(state.contract)
        if contract is None or contract.generation != state.generation:
            reason = f"round {state.number}: the contract was reset (RESET CONTRACT); sync again"
            return [self.book.failed(state, reason)]
        if (refused := self.sessions.refused_on_ledger(state)) is not None:
            return [self.book.failed(state, f"the ledger refuses it: {refused}", refused=True)]
        if self.ends.missed(state, record):
            # Checked in to a round that had moved on (a restarted node's ledger was behind,
            # or the round closed first): the same weights go to the round that is open now.
            del self.rounds[(state.contract, state.number)]
            return self._contribute(state.contribution, now, state.contributed_at)
        if record is None or self.me not in record.checkins:
            if problem := self.ends.refusal(state, record):  # for good: another model won the race
                return [self.book.failed(state, f"the ledger refuses it: {problem}", refused=True)]
            if resend_due or now - state.sent_at >= RESEND_S:
                state.sent_at = now  # not on the ledger yet (refused while joining, or lost)
                due = CheckInDue(state.contract, state.number)
                return [SubmitSigned(state.check_in), SetTimer(due, RESEND_S)]
        if record is None:
            return []
        if record.status == RoundStatus.OPEN:
            text = f"round {state.number}: {len(record.checkins)}/{record.min_peers} checked in"
            if text == state.last_progress:
                return []
            effects: list[SLEffect] = [self.book.progress(state, text)]
            if record.quorum_ms is not None:  # a block after the grace period closes the round
                contract = self.app.state.contracts[state.contract]
                close_s = (record.quorum_ms + contract.params.grace_ms) / 1000
                tag = CloseDue(state.contract, state.number)
                effects.append(SetTimer(tag, max(0.0, close_s - now) + DEADLINE_MARGIN_S))
            return effects
        if record.status == RoundStatus.FAILED:
            return [self.book.failed(state, record.reason)]
        if record.status == RoundStatus.DONE:
            return self.ends.done(state, record, now)
        if state.attempt is None or state.attempt.number != record.attempt:
            return self._start_attempt(state, record, now)
        return []

    # ------------------------------------------------------------ the exchange

    def _start_attempt(self, state: RoundState, record: RoundRecord, now: float) -> list[SLEffect]:
        if self.me not in record.participants:
            state.attempt = None
            return [
                self.book.progress(
                    state, f"round {state.number}: not a participant of attempt {record.attempt}"
                )
            ]
        c = state.contribution
        self.book.release_settled(state.contract, state.number)
        me = record.participants.index(self.me)
        method = round_method(record.merge_method, len(record.participants))
        is_global = method_scope(method) == "global"  # a plan that splits no chunk (global)
        plan = plan_shards(c.layout, len(record.participants), "chunk" if is_global else "element")
        weights = WeightSet.of(
            [record.checkins[p].weight for p in record.participants], len(record.participants)
        )
        # Merged in the trainer's handover file when the weights came in one: pieces land
        # where this node's own chunks for their owner's range were (sent by then: the owner
        # merged them); its own range in place (add_own) when the trainer can refill, else
        # apart and copied in. Else in a buffer of its own, its range merged in place.
        file = handover_file(c.flat, c.layout.total_bytes)
        if file is not None and state.overwritten:
            return self.refill.refill(state, record, now)
        shard = plan.shards[me]
        merged: bytearray | memoryview
        if file is None:
            merged = buffer = bytearray(c.layout.total_bytes)
            out = range_out(buffer, shard.start_byte, shard.stop_byte)
        else:  # in the file too when a trainer can refill what the merge writes over
            merged = file
            out = range_out(file, shard.start_byte, shard.stop_byte) if c.refill else None
        merge: RangeMerge | RangeCollector
        if is_global:  # every chunk of my range kept for the steps (roles/sl/global_merge.py)
            merge, out = RangeCollector(c.layout, shard, weights), None
        else:
            merge = RangeMerge(c.layout, shard, weights, method, out=out)
        attempt = Attempt(record.attempt, record.participants, me, merge, merged=merged)
        attempt.merge_in_place, attempt.in_file = out is not None, file is not None
        attempt.plan, attempt.method = plan, method
        state.attempt = attempt
        effects: list[SLEffect] = []
        wait_s = max(0.0, record.deadline_ms / 1000 - now) + DEADLINE_MARGIN_S
        effects.append(
            SetTimer(AttemptDeadline(state.contract, state.number, attempt.number), wait_s)
        )
        # Halfway, tell the ledger this node is alive: if the attempt fails, the next one is
        # planned with the nodes that said so (the ledger's deadline rule).
        halfway = AttemptHalfway(state.contract, state.number, attempt.number)
        effects.append(SetTimer(halfway, wait_s / 2))
        effects += self.repair.start(state, now)  # asks for what is lost, once quiet
        attempt.manifests[me] = state.manifest_hashes
        effects += contribution_sends(self.me, state, attempt, plan)
        for chunk in plan.shards[me].chunks(c.layout):  # my own contribution to my own range
            if attempt.in_file and attempt.merge_in_place and len(record.participants) > 1:
                attempt.own_pending.add(chunk)  # added as a copy when its first peer's comes
            else:
                add_own(state, attempt, chunk)
        effects.append(
            self.book.progress(
                state,
                f"round {state.number}: exchanging with {len(record.participants)} participants",
            )
        )
        return effects + self._after_merge_step(state) + self._replay_early(state)

    def _on_manifest(self, sender: str, m: RoundManifest) -> list[SLEffect]:
        state = self.book.current(m.contract, m.round, m.attempt)
        record = self.book.record(state) if state else None
        if (
            state is None
            or record is None
            or state.attempt is None
            or sender not in state.attempt.participants
        ):
            return []
        index = state.attempt.participants.index(sender)
        committed = record.checkins[sender].root
        if manifest_root(state.contribution.layout, m.chunk_hashes) != committed:
            return self.book.exclude(state, sender, "its manifest does not match its commitment")
        state.attempt.manifests[index] = m.chunk_hashes
        mine = [w for w in state.attempt.waiting if w[0] == index]
        state.attempt.waiting = [w for w in state.attempt.waiting if w[0] != index]
        effects: list[SLEffect] = []
        for participant, chunk, data, digest in mine:
            effects += self._fold(state, participant, chunk, data, digest)
        return effects

    def _on_chunk(self, sender: str, c: RoundChunk, digest: bytes | None) -> list[SLEffect]:
        state = self.book.current(c.contract, c.round, c.attempt)
        if state is None or state.attempt is None or sender not in state.attempt.participants:
            return []
        attempt = state.attempt
        index = attempt.participants.index(sender)
        if (index, c.index) in attempt.chunks_in and self.repair.asked(attempt, index, CHUNKS):
            return self.repair.duplicate()  # asked again, and the first one came after all
        if index not in attempt.manifests:
            # a lane's frame is this chunk's own buffer; a message connection's may be shared
            data = c.data if digest is not None else bytes(c.data)
            attempt.waiting.append((index, c.index, data, digest))
            attempt.chunks_in.add((index, c.index))
            return []
        return self._fold(state, index, c.index, c.data, digest)

    def _fold(
        self, state: RoundState, participant: int, chunk: int, data: Any, digest: bytes | None
    ) -> list[SLEffect]:
        attempt = state.attempt
        assert attempt is not None
        if attempt.merge is None:  # merged and copied into the handover file already
            if self.repair.asked(attempt, participant, CHUNKS):
                return self.repair.duplicate()
            return [Log(f"round {state.number}: chunk {chunk} came twice", "warning")]
        layout = state.contribution.layout
        hashes = attempt.manifests[participant]
        start, stop = layout.chunk_span(chunk) if 0 <= chunk < layout.chunk_count else (0, -1)
        if digest is None and stop >= 0 and len(data) == stop - start:
            digest = content_digest(data)
        if stop < 0 or len(data) != stop - start or digest != hashes[chunk]:
            culprit = attempt.participants[participant]
            return self.book.exclude(state, culprit, f"chunk {chunk} does not match its commitment")
        try:
            if chunk in attempt.own_pending:  # a fold may write over mine in the file now
                add_own(state, attempt, chunk)
            attempt.merge.add(participant, chunk, data)
            attempt.chunks_in.add((participant, chunk))
        except RemoteProtocolError as error:  # a duplicate, or a chunk outside my range
            sender = attempt.participants[participant]
            return [
                Log(f"round {state.number}: chunk {chunk} from {sender[:8]}: {error}", "warning"),
                Metric("sl_chunks_refused", 1.0),
                Deliver(PeerFault(sender, f"round {state.number}: {error}")),
            ]
        return self._after_merge_step(state)

    def _after_merge_step(self, state: RoundState) -> list[SLEffect]:
        attempt = state.attempt
        assert attempt is not None
        if attempt.merge is None or not attempt.merge.done or attempt.me in attempt.pieces:
            return []
        effects: list[SLEffect] = []
        result: Any
        if isinstance(attempt.merge, RangeCollector):  # a global method's steps
            effects, result = self.global_merge.result(state)
            if result is None:
                return effects
        else:
            result = attempt.merge.result()
        shard = attempt.merge.shard
        if isinstance(attempt.merge, RangeCollector):
            attempt.merge = None  # N x my range, no longer needed: let it go
        in_place = attempt.merge_in_place
        effects += self._place(state, attempt.me, shard.start_byte, result, copy=not in_place)
        if attempt.in_file:  # sent from the file: the range's own buffer is let go now
            result = memoryview(attempt.merged)[shard.start_byte : shard.stop_byte]
            attempt.merge = None
        # Pieces cut at chunk boundaries: a receiver's lane hashes each whole chunk it gets,
        # and the merged root takes those digests instead of hashing the bytes again.
        for cut, end in chunk_cuts(state.contribution.layout, shard.start_byte, shard.stop_byte):
            piece = result[cut - shard.start_byte : end - shard.start_byte]
            message = MergedPiece(state.contract, state.number, attempt.number, cut, piece)
            effects += [Send(other, message) for other in attempt.participants if other != self.me]
        return effects

    def _on_piece(self, sender: str, p: MergedPiece, digest: bytes | None) -> list[SLEffect]:
        state = self.rounds.get((p.contract, p.round))
        if (
            state is None
            or state.attempt is None
            or state.attempt.number != p.attempt
            or sender not in state.attempt.participants
        ):
            return []
        owner = state.attempt.participants.index(sender)
        return self._place(state, owner, p.start, p.data, digest)

    def _place(
        self,
        state: RoundState,
        owner: int,
        start: int,
        data: Any,
        digest: bytes | None = None,
        *,
        copy: bool = True,
    ) -> list[SLEffect]:
        attempt = state.attempt
        assert attempt is not None
        layout = state.contribution.layout
        plan = attempt.plan or plan_shards(layout, len(attempt.participants))
        shard = plan.shards[owner]
        if not (shard.start_byte <= start and start + len(data) <= shard.stop_byte):
            return [
                Log(f"round {state.number}: a merged piece outside its owner's range", "warning")
            ]
        cuts = cuts_within(layout, shard.start_byte, shard.stop_byte, start, start + len(data))
        if cuts is None:
            return [Log(f"round {state.number}: a merged piece not cut at chunks", "warning")]
        got = attempt.cuts_in.setdefault(owner, set())
        new = [(cut, end) for cut, end in cuts if cut not in got]
        if not new:  # it came already: a resend crossed the original, or the network doubled it
            if self.repair.asked(attempt, owner, PIECES):
                return self.repair.duplicate()
            return [Log(f"round {state.number}: a merged piece came twice", "warning")]
        shed: list[SLEffect] = []
        if copy:
            attempt.merged[start : start + len(data)] = data
            state.overwritten |= attempt.in_file
            if attempt.in_file:  # the trainer's pages: the node need not keep them resident
                view = attempt.merged[start : start + len(data)]
                shed.append(Deliver(ShedPages(start, len(data), memoryview(view))))
                attempt.written.update(layout_chunks(layout, start, len(data)))
        note_digest(attempt.digests, layout, start, len(data), digest)
        got.update(cut for cut, _ in new)
        attempt.bytes_from[owner] = attempt.bytes_from.get(owner, 0) + sum(e - c for c, e in new)
        if attempt.bytes_from[owner] >= shard.nbytes:
            attempt.pieces.add(owner)
        if len(attempt.pieces) < len(attempt.participants) or attempt.reported:
            return shed
        attempt.reported = True
        hashes = merged_hashes(layout, attempt.merged, attempt.digests)
        root = manifest_root(layout, hashes)
        state.merged_root, state.merged = root, attempt.merged  # no copy: the attempt is over
        self.book.keep(state.contract, state.number, root, state.merged, layout, hashes)
        report = Merged(state.contract, state.number, attempt.number, root, state.generation)
        return [
            *shed,
            SubmitSigned(self.sign(report)),
            self.book.progress(state, f"round {state.number}: merged, root {root.hex()[:12]}"),
        ]

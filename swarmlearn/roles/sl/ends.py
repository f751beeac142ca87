"""How the SL round core (:mod:`swarmlearn.roles.sl.core`) ends a round: delivers the
merged model the ledger settled on, or fetches it from a peer, or says why the round failed;
and how it ends an attempt (excluding a participant, or telling the ledger its deadline
passed).

When the ledger holds the round DONE with a root, a participant whose merged bytes have that
root delivers them to the trainer (:class:`RoundDone`); one that lacks them (late, restarted,
dissenting) sends ``FetchMerged`` to a participant that agreed, takes the pieces into a new
buffer and delivers them only if their manifest root is the ledger's. That fetch is bounded
(``FETCH_TRIES`` peers asked in turn, a backoff after each that holds the model no more, a
stall timer on each): then the round fails for this node, its trainer keeps its weights and
joins the next round. (Before, a node paused past a round's deadline asked again at every
block for minutes, and its trainer stayed blocked.) Either way the model is
kept to serve other fetchers (:class:`~swarmlearn.roles.sl.merged.KeptModels`). Ending a
round lets go of the trainer's weights (a view of its handover file).

:class:`RoundEnds` takes the timers that end a wait or an attempt (the round short of
minPeers, the trainer's syncTimeout, the close of the round, an attempt's halfway beat and
deadline) and the merged-model fetch's inputs (its timers, ``MergedUnavailable``).
"""

from __future__ import annotations

from swarmlearn.consensus.ledger.rounds import RoundRecord, RoundStatus
from swarmlearn.consensus.ledger.txs import CheckOut, Heartbeat
from swarmlearn.merge import build_manifest
from swarmlearn.roles.sl.messages import (
    FetchMerged,
    MergedPiece,
    MergedUnavailable,
    RoundDone,
    SLEffect,
    SubmitSigned,
)
from swarmlearn.roles.sl.state import (
    Attempt,
    MergedFetch,
    RoundBook,
    RoundState,
    global_waiting,
)
from swarmlearn.roles.sl.timers import (
    AttemptDeadline,
    AttemptHalfway,
    CloseDue,
    FetchTry,
    ProgressDue,
    SyncTimeout,
)
from swarmlearn.sansio import Deliver, Input, Log, NodeId, Receive, Send, SetTimer, TimerFired

#: While a round waits for minPeers check-ins, the trainer hears so this often.
WAIT_PROGRESS_S = 30.0
#: A node's attempt timers fire this long after the ledger's deadline for it.
DEADLINE_MARGIN_S = 0.5
#: Fetching a round's merged model (this node missed it: paused, late, dissenting): peers
#: asked in turn, at most this many tries; a peer that sends nothing for ``FETCH_STALL_S`` is
#: passed over, one that holds it no more is followed by the next after a backoff that
#: doubles from ``FETCH_BACKOFF_S``. Then the round fails here (the trainer keeps its weights).
FETCH_TRIES = 4
FETCH_STALL_S = 10.0
FETCH_BACKOFF_S = 1.0


class RoundEnds:
    """The ends of rounds and of attempts, over the core's :class:`RoundBook`."""

    def __init__(self, book: RoundBook) -> None:
        self.book = book

    def handle(self, event: Input, now: float) -> list[SLEffect]:
        match event:
            case Receive(sender, MergedUnavailable() as unavailable):
                return self._fetch_unavailable(sender, unavailable)
            case TimerFired(FetchTry(contract, number, tries)):
                return self._fetch_timer(contract, number, tries)
            case TimerFired(ProgressDue(contract, number)):
                return self._waiting(contract, number, now, expired=False)
            case TimerFired(SyncTimeout(contract, number)):
                return self._waiting(contract, number, now, expired=True)
            case TimerFired(CloseDue() | AttemptHalfway() as tag):
                return self._beat(tag, now)
            case TimerFired(AttemptDeadline(contract, number, attempt)):
                return self._deadline(contract, number, attempt, now)
        return []

    def done(self, state: RoundState, record: RoundRecord) -> list[SLEffect]:
        assert record.merged_root is not None
        if state.merged_root == record.merged_root and state.merged is not None:
            flat = state.merged
            wanted = state.contract in self.book.kept.wanted  # a peer (a late joiner) asked for it
            if isinstance(flat, memoryview) and (
                wanted or not self.book.kept.settled(self.book.app, state.contract, state.number)
            ):
                # A dissenting or silent participant (or a late joiner) will fetch it, and the
                # trainer is about to write its next weights over this file: a copy.
                self.book.keep(state.contract, state.number, record.merged_root, bytearray(flat))
            self.book.kept.wanted.discard(state.contract)
            self.book.finish(state)
            done = RoundDone(
                state.contract,
                state.number,
                record.merged_root,
                flat,
                record.all_final,
                len(record.participants),
                state.contribution.session,
            )
            return [Deliver(done)]
        if state.fetch is not None:
            return []  # fetching it already: a newer block changes nothing
        # Those that reported the ledger's root first, then the others that did not dissent.
        agreed = [p for p in record.participants if record.merged.get(p) == record.merged_root]
        others = [p for p in record.participants if p not in agreed and p not in record.dissenters]
        sources = tuple(p for p in agreed + others if p != self.book.me)
        if not sources:
            return [self.book.failed(state, "no peer holds the merged model")]
        self.book.drop_file_views(state)
        state.merged = None
        state.attempt = Attempt(
            -1,
            record.participants,
            -1,
            None,
            merged=bytearray(state.contribution.layout.total_bytes),
        )
        state.fetch = MergedFetch(sources)
        return self._fetch_next(state)

    def _fetch_next(self, state: RoundState) -> list[SLEffect]:
        """Ask the next peer for the round's merged model; after ``FETCH_TRIES`` tries the
        round fails for this node (the trainer keeps its weights and joins the next round)."""
        fetch, attempt = state.fetch, state.attempt
        assert fetch is not None
        assert attempt is not None
        if fetch.tries >= FETCH_TRIES:
            reason = (
                f"the merged model could not be fetched from {len(fetch.sources)} peer(s)"
                f" in {fetch.tries} tries"
            )
            return [
                Log(f"round {state.number}: {reason}", "warning"),
                self.book.failed(state, reason),
            ]
        fetch.source = fetch.sources[fetch.tries % len(fetch.sources)]
        fetch.tries += 1
        fetch.seen = attempt.bytes_from[-1] = 0
        tag = FetchTry(state.contract, state.number, fetch.tries)
        text = (
            f"round {state.number}: fetching the merged model from {fetch.source[:8]}"
            f" (try {fetch.tries}/{FETCH_TRIES})"
        )
        return [
            Send(fetch.source, FetchMerged(state.contract, state.number)),
            SetTimer(tag, FETCH_STALL_S),
            self.book.progress(state, text),
        ]

    def _fetch_unavailable(self, sender: NodeId, m: MergedUnavailable) -> list[SLEffect]:
        """The peer asked holds the model no more: the next one, after a backoff."""
        state = self.book.rounds.get((m.contract, m.round))
        fetch = None if state is None or state.finished else state.fetch
        if state is None or fetch is None or sender != fetch.source:
            return []
        fetch.source = ""  # its stall timer drops out
        if fetch.tries >= FETCH_TRIES:
            return self._fetch_next(state)  # the last try: the round fails now
        backoff_s = FETCH_BACKOFF_S * 2 ** (fetch.tries - 1)
        return [SetTimer(FetchTry(m.contract, m.round, fetch.tries), backoff_s)]

    def _fetch_timer(self, contract: str, number: int, tries: int) -> list[SLEffect]:
        """A try's stall timer (nothing came for ``FETCH_STALL_S``) or its backoff ended."""
        state = self.book.rounds.get((contract, number))
        fetch = None if state is None or state.finished else state.fetch
        if state is None or fetch is None or tries != fetch.tries or state.attempt is None:
            return []
        got = state.attempt.bytes_from.get(-1, 0)
        if fetch.source and got > fetch.seen:  # still coming
            fetch.seen = got
            return [SetTimer(FetchTry(contract, number, tries), FETCH_STALL_S)]
        if fetch.source:
            text = f"round {number}: {fetch.source[:8]} sent none of the merged model in time"
            return [Log(text, "warning"), *self._fetch_next(state)]
        return self._fetch_next(state)

    def fetched(self, sender: NodeId, state: RoundState, p: MergedPiece) -> list[SLEffect]:
        attempt, fetch = state.attempt, state.fetch
        if attempt is None or attempt.number != -1 or state.finished or fetch is None:
            return []
        if sender != fetch.source:
            return []  # an earlier try's peer
        if not 0 <= p.start <= len(attempt.merged) - len(p.data):
            return [Log(f"round {state.number}: a fetched piece outside the model", "warning")]
        attempt.merged[p.start : p.start + len(p.data)] = p.data
        attempt.bytes_from[-1] = attempt.bytes_from.get(-1, 0) + len(p.data)
        if attempt.bytes_from[-1] < len(attempt.merged):
            return []
        record = self.book.record(state)
        root = build_manifest(state.contribution.layout, attempt.merged).root
        if record is None or root != record.merged_root:
            text = f"round {state.number}: the model from {sender[:8]} does not match the ledger"
            return [Log(text, "warning"), *self._fetch_next(state)]
        self.book.finish(state)
        state.merged_root, state.merged = root, attempt.merged  # no copy: the attempt is over
        self.book.keep(state.contract, state.number, root, state.merged)
        record = self.book.record(state)
        over = record is not None and record.all_final
        count = 0 if record is None else len(record.participants)
        session = state.contribution.session
        done = RoundDone(state.contract, state.number, root, state.merged, over, count, session)
        return [Deliver(done)]

    def refusal(self, state: RoundState, record: RoundRecord | None) -> str | None:
        """Why the ledger refuses this round's check-in whenever it is sent (a model or merge
        method other than the one it took first, from a check-in that won the race), or
        None: then a refusal was passing (not a member yet) and the check-in is resent."""
        c = state.contribution
        problem = self.book.app.check_in_problem(state.contract, c.merge_method, state.specs)
        if problem is None and record is not None and record.merge_method != c.merge_method:
            problem = f"merge method {c.merge_method!r}; the round's is {record.merge_method!r}"
        return problem

    def _waiting(self, contract: str, number: int, now: float, *, expired: bool) -> list[SLEffect]:
        """The round is still open, short of minPeers: say so every ``WAIT_PROGRESS_S``, and
        at the trainer's syncTimeout fail it and withdraw its check-in (a round left with
        none is abandoned on the ledger; the trainer's next weights open a fresh one)."""
        state = self.book.rounds.get((contract, number))
        if state is None or state.finished:
            return []
        record = self.book.record(state)
        if record is not None and record.status != RoundStatus.OPEN:
            return []
        have = 0 if record is None else len(record.checkins)
        need = max(state.contribution.min_peers, 0 if record is None else record.min_peers)
        if have >= need:  # closing: the next block past the grace period closes it
            return []
        if expired:
            wait_s = state.contribution.wait_s
            reason = (
                f"round {number}: {have}/{need} checked in within syncTimeout={wait_s:g} s,"
                f" fewer than minPeers={need}"
            )
            return [
                *self.check_out(state, record, "syncTimeout passed"),
                self.book.failed(state, reason),
            ]
        waited_s = round(now - state.contributed_at)
        text = f"round {number}: {have}/{need} checked in, waiting for minPeers={need}"
        text += f" ({waited_s:g} s)"
        effects: list[SLEffect] = [
            self.book.progress(state, text),
            SetTimer(ProgressDue(contract, number), WAIT_PROGRESS_S),
        ]
        if record is not None and any(
            c.expires_ms is not None and c.expires_ms <= now * 1000
            for c in record.checkins.values()
        ):  # a check-in whose node is gone expired: a block runs the ledger's expiry rule
            beat = Heartbeat(contract, number, 0, int(now * 1000))
            effects.append(SubmitSigned(self.book.sign(beat)))
        return effects

    def check_out(
        self, state: RoundState, record: RoundRecord | None, reason: str
    ) -> list[SLEffect]:
        """Withdraw this node's check-in from the open round when it is this session's."""
        mine = None if record is None else record.checkins.get(self.book.me)
        session = state.contribution.session
        if record is None or record.status != RoundStatus.OPEN or mine is None:
            return []
        if mine.session != session or mine.root != state.root:
            return []
        withdraw = CheckOut(state.contract, state.number, session, reason)
        return [SubmitSigned(self.book.sign(withdraw))]

    def missed(self, state: RoundState, record: RoundRecord | None) -> bool:
        """This contribution belongs to a later round than ``state.number``."""
        contract = self.book.app.state.contracts.get(state.contract)
        if contract is None or contract.next_round_number() == state.number:
            return False
        if record is not None and self.book.me in record.checkins:
            # Mine, unless it is a check-in from before a restart, with other weights.
            return record.checkins[self.book.me].root != state.root
        return record is None or record.status != RoundStatus.OPEN

    def _beat(self, tag: CloseDue | AttemptHalfway, now: float) -> list[SLEffect]:
        """A heartbeat: :class:`CloseDue` while the round is closing, :class:`AttemptHalfway`
        halfway through an attempt (the ledger plans a next attempt with the nodes that said
        so)."""
        contract, number = tag.contract, tag.round
        attempt = tag.attempt if isinstance(tag, AttemptHalfway) else 0
        state = self.book.rounds.get((contract, number))
        if state is None or state.finished or state.merged_root is not None:
            return []
        if (state.attempt is None) != isinstance(tag, CloseDue):
            return []  # a close waits for the round to close; halfway, in an attempt
        if isinstance(tag, AttemptHalfway) and self.book.current(contract, number, attempt) is None:
            return []
        beat = Heartbeat(contract, number, attempt, int(now * 1000))
        return [SubmitSigned(self.book.sign(beat))]

    def _deadline(self, contract: str, number: int, attempt: int, now: float) -> list[SLEffect]:
        state = self.book.current(contract, number, attempt)
        if state is None or state.finished:
            return []
        beat = Heartbeat(contract, number, attempt, int(now * 1000))
        return [
            SubmitSigned(self.book.sign(beat)),
            self.book.progress(
                state,
                f"round {number}: attempt {attempt} past its deadline"
                + (global_waiting(state.attempt) if state.attempt else ""),
            ),
        ]

"""How the SL round core (:mod:`swarmlearn.roles.sl.core`) ends a round: delivers the
merged model the ledger settled on, or fetches it from a peer, or says why the round failed;
and how it ends an attempt (excluding a participant, or telling the ledger its deadline
passed).

When the ledger holds the round DONE with a root, a participant whose merged bytes have that
root delivers them to the trainer (:class:`RoundDone`); one that lacks them (late, restarted,
dissenting) fetches them from the participants that agreed, several at once, every chunk
checked against the ledger's root (:class:`~swarmlearn.roles.sl.fetch.ModelFetch`: sources
that stall, lack the model or lie are dropped and their chunks asked of the others;
``FETCH_TRIES`` passes over the sources, a deadline from the model's size). When the fetch
fails, the round fails for this node: its trainer keeps its weights and joins the next round.
(Before, a node paused past a round's deadline asked again at every block for minutes, and
its trainer stayed blocked.) Either way the model is kept to serve other fetchers
(:class:`~swarmlearn.roles.sl.merged.KeptModels`). Ending a round lets go of the trainer's
weights (a view of its handover file).

:class:`RoundEnds` takes the timers that end a wait or an attempt (the round short of
minPeers, the trainer's syncTimeout, the close of the round, an attempt's halfway beat and
deadline) and the merged-model fetch's inputs (its timer, the model's manifest and chunks,
``MergedUnavailable``).
"""

from __future__ import annotations

from swarmlearn.consensus.ledger.rounds import RoundRecord, RoundStatus
from swarmlearn.consensus.ledger.txs import CheckOut, Heartbeat
from swarmlearn.roles.sl.fetch import BACKOFF_S, STALL_S, Fetched, ModelFetch, deadline_s
from swarmlearn.roles.sl.messages import (
    RoundDone,
    SLEffect,
    SubmitSigned,
)
from swarmlearn.roles.sl.state import (
    Attempt,
    RoundBook,
    RoundState,
    global_waiting,
)
from swarmlearn.roles.sl.timers import (
    AttemptDeadline,
    AttemptHalfway,
    CloseDue,
    FetchTick,
    ProgressDue,
    SyncTimeout,
)
from swarmlearn.sansio import Deliver, Input, Log, NodeId, SetTimer, TimerFired

#: While a round waits for minPeers check-ins, the trainer hears so this often.
WAIT_PROGRESS_S = 30.0
#: A node's attempt timers fire this long after the ledger's deadline for it.
DEADLINE_MARGIN_S = 0.5
#: Fetching a round's merged model (this node missed it: paused, late, dissenting): passes
#: over the participants (roles/sl/fetch.py: each pass asks them all, several at once; the
#: next one after a backoff). Then, or at its deadline, the round fails here.
FETCH_TRIES = 3
FETCH_STALL_S = STALL_S
FETCH_BACKOFF_S = BACKOFF_S


class RoundEnds:
    """The ends of rounds and of attempts, over the core's :class:`RoundBook`."""

    def __init__(self, book: RoundBook) -> None:
        self.book = book

    def handle(self, event: Input, now: float) -> list[SLEffect]:
        match event:
            case TimerFired(FetchTick(contract, number)):
                return self._fetch_tick(contract, number, now)
            case TimerFired(ProgressDue(contract, number)):
                return self._waiting(contract, number, now, expired=False)
            case TimerFired(SyncTimeout(contract, number)):
                return self._waiting(contract, number, now, expired=True)
            case TimerFired(CloseDue() | AttemptHalfway() as tag):
                return self._beat(tag, now)
            case TimerFired(AttemptDeadline(contract, number, attempt)):
                return self._deadline(contract, number, attempt, now)
        return []

    def done(self, state: RoundState, record: RoundRecord, now: float) -> list[SLEffect]:
        assert record.merged_root is not None
        if state.merged_root == record.merged_root and state.merged is not None:
            flat = state.merged
            wanted = state.contract in self.book.kept.wanted  # a peer (a late joiner) asked for it
            if isinstance(flat, memoryview) and (
                wanted or not self.book.kept.settled(self.book.app, state.contract, state.number)
            ):
                # A dissenting or silent participant (or a late joiner) will fetch it, and the
                # trainer is about to write its next weights over this file: a copy.
                layout = state.contribution.layout
                copy = bytearray(flat)
                self.book.keep(state.contract, state.number, record.merged_root, copy, layout)
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
        layout = state.contribution.layout
        fetch = ModelFetch(
            state.contract,
            state.number,
            record.merged_root,
            layout,
            sources,
            FetchTick(state.contract, state.number),
            passes=FETCH_TRIES,
            deadline=now + deadline_s(layout.total_bytes),
        )
        state.attempt = Attempt(-1, record.participants, -1, None, merged=fetch.buffer)
        state.fetch = fetch
        effects = fetch.start(now)
        text = (
            f"round {state.number}: fetching the merged model from"
            f" {', '.join(p[:8] for p in fetch.asking())}"
        )
        return [*effects, self.book.progress(state, text), *self._fetch_over(state)]

    def fetched(
        self,
        sender: NodeId,
        message: Fetched,
        digest: bytes | None,
        now: float,
    ) -> list[SLEffect] | None:
        """A fetched merged model's manifest or chunk (``digest``: hashed by a lane), or a
        peer's ``MergedUnavailable`` (None: not for a round's fetch)."""
        state = self.book.rounds.get((message.contract, message.round))
        fetch = None if state is None or state.finished else state.fetch
        if state is None or fetch is None or not fetch.expects(sender, message):
            return None
        effects = fetch.receive(sender, message, digest, now)
        return effects + self._fetch_over(state)

    def _fetch_tick(self, contract: str, number: int, now: float) -> list[SLEffect]:
        state = self.book.rounds.get((contract, number))
        fetch = None if state is None or state.finished else state.fetch
        if state is None or fetch is None:
            return []
        return fetch.tick(now) + self._fetch_over(state)

    def _fetch_over(self, state: RoundState) -> list[SLEffect]:
        """After an input to the round's fetch: the model is delivered once complete (every
        chunk matched the ledger's root), the round fails here once the fetch has failed
        (the trainer keeps its weights and joins the next round)."""
        fetch = state.fetch
        assert fetch is not None
        if fetch.failure:
            reason = f"the merged model could not be fetched: {fetch.failure}"
            return [
                Log(f"round {state.number}: {reason}", "warning"),
                self.book.failed(state, reason),
            ]
        if not fetch.complete:
            return []
        root = fetch.root
        self.book.finish(state)
        state.merged_root, state.merged = root, fetch.buffer  # no copy: the fetch is over
        self.book.keep(
            state.contract, state.number, root, state.merged, fetch.layout, fetch.hashes()
        )
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

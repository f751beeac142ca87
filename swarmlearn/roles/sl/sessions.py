"""Trainer sessions in the SL round core (:mod:`swarmlearn.roles.sl.core`): queued weights,
a session that goes away, and refusals of a session's check-in.

Every contribution comes from a trainer *session* (a connection to the node's local
endpoint) and everything the core delivers about it names that session. When a session
ends, its queued weights are dropped and its rounds are marked *gone*: a round still open
has its check-in withdrawn on the ledger (``CheckOut``, resent until the ledger shows it out;
a check-in still on its way is withdrawn once it lands), then it is let go; a round that
closed with the check-in goes on without a listener (the other participants need these
weights). Weights of a new session of the same contract wait meanwhile, as queued weights
do, and their syncTimeout runs from the sync's start even while queued.
 A refusal of a check-in reaches its trainer at once: from the node's mempool
(:class:`~swarmlearn.consensus.tendermint.events.TxRefused`), or from the ledger when it
executes it (its outcome), unless it passes (the node still joining, the pool full, a replay):
then the check-in is resent.

:class:`RoundSessions` holds the queued weights (one contribution per contract) and starts
them, through the core's ``contribute``, once their contract's round has ended here.
"""

from __future__ import annotations

from collections.abc import Callable

from swarmlearn.consensus.ledger.rounds import RoundRecord, RoundStatus
from swarmlearn.consensus.ledger.txs import CheckOut
from swarmlearn.consensus.tendermint.events import TxRefused
from swarmlearn.roles.sl.messages import (
    Contribute,
    Progress,
    RoundFailed,
    SessionClosed,
    SLEffect,
    SubmitSigned,
)
from swarmlearn.roles.sl.state import RoundBook, RoundState
from swarmlearn.roles.sl.timers import GoneWait, QueuedTimeout
from swarmlearn.sansio import Deliver, Input, Log, Request, SetTimer, TimerFired

RESEND_S = 2.0
#: Refusals of a check-in that pass (the node is joining, the pool is full): it is resent.
PASSING_REFUSALS = ("already in the mempool", "mempool full", "is not a member")
#: How long a gone session's check-in, never seen on the ledger, is waited for.
GONE_WAIT_S = 30.0
WENT_AWAY = "its trainer went away"

#: The core's check-in of weights: (weights, now, when their trainer's sync started).
ContributeFn = Callable[[Contribute, float, float], list[SLEffect]]


class RoundSessions:
    """Sessions' claims: queued weights, gone sessions, refused check-ins."""

    def __init__(self, book: RoundBook, contribute: ContributeFn) -> None:
        self.book = book
        self.contribute = contribute
        self.queued: dict[str, Contribute] = {}  # the next weights, while a round runs
        self.queued_at: dict[str, float] = {}  # when their trainer's sync started

    def handle(self, event: Input, now: float) -> list[SLEffect]:
        match event:
            case Request(SessionClosed(session)):
                return self._session_closed(session, now)
            case Request(TxRefused(data, reason)):
                return self._tx_refused(data, reason)
            case TimerFired(GoneWait(contract, number)):
                return self._gone_timer(contract, number, now)
            case TimerFired(QueuedTimeout(contract, number, session)):
                return self._queued_expired(contract, number, session, now)
        return []

    def start_queued(self, now: float) -> list[SLEffect]:
        """Check in the queued weights of each contract whose round has ended here."""
        effects: list[SLEffect] = []
        for contract, queued in sorted(self.queued.items()):
            if not any(
                r.contract == contract and not r.finished for r in self.book.rounds.values()
            ):
                del self.queued[contract]
                effects += self.contribute(queued, now, self.queued_at.pop(contract, now))
        return effects

    def queue(self, c: Contribute, number: int, started: float, now: float) -> list[SLEffect]:
        """Hold ``c`` until round ``number`` of its contract ends here."""
        self.queued[c.contract], self.queued_at[c.contract] = c, started
        text = f"round {number} still running; next weights queued"
        effects: list[SLEffect] = [Deliver(Progress(c.contract, number, text, c.session))]
        if c.wait_s is not None:  # its syncTimeout runs while it waits here too
            left_s = max(0.0, c.wait_s - (now - started))
            effects.append(SetTimer(QueuedTimeout(c.contract, number, c.session), left_s))
        return effects

    def _queued_expired(
        self, contract: str, number: int, session: int, now: float
    ) -> list[SLEffect]:
        """A trainer's weights still queued behind the contract's running round at its
        syncTimeout: dropped, and the trainer told why (never a sync longer than it asked)."""
        queued = self.queued.get(contract)
        if queued is None or queued.session != session or queued.wait_s is None:
            return []
        if now - self.queued_at[contract] < queued.wait_s:
            return []  # newer weights of the same session, with their own timer
        del self.queued[contract], self.queued_at[contract]
        reason = (
            f"still queued behind round {number} at syncTimeout={queued.wait_s:g} s: this"
            " node's previous round of the contract has not ended"
        )
        return [Deliver(RoundFailed(contract, number + 1, reason, session=session))]

    def _session_closed(self, session: int, now: float) -> list[SLEffect]:
        """A trainer went away: drop its queued weights, withdraw its open check-ins (a round
        already exchanging goes on: the other participants need these weights)."""
        for contract, queued in sorted(self.queued.items()):
            if queued.session == session:
                del self.queued[contract], self.queued_at[contract]
        effects: list[SLEffect] = []
        for state in [s for _, s in sorted(self.book.rounds.items())]:
            if state.finished or state.contribution.session != session:
                continue
            state.gone_at = now
            record = self.book.record(state)
            if record is None or self.book.me not in record.participants:
                effects += self.gone_follow(state, record, now)
                tag = GoneWait(state.contract, state.number)
                effects.append(SetTimer(tag, GONE_WAIT_S))  # a check-in that never lands
        return effects + self.start_queued(now)

    def _gone_timer(self, contract: str, number: int, now: float) -> list[SLEffect]:
        state = self.book.rounds.get((contract, number))
        if state is None or state.finished or state.gone_at is None:
            return []
        record = self.book.record(state)
        if record is not None and self.book.me in record.participants:
            return []  # it goes on without a listener
        return self.gone_follow(state, record, now) + self.start_queued(now)

    def gone_follow(
        self, state: RoundState, record: RoundRecord | None, now: float
    ) -> list[SLEffect]:
        """A round whose session went away, still open (or its check-in on its way), or that
        went on without it: withdraw the check-in once the ledger shows it in the open round,
        then let the round go."""
        assert state.gone_at is not None
        open_ = record is not None and record.status == RoundStatus.OPEN
        mine = record.checkins.get(self.book.me) if record is not None and open_ else None
        if mine is not None and (mine.session, mine.root) == (
            state.contribution.session,
            state.root,
        ):
            if state.check_out and now - state.sent_at < RESEND_S:
                return []
            state.sent_at = now
            if not state.check_out:
                body = CheckOut(state.contract, state.number, state.contribution.session, WENT_AWAY)
                state.check_out = self.book.sign(body)
            return [SubmitSigned(state.check_out)]
        landed = self.book.app.outcome(state.check_in) is not None
        if not landed and now - state.gone_at < GONE_WAIT_S:
            return []  # on its way: withdrawn once it lands
        self.book.finish(state)
        del self.book.rounds[(state.contract, state.number)]
        return [Log(f"round {state.number}: check-in withdrawn: {WENT_AWAY}", "info")]

    def _tx_refused(self, data: bytes, reason: str) -> list[SLEffect]:
        """The node's mempool refused a transaction: if it is a round's check-in, and not for
        a passing reason, the round fails at once with the reason (the trainer hears it)."""
        found = [s for s in self.book.rounds.values() if s.check_in == data and not s.finished]
        if not found:
            return []
        if reason == "already committed":  # resent after it made a block: what did it do?
            outcome = self.book.app.outcome(data) or ""
            if not outcome.startswith("refused: "):
                return []
            reason = outcome.removeprefix("refused: ")
        if any(passing in reason for passing in PASSING_REFUSALS):
            return []
        return [self.book.failed(found[0], f"the ledger refuses it: {reason}", refused=True)]

    def refused_on_ledger(self, state: RoundState) -> str | None:
        """Why the ledger refused this round's check-in when it executed it (None: it did not,
        it has not yet, or for a passing reason)."""
        if not state.check_in:  # (a round state that was never checked in from here)
            return None
        outcome = self.book.app.outcome(state.check_in) or ""
        if not outcome.startswith("refused: "):
            return None
        reason = outcome.removeprefix("refused: ")
        passing = (*PASSING_REFUSALS, "already checked in", "is not open")
        return None if any(p in reason for p in passing) else reason

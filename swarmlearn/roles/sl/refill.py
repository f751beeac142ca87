"""How the SL round core (:mod:`swarmlearn.roles.sl.core`) gets its weights back for a new
attempt, after merged bytes were written over them in the trainer's handover file.

The node assembles the merged model in the trainer's handover file, over its own
contribution. When the ledger then starts a new attempt of the round (a participant died mid
exchange: the ledger re-plans with the survivors), the node has no weights left to send. If
its trainer said it can (``Contribute.refill``), the core asks it to write them into the file
again (:class:`NeedRefill`, answered with :class:`Refilled`), waits for that at most until the
attempt's deadline, checks the bytes against the chunk hashes it committed to (a mismatch
fails the round, with the chunk) and joins the attempt as usual. Meanwhile the core follows
the ledger no further: the file is the trainer's to write. A trainer that cannot refill: the
node sits the attempt out (the ledger plans the next one without it) and the round fails
here, the trainer told that its file holds a partial merge.
"""

from __future__ import annotations

from collections.abc import Callable

from swarmlearn.consensus.ledger.rounds import RoundRecord
from swarmlearn.merge.manifest import chunk_hashes
from swarmlearn.roles.sl.ends import DEADLINE_MARGIN_S
from swarmlearn.roles.sl.messages import NeedRefill, Refilled, SLEffect
from swarmlearn.roles.sl.state import RoundBook, RoundState
from swarmlearn.roles.sl.timers import RefillDeadline
from swarmlearn.sansio import Deliver, Input, Log, Request, SetTimer, TimerFired

#: The core's look at the ledger's record of a round (to join the attempt, once refilled).
FollowFn = Callable[[RoundState, float], list[SLEffect]]


class RoundRefill:
    """Refilling the contribution for a new attempt."""

    def __init__(self, book: RoundBook, follow: FollowFn) -> None:
        self.book = book
        self.follow = follow

    def handle(self, event: Input, now: float) -> list[SLEffect]:
        match event:
            case Request(Refilled() as refilled):
                return self._refilled(refilled, now)
            case TimerFired(RefillDeadline(contract, number, attempt)):
                return self._refill_expired(contract, number, attempt)
        return []

    def refill(self, state: RoundState, record: RoundRecord, now: float) -> list[SLEffect]:
        """A new attempt needs the weights merged over in an earlier one: ask the trainer to
        write them again, or (a trainer that cannot) sit the attempt out."""
        attempt = record.attempt
        if not state.contribution.refill:
            reason = f"attempt {attempt} needs the weights merged over in an earlier attempt"
            return [
                Log(f"round {state.number}: {reason}; sitting it out", "warning"),
                self.book.failed(state, reason),
            ]
        self.book.drop_file_views(state)  # the trainer is about to write the file: no views of it
        state.merged, state.merged_root, state.attempt = None, None, None
        state.refilling = attempt
        wait_s = max(0.0, record.deadline_ms / 1000 - now) + DEADLINE_MARGIN_S
        text = f"round {state.number}: attempt {attempt} needs this node's weights again"
        return [
            Deliver(NeedRefill(state.contract, state.number, attempt, state.contribution.session)),
            self.book.progress(state, f"{text}; asking the trainer to refill its handover file"),
            SetTimer(RefillDeadline(state.contract, state.number, attempt), wait_s),
        ]

    def _refilled(self, refilled: Refilled, now: float) -> list[SLEffect]:
        """The trainer wrote its weights again (or could not): check them, join the attempt."""
        state = self.book.rounds.get((refilled.contract, refilled.round))
        if state is None or state.finished or state.refilling is None:
            return []
        if refilled.session != state.contribution.session:
            return []  # another session's file: never the round's weights
        attempt, state.refilling = state.refilling, None
        if not refilled.ok:
            reason = f"attempt {attempt}: the trainer could not refill its weights: "
            return [self.book.failed(state, reason + refilled.reason)]
        c = state.contribution
        hashes = refilled.chunk_hashes
        if hashes is None or len(hashes) != c.layout.chunk_count:
            hashes = chunk_hashes(c.layout, c.flat)
        pairs = zip(hashes, state.manifest_hashes, strict=True)
        bad = [i for i, (a, b) in enumerate(pairs) if a != b]
        if bad:
            reason = (
                f"attempt {attempt}: the refilled weights are not the committed ones"
                f" (chunk {bad[0]} of {c.layout.chunk_count} differs)"
            )
            return [self.book.failed(state, reason)]
        state.overwritten = False
        text = f"round {state.number}: weights refilled and verified; joining attempt {attempt}"
        return [self.book.progress(state, text), *self.follow(state, now)]

    def _refill_expired(self, contract: str, number: int, attempt: int) -> list[SLEffect]:
        state = self.book.rounds.get((contract, number))
        if state is None or state.finished or state.refilling != attempt:
            return []
        state.refilling = None
        reason = f"attempt {attempt}: the trainer did not refill its weights by its deadline"
        return [self.book.failed(state, reason)]

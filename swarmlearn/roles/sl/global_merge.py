"""Global merge methods in a sync round (sans-IO): the owners' partial-sum exchange.

Theory of operation
-------------------
The geometric median and Krum need whole-model distances, but no node holds whole models:
owner i holds every participant's bytes of its range only (a ``RangeCollector``: N x range).
The plan of a global round splits no chunk (``plan_shards(..., "chunk")``), so an owner's
float pieces are exactly those of a whole-state merge. Per step:

1. each owner computes its rows (per float piece: N squared distances and two sums for the
   geometric median, the N(N-1)/2 pairwise squared distances for Krum;
   :class:`~swarmlearn.merge.sharded.GlobalSteps`) and sends them to every other
   participant (:class:`MergePartials`, a few KB);
2. each participant, once it holds every owner's rows of the step, folds them in owner order
   (then piece order) and runs the method's scalar side: the Weiszfeld weights of the next
   step or a stop (converged, stagnated, oscillating, iteration cap), or Krum's selection.
   Every participant folds the same numbers in the same order, so all decide alike, and the
   result equals the whole-state reference (:func:`swarmlearn.merge.merge`) bit for bit;
3. when the method is done each owner writes its range and the round goes on as for any
   method: merged pieces to all, the merged root to the ledger.

An owner is at most one step ahead of any other (step t + 1 needs everyone's rows of step t),
so a node keeps rows for its current step and the next one only; rows for other steps or
twice are dropped and counted (``partials_dropped``), unless this node asked their owner to
send them again (a lost row is asked for like a lost chunk, :mod:`~swarmlearn.roles.sl.repair`;
each owner keeps its own rows of its last two steps to answer): a resend that crossed a slow
original is dropped quietly. Rows no honest owner can send (the wrong
size for its range, negative or non-finite sums of squares) get their sender excluded on the
ledger, as a chunk unlike its commitment does (and count against it in the node's policing,
:class:`PeerFault`): the next attempt goes on without it. Rows that
are plausible but false cannot be told from true ones: every participant still folds the same
rows and ends with the same bytes, skewed by that owner's lie. A participant that never sends
its rows (nor resends them) stalls the attempt like a missing chunk: at the attempt's deadline
the node tells the ledger (which re-plans with the live participants or fails the round), and
its progress line names the step and the owners it waited for.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from swarmlearn.merge import RangeCollector
from swarmlearn.merge.methods import GeoMedian, Krum
from swarmlearn.merge.sharded import GlobalSteps, float_piece_count, geo_width, krum_width
from swarmlearn.merge.stream import aligned_buffer
from swarmlearn.roles.sl.messages import MergePartials, PeerFault, Progress, RoundPart, SLEffect
from swarmlearn.roles.sl.repair import RoundRepair
from swarmlearn.roles.sl.state import Attempt, RoundBook, RoundState
from swarmlearn.sansio import Deliver, Log, Metric, NodeId, Send

#: The core's next merge step of a round (here: once a step's rows are all in).
StepFn = Callable[[RoundState], list[SLEffect]]


def row_width(method: Any, participants: int) -> int:
    if isinstance(method, GeoMedian):
        return geo_width(participants)
    return krum_width(participants)


class RoundGlobal:
    """The partial-sum exchange of the rounds that merge with a global method."""

    def __init__(self, book: RoundBook, step: StepFn, repair: RoundRepair) -> None:
        self.book = book
        self.step = step
        self.repair = repair  # a lost row is asked for again (roles/sl/repair.py)
        self.partials_dropped = 0  # partial sums dropped as garbage

    def result(self, state: RoundState) -> tuple[list[SLEffect], memoryview | None]:
        """Run my steps as far as the rows at hand allow; my range's merged bytes when done."""
        attempt = state.attempt
        assert attempt is not None
        assert isinstance(attempt.merge, RangeCollector)
        effects: list[SLEffect] = []
        if attempt.steps is None:
            assert isinstance(attempt.method, GeoMedian | Krum)
            attempt.steps = GlobalSteps(attempt.merge.stack(), attempt.method)
            effects += self._share(state, attempt, 0, attempt.steps.start())
        steps = attempt.steps
        count = len(attempt.participants)
        while not steps.finished:
            got = attempt.partials.get(steps.step, {})
            if len(got) < count:
                return effects, None
            parts = [got[owner] for owner in range(count)]
            del attempt.partials[steps.step]
            rows = steps.advance(parts)
            if rows is not None:
                effects += self._share(state, attempt, steps.step, rows)
        shard = attempt.merge.shard
        out = aligned_buffer(shard.nbytes, shard.start_byte)
        steps.write(out)
        text = f"round {state.number}: {steps.method.name} over {count}: {steps.describe()}"
        attempt.partials.clear()
        attempt.steps = None  # (and with it the stack of every participant's chunks)
        return [*effects, Deliver(Progress(state.contract, state.number, text))], out

    def _share(self, state: RoundState, attempt: Attempt, step: int, rows: Any) -> list[SLEffect]:
        attempt.partials.setdefault(step, {})[attempt.me] = rows
        data = np.ascontiguousarray(rows, "<f8").tobytes()
        attempt.my_rows[step] = data  # kept for a peer that lost them (this step and the last)
        for old in [s for s in attempt.my_rows if s < step - 1]:
            del attempt.my_rows[old]
        message = MergePartials(state.contract, state.number, attempt.number, step, data)
        sends = [Send(peer, message) for peer in attempt.participants if peer != self.book.me]
        return [*sends, *self.repair.stepped(state)]

    def on_partials(self, sender: NodeId, m: MergePartials) -> list[SLEffect]:
        state = self.book.current(m.contract, m.round, m.attempt)
        attempt = None if state is None else state.attempt
        if state is None or attempt is None or sender not in attempt.participants:
            return []
        if attempt.me in attempt.pieces:  # my range is merged: the exchange is over
            return []
        if bad := self._malformed(state, attempt, sender, m):  # provably garbage: as a bad chunk
            self.partials_dropped += 1
            reason = f"its partial sums of step {m.step}: {bad}"
            return [
                *self.book.exclude(state, sender, reason),
                Metric("sl_partials_dropped", 1.0),
                Deliver(PeerFault(sender, f"round {state.number}: {reason}")),
            ]
        owner = attempt.participants.index(sender)
        mine = 0 if attempt.steps is None else attempt.steps.step
        if not mine <= m.step <= mine + 1 or owner in attempt.partials.get(m.step, {}):
            if m.step <= mine + 1 and self.repair.asked(attempt, owner, RoundPart.PARTIALS, m.step):
                return self.repair.duplicate()  # asked again, and the first came after all
            self.partials_dropped += 1  # stale, duplicated (the network may), or far ahead
            text = f"round {state.number}: dropped partial sums of step {m.step} from"
            return [
                Log(f"{text} {sender[:8]} (this node is at step {mine})", "warning"),
                Metric("sl_partials_dropped", 1.0),
            ]
        attempt.partials.setdefault(m.step, {})[owner] = np.frombuffer(m.rows, "<f8")
        if attempt.steps is None and not (attempt.merge is not None and attempt.merge.done):
            return []  # my range is not complete yet: the rows wait for my first step
        return self.step(state)

    def _malformed(
        self, state: RoundState, attempt: Attempt, sender: NodeId, m: MergePartials
    ) -> str:
        """Why these rows cannot come from an honest owner ('' when they can)."""
        if not isinstance(attempt.merge, RangeCollector) or attempt.plan is None:
            return f"round {state.number} merges with {attempt.method.name}, a local method"
        owner = attempt.participants.index(sender)
        width = row_width(attempt.method, len(attempt.participants))
        size = float_piece_count(attempt.plan.layout, attempt.plan.shards[owner]) * width * 8
        if len(m.rows) != size:
            return f"{len(m.rows)} bytes, its range's rows are {size}"
        rows = np.frombuffer(m.rows, "<f8")
        if not bool(np.all(np.isfinite(rows) & (rows >= 0))):
            return "negative or non-finite sums of squares"
        return ""

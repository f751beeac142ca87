"""Loss repair in a sync round's exchange (sans-IO): ask a peer again for what did not come.

Theory of operation
-------------------
An attempt sends each manifest, chunk, merged piece and partial-sum row once. A message can
be lost: a simulated lossy link drops some, and on real nodes a round lane that breaks
mid-send loses what it held. Unrepaired, one loss stalls the attempt until the ledger's
deadline rule re-plans it, and a 50-node round with 5% loss loses something in every
attempt. So each participant asks its peers for exactly what it lacks:

- **When.** The attempt's repair timer (:class:`~swarmlearn.roles.sl.timers.RepairDue`)
  first fires ``REPAIR_QUIET_S`` after the attempt starts. This node asks for what it lacks
  once the attempt has been quiet (no message of it from any participant) for
  ``REPAIR_QUIET_S``: while anything still arrives, what is missing may be on its way (a
  large model streams for a while, over a link shared by every sender), and an ask then
  would only send it twice. It asks again for a thing ``REPAIR_QUIET_S * 2**(k - 1)`` (at most
  ``REPAIR_BACKOFF_MAX_S``) after its ``k``-th ask for it (backoff), the attempt quiet again.
  The timer is set again for the earliest ask due. Partial sums are a few KB and a global
  method runs tens of steps within one deadline: for them the quiet and the backoff start at
  ``PARTIALS_QUIET_S``, and the timer is set that far each time this node begins a step.
- **What.** From each other participant: its manifest and its chunks of my range, while my
  range is not merged; the chunk cuts of its merged range that are missing here; a global
  method's partial sums of my current step. One :class:`ResendRound` per peer and part names
  exactly the chunk indexes, piece offsets or step. Each (peer, part, step) is asked at most
  ``ASK_TRIES`` times; when every ask is spent (or the peer answers that it cannot,
  :class:`ResendUnheld`) the attempt waits for its deadline, as it did without repair, and
  the node says so once in its log.
- **Answering.** A participant resends from what it still holds: its manifest; its chunks of
  the asker's range, unless merged bytes were written over them (in the trainer's handover
  file: a merged piece landed on them, or its own range's in-place merge folded over them),
  sent as copies when in that file (a piece may land there before the lane has sent them);
  its merged range once merged (an ask before that is ignored: the pieces go to every
  participant when ready); its partial sums of its last two steps (a few KB, kept for this).
  What it cannot send, or a round that ended here, gets :class:`ResendUnheld`.
- **Bounds.** Per attempt and asker a node serves at most ``ASKS_SERVED_MAX`` asks and resends
  at most one model's worth of bytes (``layout.total_bytes``; ``ASK_TRIES`` chunks when a
  model is smaller than that, so that a tiny model's lost resend can be resent); beyond, asks
  are dropped and counted (``asks_dropped``, metric ``sl_asks_dropped``), as are asks from a
  non-participant and asks naming more indexes than the model has chunks.
- **Duplicates.** A resend may cross an original that was only slow: a chunk, piece or
  partial sum that came already, from a peer this node asked for it, is dropped quietly and
  counted (``duplicates``, metric ``sl_resends_duplicate``); one it never asked for is handled
  as before (a chunk twice is the sender's protocol fault).

Deterministic: asks go in participant order with sorted indexes; the only clock is ``now``.
"""

from __future__ import annotations

from dataclasses import dataclass

from swarmlearn.merge import Layout
from swarmlearn.roles.sl.messages import (
    MergedPiece,
    MergePartials,
    ResendRound,
    ResendUnheld,
    RoundChunk,
    RoundManifest,
    RoundPart,
    SLEffect,
    chunk_cuts,
)
from swarmlearn.roles.sl.state import Attempt, AttemptRepair, RoundBook, RoundState
from swarmlearn.roles.sl.timers import RepairDue
from swarmlearn.sansio import Input, Log, Metric, NodeId, Receive, Send, SetTimer, TimerFired

#: Quiet (no message of the attempt) this long before this node asks for what it lacks.
REPAIR_QUIET_S = 1.0
#: ... for a global method's partial sums (small, and tens of steps per attempt).
PARTIALS_QUIET_S = 0.05
#: The backoff between asks without progress doubles up to this.
REPAIR_BACKOFF_MAX_S = 2.0
#: Asks per (peer, part, step) and attempt, at most.
ASK_TRIES = 8
#: Asks one asker may have served per attempt (every part and step together).
ASKS_SERVED_MAX = 128

MANIFEST, CHUNKS, PIECES, PARTIALS = (
    RoundPart.MANIFEST,
    RoundPart.CHUNKS,
    RoundPart.PIECES,
    RoundPart.PARTIALS,
)
_NAMES = {MANIFEST: "manifest", CHUNKS: "chunks", PIECES: "merged pieces", PARTIALS: "partial sums"}


@dataclass(frozen=True)
class Lack:
    """What this node lacks of one peer's part of the attempt."""

    peer: int  # the peer's participant index
    part: RoundPart
    step: int  # a global method's step (PARTIALS), else 0
    indexes: tuple[int, ...]

    @property
    def key(self) -> tuple[int, RoundPart, int]:
        return (self.peer, self.part, self.step)


class RoundRepair:
    """Asks for what an attempt lacks, and answers peers' asks, over the core's book."""

    def __init__(self, book: RoundBook) -> None:
        self.book = book
        self.asks_sent = 0
        self.resent = 0  # messages resent to askers
        self.asks_dropped = 0  # asks over the bounds, or from non-participants
        self.duplicates = 0  # resent messages that came twice

    def start(self, state: RoundState, now: float) -> list[SLEffect]:
        """The attempt began: its repair timer."""
        attempt = state.attempt
        assert attempt is not None
        attempt.repair.heard_at = now
        return [SetTimer(RepairDue(state.contract, state.number, attempt.number), REPAIR_QUIET_S)]

    def stepped(self, state: RoundState) -> list[SLEffect]:
        """This node began a global method's step: look for lost rows soon."""
        assert state.attempt is not None
        tag = RepairDue(state.contract, state.number, state.attempt.number)
        return [] if state.attempt.repair.given_up else [SetTimer(tag, PARTIALS_QUIET_S)]

    def heard(self, sender: NodeId, contract: str, number: int, attempt: int, now: float) -> None:
        """A message of this attempt came from one of its participants: progress (not yet
        quiet)."""
        state = self.book.current(contract, number, attempt)
        if state is None or state.attempt is None or sender not in state.attempt.participants:
            return
        state.attempt.repair.heard_at = now

    def asked(self, attempt: Attempt, participant: int, part: RoundPart, step: int = 0) -> bool:
        """This node asked ``participant`` to resend ``part`` (so it may come twice)."""
        return (participant, part, step) in attempt.repair.asked

    def duplicate(self) -> list[SLEffect]:
        """A resent message that came already: dropped, counted."""
        self.duplicates += 1
        return [Metric("sl_resends_duplicate", 1.0)]

    def handle(self, event: Input, now: float) -> list[SLEffect]:
        match event:
            case TimerFired(RepairDue(contract, number, attempt)):
                return self._due(contract, number, attempt, now)
            case Receive(sender, ResendRound() as ask):
                return self._serve(sender, ask)
            case Receive(sender, ResendUnheld() as answer):
                return self._unheld(sender, answer)
        return []

    # ------------------------------------------------------------ asking

    def lacks(self, state: RoundState) -> list[Lack]:
        """What this node still lacks of the attempt, by peer (in participant order)."""
        attempt = state.attempt
        assert attempt is not None
        assert attempt.plan is not None
        layout, plan = state.contribution.layout, attempt.plan
        merging = attempt.merge is not None and not attempt.merge.done
        mine = plan.shards[attempt.me].chunks(layout) if merging else []
        steps = None if attempt.steps is None or attempt.steps.finished else attempt.steps
        lacks: list[Lack] = []
        for peer in range(len(attempt.participants)):
            if peer == attempt.me:
                continue
            if mine and peer not in attempt.manifests:
                lacks.append(Lack(peer, MANIFEST, 0, ()))
            missing = tuple(c for c in mine if (peer, c) not in attempt.chunks_in)
            if missing:
                lacks.append(Lack(peer, CHUNKS, 0, missing))
            if peer not in attempt.pieces:
                shard, got = plan.shards[peer], attempt.cuts_in.get(peer, set())
                cuts = chunk_cuts(layout, shard.start_byte, shard.stop_byte)
                lacks.append(Lack(peer, PIECES, 0, tuple(c for c, _ in cuts if c not in got)))
            if steps is not None and peer not in attempt.partials.get(steps.step, {}):
                lacks.append(Lack(peer, PARTIALS, steps.step, (steps.step,)))
        return lacks

    def _due(self, contract: str, number: int, attempt_number: int, now: float) -> list[SLEffect]:
        state = self.book.current(contract, number, attempt_number)
        attempt = None if state is None else state.attempt
        if state is None or attempt is None or state.finished or attempt.plan is None:
            return []
        if attempt.repair.given_up:
            return []
        lacks = self.lacks(state)
        if not lacks:
            return []  # everything came: nothing to repair
        repair, tag = attempt.repair, RepairDue(contract, number, attempt_number)
        left = [k for k in lacks if repair.asked.get(k.key, 0) < ASK_TRIES]
        left = [k for k in left if k.key not in repair.unheld]
        if not left:
            repair.given_up = True
            named = [f"{_NAMES[k.part]} from {attempt.participants[k.peer][:8]}" for k in lacks]
            text = ", ".join(named[:4]) + (f" and {len(named) - 4} more" if len(named) > 4 else "")
            return [
                Log(
                    f"round {number}: attempt {attempt_number} still lacks {text}; no more"
                    f" asks ({ASK_TRIES} each at most): waiting for its deadline",
                    "warning",
                )
            ]
        effects: list[SLEffect] = []
        for lack in [k for k in left if self._due_at(repair, k) - now <= 1e-9]:
            repair.asked[lack.key] = repair.asked.get(lack.key, 0) + 1
            repair.asked_at[lack.key] = now
            ask = ResendRound(contract, number, attempt_number, lack.part, lack.indexes)
            effects.append(Send(attempt.participants[lack.peer], ask))
            self.asks_sent += 1
        next_s = min(self._due_at(repair, k) for k in left) - now
        return [*effects, SetTimer(tag, max(next_s, 0.0))]

    def _due_at(self, repair: AttemptRepair, lack: Lack) -> float:
        """When this node may ask for ``lack``: the attempt quiet a while, past the backoff."""
        heard = repair.heard_at
        tries = repair.asked.get(lack.key, 0)
        quiet_s = PARTIALS_QUIET_S if lack.part == PARTIALS else REPAIR_QUIET_S
        if not tries:
            return heard + quiet_s
        backoff_s = min(quiet_s * 2.0 ** (tries - 1), REPAIR_BACKOFF_MAX_S)
        return max(heard + quiet_s, repair.asked_at[lack.key] + backoff_s)

    def _unheld(self, sender: NodeId, answer: ResendUnheld) -> list[SLEffect]:
        """The peer cannot resend what this node asked for: ask it no more."""
        state = self.book.current(answer.contract, answer.round, answer.attempt)
        attempt = None if state is None else state.attempt
        if state is None or attempt is None or sender not in attempt.participants:
            return []
        peer = attempt.participants.index(sender)
        step = answer.indexes[0] if answer.what == PARTIALS and answer.indexes else 0
        key = (peer, answer.what, step)
        if key not in attempt.repair.asked or key in attempt.repair.unheld:
            return []
        attempt.repair.unheld.add(key)
        return [
            Log(
                f"round {state.number}: {sender[:8]} no longer holds its {_NAMES[answer.what]}"
                f" of attempt {attempt.number}; the attempt waits for its deadline",
                "info",
            )
        ]

    # ------------------------------------------------------------ answering

    def _serve(self, sender: NodeId, ask: ResendRound) -> list[SLEffect]:
        """Resend what ``sender`` asks for, within the bounds (see the module's docstring)."""
        state = self.book.current(ask.contract, ask.round, ask.attempt)
        attempt = None if state is None else state.attempt
        if state is None or attempt is None or attempt.plan is None:
            return []  # an attempt not running here (it begins later, or ended; -1: a fetch)
        layout = state.contribution.layout
        served = attempt.repair.asks_from.get(sender, 0)
        if (
            sender not in attempt.participants
            or sender == self.book.me
            or served >= ASKS_SERVED_MAX
            or len(ask.indexes) > layout.chunk_count + 1
        ):
            return self._dropped(state, sender, "asks past the bound, or malformed")
        attempt.repair.asks_from[sender] = served + 1
        if state.finished:  # its weights let go, its model delivered (fetched from the ledger's)
            return [Send(sender, ResendUnheld(*_about(ask), ask.what, ask.indexes))]
        sends, unheld = self._resends(state, attempt, sender, ask)
        effects: list[SLEffect] = []
        for send in sends:
            size = _size(send.message)
            if attempt.repair.sent_to.get(sender, 0) + size > resend_bytes_max(layout):
                return effects + self._dropped(state, sender, "one model's worth resent already")
            attempt.repair.sent_to[sender] = attempt.repair.sent_to.get(sender, 0) + size
            effects.append(send)
            self.resent += 1
        if unheld:
            effects.append(Send(sender, ResendUnheld(*_about(ask), ask.what, tuple(unheld))))
        return effects

    def _dropped(self, state: RoundState, sender: NodeId, why: str) -> list[SLEffect]:
        self.asks_dropped += 1
        return [
            Log(f"round {state.number}: dropped an ask from {sender[:8]}: {why}", "debug"),
            Metric("sl_asks_dropped", 1.0),
        ]

    def _resends(
        self, state: RoundState, attempt: Attempt, sender: NodeId, ask: ResendRound
    ) -> tuple[list[Send], list[int]]:
        """The messages that answer ``ask``, and the indexes this node cannot answer."""
        contract, number, a = _about(ask)
        layout = state.contribution.layout
        assert attempt.plan is not None
        if ask.what == MANIFEST:
            return [Send(sender, RoundManifest(contract, number, a, state.manifest_hashes))], []
        if ask.what == CHUNKS:
            theirs = set(attempt.plan.shards[attempt.participants.index(sender)].chunks(layout))
            sends, unheld = [], []
            for chunk in sorted(set(ask.indexes)):
                if chunk not in theirs or not self._intact(state, attempt, chunk):
                    unheld.append(chunk)
                    continue
                start, stop = layout.chunk_span(chunk)
                data = memoryview(state.contribution.flat)[start:stop]
                payload = bytes(data) if attempt.in_file else data  # (the file changes under it)
                sends.append(Send(sender, RoundChunk(contract, number, a, chunk, payload)))
            return sends, unheld
        if ask.what == PIECES:
            if attempt.me not in attempt.pieces:
                return [], []  # not merged yet: the pieces go to everyone when they are
            shard = attempt.plan.shards[attempt.me]
            cuts = dict(chunk_cuts(layout, shard.start_byte, shard.stop_byte))
            view = memoryview(attempt.merged)
            sends, unheld = [], []
            for start in sorted(set(ask.indexes)):
                if start not in cuts:
                    unheld.append(start)
                    continue
                piece = MergedPiece(contract, number, a, start, view[start : cuts[start]])
                sends.append(Send(sender, piece))
            return sends, unheld
        # PARTIALS: my rows of a step; a step I have not reached yet comes when I do
        if len(ask.indexes) != 1:
            return [], list(ask.indexes)
        step = ask.indexes[0]
        if step in attempt.my_rows:
            rows = attempt.my_rows[step]
            return [Send(sender, MergePartials(contract, number, a, step, rows))], []
        ahead = attempt.me not in attempt.pieces and (
            attempt.steps is None or step > attempt.steps.step
        )
        if ahead:
            return [], []
        return [], [step]

    def _intact(self, state: RoundState, attempt: Attempt, chunk: int) -> bool:
        """My weights' chunk ``chunk`` is still as committed: in the trainer's handover file,
        no merged bytes were written over it."""
        if not attempt.in_file:
            return True  # a buffer of the trainer's that the round never writes
        if chunk in attempt.written:
            return False  # a merged piece landed on it
        if attempt.merge_in_place and attempt.plan is not None:
            mine = attempt.plan.shards[attempt.me]
            start, stop = state.contribution.layout.chunk_span(chunk)
            if start < mine.stop_byte and mine.start_byte < stop:
                return chunk in attempt.own_pending  # my range's folds write over it
        return True


def resend_bytes_max(layout: Layout) -> int:
    """Bytes resent to one asker per attempt, at most: one model's worth (or ``ASK_TRIES``
    chunks, for a model smaller than that)."""
    return max(layout.total_bytes, ASK_TRIES * layout.chunk_bytes)


def _about(ask: ResendRound) -> tuple[str, int, int]:
    return ask.contract, ask.round, ask.attempt


def _size(message: object) -> int:
    if isinstance(message, RoundManifest):
        return 32 * len(message.chunk_hashes)
    if isinstance(message, MergePartials):
        return len(message.rows)
    data = getattr(message, "data", b"")
    return len(data)

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
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from swarmlearn.consensus.ledger.app import SwarmApp
from swarmlearn.consensus.ledger.rounds import RoundRecord, RoundStatus
from swarmlearn.consensus.ledger.txs import CheckOut, Exclude, Heartbeat
from swarmlearn.merge import build_manifest
from swarmlearn.roles.sl.merged import KeptModels
from swarmlearn.roles.sl.messages import (
    FetchMerged,
    MergedPiece,
    MergedUnavailable,
    Progress,
    RoundDone,
    RoundFailed,
    SLEffect,
    SubmitSigned,
)
from swarmlearn.roles.sl.state import (
    Attempt,
    EarlyMessages,
    MergedFetch,
    RoundState,
    global_waiting,
)
from swarmlearn.sansio import Deliver, Log, NodeId, Send, SetTimer

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
    """The ends of rounds; the base of :class:`~swarmlearn.roles.sl.core.SLRoundCore`."""

    me: NodeId
    app: SwarmApp
    sign: Any
    rounds: dict[tuple[str, int], RoundState]
    kept: KeptModels
    early: EarlyMessages

    def _record(self, state: RoundState) -> RoundRecord | None:
        contract = self.app.state.contracts.get(state.contract)
        return None if contract is None else contract.rounds.get(state.number)

    def _done(self, state: RoundState, record: RoundRecord) -> list[SLEffect]:
        assert record.merged_root is not None
        if state.merged_root == record.merged_root and state.merged is not None:
            flat = state.merged
            wanted = state.contract in self.kept.wanted  # a peer (a late joiner) asked for it
            if isinstance(flat, memoryview) and (
                wanted or not self.kept.settled(self.app, state.contract, state.number)
            ):
                # A dissenting or silent participant (or a late joiner) will fetch it, and the
                # trainer is about to write its next weights over this file: a copy.
                self._keep(state.contract, state.number, record.merged_root, bytearray(flat))
            self.kept.wanted.discard(state.contract)
            self._finish(state)
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
        sources = tuple(p for p in agreed + others if p != self.me)
        if not sources:
            return [self._failed(state, "no peer holds the merged model")]
        self._drop_file_views(state)
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
            return [Log(f"round {state.number}: {reason}", "warning"), self._failed(state, reason)]
        fetch.source = fetch.sources[fetch.tries % len(fetch.sources)]
        fetch.tries += 1
        fetch.seen = attempt.bytes_from[-1] = 0
        tag = ("sl-fetch", state.contract, state.number, fetch.tries)
        text = (
            f"round {state.number}: fetching the merged model from {fetch.source[:8]}"
            f" (try {fetch.tries}/{FETCH_TRIES})"
        )
        return [
            Send(fetch.source, FetchMerged(state.contract, state.number)),
            SetTimer(tag, FETCH_STALL_S),
            self._progress(state, text),
        ]

    def _fetch_unavailable(self, sender: NodeId, m: MergedUnavailable) -> list[SLEffect]:
        """The peer asked holds the model no more: the next one, after a backoff."""
        state = self.rounds.get((m.contract, m.round))
        fetch = None if state is None or state.finished else state.fetch
        if state is None or fetch is None or sender != fetch.source:
            return []
        fetch.source = ""  # its stall timer drops out
        if fetch.tries >= FETCH_TRIES:
            return self._fetch_next(state)  # the last try: the round fails now
        backoff_s = FETCH_BACKOFF_S * 2 ** (fetch.tries - 1)
        return [SetTimer(("sl-fetch", m.contract, m.round, fetch.tries), backoff_s)]

    def _fetch_timer(self, contract: str, number: int, tries: int) -> list[SLEffect]:
        """A try's stall timer (nothing came for ``FETCH_STALL_S``) or its backoff ended."""
        state = self.rounds.get((contract, number))
        fetch = None if state is None or state.finished else state.fetch
        if state is None or fetch is None or tries != fetch.tries or state.attempt is None:
            return []
        got = state.attempt.bytes_from.get(-1, 0)
        if fetch.source and got > fetch.seen:  # still coming
            fetch.seen = got
            return [SetTimer(("sl-fetch", contract, number, tries), FETCH_STALL_S)]
        if fetch.source:
            text = f"round {number}: {fetch.source[:8]} sent none of the merged model in time"
            return [Log(text, "warning"), *self._fetch_next(state)]
        return self._fetch_next(state)

    def _fetched(self, sender: NodeId, state: RoundState, p: MergedPiece) -> list[SLEffect]:
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
        record = self._record(state)
        root = build_manifest(state.contribution.layout, attempt.merged).root
        if record is None or root != record.merged_root:
            text = f"round {state.number}: the model from {sender[:8]} does not match the ledger"
            return [Log(text, "warning"), *self._fetch_next(state)]
        self._finish(state)
        state.merged_root, state.merged = root, attempt.merged  # no copy: the attempt is over
        self._keep(state.contract, state.number, root, state.merged)
        record = self._record(state)
        over = record is not None and record.all_final
        count = 0 if record is None else len(record.participants)
        session = state.contribution.session
        done = RoundDone(state.contract, state.number, root, state.merged, over, count, session)
        return [Deliver(done)]

    def _keep(self, contract: str, number: int, root: bytes, flat: bytearray | memoryview) -> None:
        self.kept.keep(contract, number, root, flat, self.rounds)

    def _finish(self, state: RoundState) -> None:
        """The round is over: let go of the trainer's weights (a view of its handover file,
        which must not stay mapped for a round that needs it no more)."""
        state.finished = True
        state.contribution = replace(state.contribution, flat=b"")
        self._drop_file_views(state)
        self.early.drop_through(state.contract, state.number)

    def _drop_file_views(self, state: RoundState) -> None:
        """Forget every view of the trainer's handover file this round holds: the trainer
        writes its next weights there once it hears the outcome."""
        if state.attempt is not None and state.attempt.in_file:
            state.attempt = None
        if isinstance(state.merged, memoryview):
            state.merged = None
        kept = self.kept.kept.get((state.contract, state.number))
        if kept is not None and isinstance(kept[1], memoryview):
            del self.kept.kept[(state.contract, state.number)]

    def _failed(self, state: RoundState, reason: str, *, refused: bool = False) -> Deliver:
        """The round failed for this node: the trainer keeps its own weights (and hears
        whether its handover file was written over: it then holds no one's weights; and
        whether the ledger refused its check-in)."""
        self._finish(state)
        if state.overwritten:
            reason += " (the handover file holds a partial merge: keep your own weights)"
        session = state.contribution.session
        failed = RoundFailed(
            state.contract, state.number, reason, state.overwritten, session, refused
        )
        return Deliver(failed)

    def _refusal(self, state: RoundState, record: RoundRecord | None) -> str | None:
        """Why the ledger refuses this round's check-in whenever it is sent (a model or merge
        method other than the one it took first, from a check-in that won the race), or
        None: then a refusal was passing (not a member yet) and the check-in is resent."""
        c = state.contribution
        problem = self.app.check_in_problem(state.contract, c.merge_method, state.specs)
        if problem is None and record is not None and record.merge_method != c.merge_method:
            problem = f"merge method {c.merge_method!r}; the round's is {record.merge_method!r}"
        return problem

    def _waiting(self, contract: str, number: int, now: float, *, expired: bool) -> list[SLEffect]:
        """The round is still open, short of minPeers: say so every ``WAIT_PROGRESS_S``, and
        at the trainer's syncTimeout fail it and withdraw its check-in (a round left with
        none is abandoned on the ledger; the trainer's next weights open a fresh one)."""
        state = self.rounds.get((contract, number))
        if state is None or state.finished:
            return []
        record = self._record(state)
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
                *self._check_out(state, record, "syncTimeout passed"),
                self._failed(state, reason),
            ]
        waited_s = round(now - state.contributed_at)
        text = f"round {number}: {have}/{need} checked in, waiting for minPeers={need}"
        text += f" ({waited_s:g} s)"
        effects: list[SLEffect] = [
            self._progress(state, text),
            SetTimer(("sl-wait", contract, number, 0), WAIT_PROGRESS_S),
        ]
        if record is not None and any(
            c.expires_ms is not None and c.expires_ms <= now * 1000
            for c in record.checkins.values()
        ):  # a check-in whose node is gone expired: a block runs the ledger's expiry rule
            beat = Heartbeat(contract, number, 0, int(now * 1000))
            effects.append(SubmitSigned(self.sign(beat)))
        return effects

    def _check_out(
        self, state: RoundState, record: RoundRecord | None, reason: str
    ) -> list[SLEffect]:
        """Withdraw this node's check-in from the open round when it is this session's."""
        mine = None if record is None else record.checkins.get(self.me)
        session = state.contribution.session
        if record is None or record.status != RoundStatus.OPEN or mine is None:
            return []
        if mine.session != session or mine.root != state.root:
            return []
        withdraw = CheckOut(state.contract, state.number, session, reason)
        return [SubmitSigned(self.sign(withdraw))]

    def _missed(self, state: RoundState, record: RoundRecord | None) -> bool:
        """This contribution belongs to a later round than ``state.number``."""
        contract = self.app.state.contracts.get(state.contract)
        if contract is None or contract.next_round_number() == state.number:
            return False
        if record is not None and self.me in record.checkins:
            # Mine, unless it is a check-in from before a restart, with other weights.
            return record.checkins[self.me].root != state.root
        return record is None or record.status != RoundStatus.OPEN

    def _progress(self, state: RoundState, text: str) -> Deliver:
        state.last_progress = text
        return Deliver(Progress(state.contract, state.number, text, state.contribution.session))

    def _current(self, contract: str, number: int, attempt: int) -> RoundState | None:
        state = self.rounds.get((contract, number))
        if state is None or state.attempt is None or state.attempt.number != attempt:
            return None
        return state

    def _exclude(self, state: RoundState, culprit: str, reason: str) -> list[SLEffect]:
        attempt = state.attempt
        assert attempt is not None
        report = Exclude(
            state.contract, state.number, attempt.number, culprit, reason, state.generation
        )
        return [
            SubmitSigned(self.sign(report)),
            Log(f"round {state.number}: excluding {culprit[:8]}: {reason}", "warning"),
        ]

    def _beat(self, kind: str, contract: str, number: int, a: int, now: float) -> list[SLEffect]:
        """A heartbeat: ``sl-tick`` while the round is closing, ``sl-alive`` halfway through
        an attempt (the ledger plans a next attempt with the nodes that said so)."""
        state = self.rounds.get((contract, number))
        if state is None or state.finished or state.merged_root is not None:
            return []
        if (state.attempt is None) != (kind == "sl-tick"):
            return []  # a tick waits for the round to close; alive, in an attempt
        if kind == "sl-alive" and self._current(contract, number, a) is None:
            return []
        return [SubmitSigned(self.sign(Heartbeat(contract, number, a, int(now * 1000))))]

    def _deadline(self, contract: str, number: int, attempt: int, now: float) -> list[SLEffect]:
        state = self._current(contract, number, attempt)
        if state is None or state.finished:
            return []
        beat = Heartbeat(contract, number, attempt, int(now * 1000))
        return [
            SubmitSigned(self.sign(beat)),
            self._progress(
                state,
                f"round {number}: attempt {attempt} past its deadline"
                + (global_waiting(state.attempt) if state.attempt else ""),
            ),
        ]

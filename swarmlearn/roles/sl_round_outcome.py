"""How the SL round core (:mod:`swarmlearn.roles.sl_round`) ends a round: delivers the
merged model the ledger settled on, or fetches it from a peer, or says why the round failed;
and how it ends an attempt (excluding a participant, or telling the ledger its deadline
passed).

When the ledger holds the round DONE with a root, a participant whose merged bytes have that
root delivers them to the trainer (:class:`RoundDone`); one that lacks them (late, restarted,
dissenting) sends ``FetchMerged`` to a participant that agreed, takes the pieces into a new
buffer and delivers them only if their manifest root is the ledger's. Either way the model is
kept to serve other fetchers (:class:`~swarmlearn.roles.sl_round_merged.KeptModels`). Ending a
round lets go of the trainer's weights (a view of its handover file).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from swarmlearn.consensus.swarm_app import SwarmApp
from swarmlearn.consensus.swarm_rounds import RoundRecord
from swarmlearn.consensus.swarm_txs import Exclude, Heartbeat
from swarmlearn.merge import build_manifest
from swarmlearn.roles.sl_messages import (
    FetchMerged,
    MergedPiece,
    Progress,
    RoundDone,
    RoundFailed,
    SLEffect,
    SubmitSigned,
)
from swarmlearn.roles.sl_round_merged import KeptModels
from swarmlearn.roles.sl_round_state import Attempt, RoundState
from swarmlearn.sansio import Deliver, Log, NodeId, Send


class RoundEnds:
    """The ends of rounds; the base of :class:`~swarmlearn.roles.sl_round.SLRoundCore`."""

    me: NodeId
    app: SwarmApp
    sign: Any
    rounds: dict[tuple[str, int], RoundState]
    kept: KeptModels

    def _record(self, state: RoundState) -> RoundRecord | None:
        contract = self.app.state.contracts.get(state.contract)
        return None if contract is None else contract.rounds.get(state.number)

    def _done(self, state: RoundState, record: RoundRecord) -> list[SLEffect]:
        assert record.merged_root is not None
        if state.merged_root == record.merged_root and state.merged is not None:
            self._finish(state)
            done = RoundDone(
                state.contract,
                state.number,
                record.merged_root,
                state.merged,
                record.all_final,
                len(record.participants),
            )
            return [Deliver(done)]
        sources = [p for p in record.participants if p not in record.dissenters and p != self.me]
        if not sources:
            self._finish(state)
            return [
                Deliver(RoundFailed(state.contract, state.number, "no peer holds the merged model"))
            ]
        state.merged = None
        state.attempt = Attempt(
            -1,
            record.participants,
            -1,
            None,
            merged=bytearray(state.contribution.layout.total_bytes),
        )
        return [
            Send(sources[0], FetchMerged(state.contract, state.number)),
            self._progress(state, f"round {state.number}: fetching the merged model"),
        ]

    def _fetched(self, state: RoundState, p: MergedPiece) -> list[SLEffect]:
        attempt = state.attempt
        if attempt is None or attempt.number != -1 or state.finished:
            return []
        if not 0 <= p.start <= len(attempt.merged) - len(p.data):
            return [Log(f"round {state.number}: a fetched piece outside the model", "warning")]
        attempt.merged[p.start : p.start + len(p.data)] = p.data
        attempt.bytes_from[-1] = attempt.bytes_from.get(-1, 0) + len(p.data)
        if attempt.bytes_from[-1] < len(attempt.merged):
            return []
        record = self._record(state)
        root = build_manifest(state.contribution.layout, attempt.merged).root
        if record is None or root != record.merged_root:
            self._finish(state)
            return [
                Deliver(
                    RoundFailed(
                        state.contract, state.number, "the fetched model does not match the ledger"
                    )
                )
            ]
        self._finish(state)
        state.merged_root, state.merged = root, attempt.merged  # no copy: the attempt is over
        self._keep(state.contract, state.number, root, state.merged)
        record = self._record(state)
        over = record is not None and record.all_final
        count = 0 if record is None else len(record.participants)
        return [Deliver(RoundDone(state.contract, state.number, root, state.merged, over, count))]

    def _keep(self, contract: str, number: int, root: bytes, flat: bytearray | memoryview) -> None:
        self.kept.keep(contract, number, root, flat, self.rounds)

    def _finish(self, state: RoundState) -> None:
        """The round is over: let go of the trainer's weights (a view of its handover file,
        which must not stay mapped for a round that needs it no more)."""
        state.finished = True
        state.contribution = replace(state.contribution, flat=b"")

    def _progress(self, state: RoundState, text: str) -> Deliver:
        state.last_progress = text
        return Deliver(Progress(state.contract, state.number, text))

    def _current(self, contract: str, number: int, attempt: int) -> RoundState | None:
        state = self.rounds.get((contract, number))
        if state is None or state.attempt is None or state.attempt.number != attempt:
            return None
        return state

    def _exclude(self, state: RoundState, culprit: str, reason: str) -> list[SLEffect]:
        attempt = state.attempt
        assert attempt is not None
        report = Exclude(state.contract, state.number, attempt.number, culprit, reason)
        return [
            SubmitSigned(self.sign(report)),
            Log(f"round {state.number}: excluding {culprit[:8]}: {reason}", "warning"),
        ]

    def _deadline(self, contract: str, number: int, attempt: int, now: float) -> list[SLEffect]:
        state = self._current(contract, number, attempt)
        if state is None or state.finished:
            return []
        beat = Heartbeat(contract, number, attempt, int(now * 1000))
        return [
            SubmitSigned(self.sign(beat)),
            self._progress(state, f"round {number}: attempt {attempt} past its deadline"),
        ]

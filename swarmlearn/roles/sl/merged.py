"""Merged models a node keeps after a round, to serve peers that fetch them.

A participant that lacks the merged model the ledger settled on (late, restarted, dissenting)
sends ``FetchMerged``; a node that holds that round's model answers with 4 MiB
``MergedPiece`` messages (attempt ``-1``), and the fetcher verifies the whole model against the
ledger's root (:mod:`swarmlearn.roles.sl.core`). Only the latest ``KEPT_ROUNDS`` rounds per
contract are kept, and one whose every participant reported the ledger's root is freed before
the next round assembles its model (peak memory: one merged model); one merged in a
trainer's handover file is not kept at all then (the trainer writes its next weights there).
A node asked for a model it does not hold answers ``MergedUnavailable`` and remembers the
contract as *wanted*: it keeps a copy of the contract's next merged model, whatever its
participants reported, for the asker (a late joiner, :mod:`swarmlearn.roles.sl.latest`).
"""

from __future__ import annotations

from swarmlearn.consensus.ledger.app import SwarmApp
from swarmlearn.consensus.ledger.rounds import RoundStatus
from swarmlearn.roles.sl.messages import FetchMerged, MergedPiece, MergedUnavailable, SLEffect
from swarmlearn.sansio import NodeId, Send

KEPT_ROUNDS = 2  # merged models kept per contract, for peers that fetch them
SERVE_PIECE_BYTES = 4 * 1024 * 1024

Flat = bytearray | memoryview


class KeptModels:
    """The merged models of the latest rounds, by (contract, round number)."""

    def __init__(self) -> None:
        self.kept: dict[tuple[str, int], tuple[bytes, Flat]] = {}
        self.wanted: set[str] = set()  # contracts whose next model a peer asked for in vain

    def keep(self, contract: str, number: int, root: bytes, flat: Flat) -> None:
        """Serve ``flat`` to peers that fetch it; older rounds' models are let go."""
        self.kept[(contract, number)] = (root, flat)
        mine = sorted(n for c, n in self.kept if c == contract)
        for old in mine[:-KEPT_ROUNDS]:
            del self.kept[(contract, old)]

    def settled(self, app: SwarmApp, contract: str, number: int) -> bool:
        """Every participant of the round reported the root the ledger holds: none of them
        will ask for the model."""
        found = app.state.contracts.get(contract)
        record = None if found is None else found.rounds.get(number)
        return (
            record is not None
            and record.status == RoundStatus.DONE
            and not record.dissenters
            and all(record.merged.get(p) == record.merged_root for p in record.participants)
        )

    def release_settled(self, app: SwarmApp, contract: str, number: int) -> list[tuple[str, int]]:
        """Before round ``number`` assembles a merged model, free the kept ones of earlier
        rounds that no participant can still need; the rounds freed."""
        freed = [
            key
            for key in self.kept
            if key[0] == contract and key[1] < number and self.settled(app, contract, key[1])
        ]
        for key in freed:
            del self.kept[key]
        return freed

    def serve(self, sender: NodeId, fetch: FetchMerged) -> list[SLEffect]:
        """Answer a peer's ``FetchMerged``: the model in pieces, or ``MergedUnavailable``."""
        contract, number = fetch.contract, fetch.round
        kept = self.kept.get((contract, number))
        if kept is None:
            self.wanted.add(contract)
            return [Send(sender, MergedUnavailable(contract, number))]
        _, flat = kept
        view = memoryview(flat)
        return [
            Send(
                sender,
                MergedPiece(
                    contract, number, -1, offset, view[offset : offset + SERVE_PIECE_BYTES]
                ),
            )
            for offset in range(0, len(flat), SERVE_PIECE_BYTES)
        ]

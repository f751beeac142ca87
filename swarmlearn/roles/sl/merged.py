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
from swarmlearn.roles.sl.messages import MergedPiece, MergedUnavailable, SLEffect
from swarmlearn.roles.sl.state import RoundState
from swarmlearn.sansio import Send

KEPT_ROUNDS = 2  # merged models kept per contract, for peers that fetch them
SERVE_PIECE_BYTES = 4 * 1024 * 1024

Flat = bytearray | memoryview


class KeptModels:
    """The merged models of the latest rounds, by (contract, round number)."""

    def __init__(self) -> None:
        self.kept: dict[tuple[str, int], tuple[bytes, Flat]] = {}
        self.wanted: set[str] = set()  # contracts whose next model a peer asked for in vain

    def keep(
        self,
        contract: str,
        number: int,
        root: bytes,
        flat: Flat,
        rounds: dict[tuple[str, int], RoundState],
    ) -> None:
        """Serve ``flat`` to peers that fetch it; older rounds (and their finished states)
        are let go."""
        self.kept[(contract, number)] = (root, flat)
        mine = sorted(n for c, n in self.kept if c == contract)
        for old in mine[:-KEPT_ROUNDS]:
            del self.kept[(contract, old)]
        for key in [k for k, r in rounds.items() if k[0] == contract and r.finished]:
            if key[1] < number - KEPT_ROUNDS:
                del rounds[key]

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

    def release_settled(
        self, app: SwarmApp, contract: str, number: int, rounds: dict[tuple[str, int], RoundState]
    ) -> None:
        """Before round ``number`` assembles a merged model, free the kept ones of earlier
        rounds that no participant can still need."""
        for key in [k for k in self.kept if k[0] == contract and k[1] < number]:
            if self.settled(app, contract, key[1]):
                del self.kept[key]
                old = rounds.get(key)
                if old is not None and old.finished:
                    old.merged, old.attempt = None, None  # the attempt holds it too

    def serve(self, sender: str, contract: str, number: int) -> list[SLEffect]:
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

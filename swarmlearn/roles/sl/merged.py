"""Merged models a node keeps after a round, to serve peers that fetch them.

A participant that lacks the merged model the ledger settled on (late, restarted, dissenting)
fetches it from several peers at once (:mod:`swarmlearn.roles.sl.fetch`): it sends
``FetchMerged``, and a node that holds that round's model answers with its manifest (the chunk
hashes, ``RoundManifest`` attempt ``-1``: kept with the model, or hashed once when first
asked) and the chunks asked for, one ``MergedPiece`` (attempt ``-1``) each, views of the model
(no copy); an ask for more than ``REQUEST_CHUNKS_MAX`` chunks or for a chunk the model does
not have is dropped as garbage. Only the latest ``KEPT_ROUNDS`` rounds per
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
from swarmlearn.merge.manifest import Layout, chunk_hashes
from swarmlearn.roles.sl.messages import (
    FetchMerged,
    MergedPiece,
    MergedUnavailable,
    RoundManifest,
    SLEffect,
)
from swarmlearn.sansio import Log, NodeId, Send

KEPT_ROUNDS = 2  # merged models kept per contract, for peers that fetch them
#: Chunks one ``FetchMerged`` may ask for (the fetcher's windows stay under it).
REQUEST_CHUNKS_MAX = 256

Flat = bytearray | memoryview


class KeptModels:
    """The merged models of the latest rounds, by (contract, round number)."""

    def __init__(self) -> None:
        self.kept: dict[tuple[str, int], tuple[bytes, Flat]] = {}
        self.layouts: dict[tuple[str, int], Layout] = {}
        self.hashes: dict[tuple[str, int], tuple[bytes, ...]] = {}  # chunk hashes, once known
        self.wanted: set[str] = set()  # contracts whose next model a peer asked for in vain
        self.asks_dropped = 0  # malformed asks (peer garbage)

    def keep(
        self,
        contract: str,
        number: int,
        root: bytes,
        flat: Flat,
        layout: Layout,
        hashes: tuple[bytes, ...] | None = None,
    ) -> None:
        """Serve ``flat`` to peers that fetch it (``hashes``: its chunk hashes, when known);
        older rounds' models are let go."""
        key = (contract, number)
        before = self.kept.get(key)
        if hashes is None and before is not None and before[0] == root:
            hashes = self.hashes.get(key)  # the same model, kept as a copy now
        self.kept[key], self.layouts[key] = (root, flat), layout
        self.hashes.pop(key, None)
        if hashes is not None:
            self.hashes[key] = hashes
        mine = sorted(n for c, n in self.kept if c == contract)
        for old in mine[:-KEPT_ROUNDS]:
            self.forget(contract, old)

    def forget(self, contract: str, number: int) -> None:
        key = (contract, number)
        self.kept.pop(key, None)
        self.layouts.pop(key, None)
        self.hashes.pop(key, None)

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
            self.forget(*key)
        return freed

    def serve(self, sender: NodeId, fetch: FetchMerged) -> list[SLEffect]:
        """Answer a peer's ``FetchMerged``: the manifest and the chunks asked for, or
        ``MergedUnavailable``."""
        contract, number = fetch.contract, fetch.round
        key = (contract, number)
        kept = self.kept.get(key)
        if kept is None:
            self.wanted.add(contract)
            return [Send(sender, MergedUnavailable(contract, number))]
        layout, view = self.layouts[key], memoryview(kept[1])
        if len(fetch.indexes) > REQUEST_CHUNKS_MAX or not all(
            0 <= i < layout.chunk_count for i in fetch.indexes
        ):
            self.asks_dropped += 1
            text = f"round {number}: dropped a malformed ask for the merged model from {sender[:8]}"
            return [Log(text, "info")]
        effects: list[SLEffect] = []
        if fetch.manifest:
            if key not in self.hashes:
                self.hashes[key] = chunk_hashes(layout, view)
            effects.append(Send(sender, RoundManifest(contract, number, -1, self.hashes[key])))
        for index in fetch.indexes:
            start, stop = layout.chunk_span(index)
            effects.append(Send(sender, MergedPiece(contract, number, -1, start, view[start:stop])))
        return effects

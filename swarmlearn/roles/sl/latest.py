"""How a node gets the swarm's latest merged model for a trainer that joins late (or restarts).

HPE's semantics: a node that joins a training in progress starts from the swarm's current
model, not from its own fresh weights. The trainer asks its node (:class:`FetchLatest`, with
its model's layout); the SL round core (:mod:`swarmlearn.roles.sl.core`) answers:

1. until the node's own ``Join`` is on its ledger, it waits: a ledger that has not caught up
   yet does not know the rounds that ran before;
2. a model whose tensors differ from the contract's fails at once, naming the tensor;
3. the ledger's latest DONE round of the contract with a merged root is the one fetched; none
   yet: the answer is round 0 (the trainer starts from its own weights);
4. the model held here (the node took part) is delivered at once; else ``FetchMerged`` goes to
   a participant that reported the ledger's root, one at a time. The pieces (``MergedPiece``,
   attempt -1) are assembled in a buffer, and the whole model is delivered only if its
   manifest root is the ledger's; a peer whose bytes have another root, that answers
   ``MergedUnavailable`` or sends nothing for ``STALL_S`` is passed over for the next;
5. when no participant holds it any more (they free a model every participant has once the
   next round starts; one merged in a handover file is not kept at all), the fetch waits for
   the next round to finish: the peers that answered ``MergedUnavailable`` keep a copy of
   that one for it (:class:`~swarmlearn.roles.sl.merged.KeptModels`). A newer round
   on the ledger always replaces the one being fetched.

One fetch per contract; every trainer that asked gets its answer. The fetched model is kept to
serve other fetchers. It ends by ``FetchLatest.wait_s`` with :class:`LatestFailed`, saying
why.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from swarmlearn.consensus.ledger.app import SwarmApp
from swarmlearn.consensus.ledger.rounds import RoundRecord, RoundStatus, layout_difference
from swarmlearn.merge import build_manifest
from swarmlearn.merge.manifest import Layout
from swarmlearn.roles.sl.messages import (
    FetchLatest,
    FetchMerged,
    LatestFailed,
    LatestModel,
    LatestProgress,
    MergedPiece,
    MergedUnavailable,
    SLEffect,
    specs_of,
)
from swarmlearn.roles.sl.state import RoundBook
from swarmlearn.roles.sl.timers import LatestDeadline, LatestStall
from swarmlearn.sansio import (
    Deliver,
    Input,
    Log,
    NodeId,
    Receive,
    Request,
    Send,
    SetTimer,
    TimerFired,
)

#: A peer that sends none of the model for this long is passed over for the next one.
STALL_S = 10.0


@dataclass
class LatestFetch:
    """One contract's fetch of its latest merged model."""

    contract: str
    layout: Layout
    deadline: float
    number: int = 0  # the round whose model is fetched (0: none chosen yet)
    root: bytes = b""  # the ledger's root of it
    sources: list[NodeId] = field(default_factory=list)  # the peers not asked yet
    source: NodeId = ""  # the peer asked now ("": none left, waiting for a newer round)
    buffer: bytearray = field(default_factory=bytearray)
    got: int = 0  # bytes from the current source
    seen: int = 0  # ``got`` when the stall timer last looked
    tries: int = 0  # one per source asked: stale stall timers drop out
    said: str = ""  # the latest progress line


def latest_done(app: SwarmApp, contract: str) -> RoundRecord | None:
    """The contract's latest round that finished with a merged model on the ledger."""
    found = app.state.contracts.get(contract)
    done = (
        []
        if found is None
        else [r for r in found.rounds.values() if r.status == RoundStatus.DONE and r.merged_root]
    )
    return max(done, key=lambda r: r.number) if done else None


class LatestModels:
    """The fetches of contracts' latest merged models, one per contract."""

    def __init__(self, book: RoundBook) -> None:
        self.book = book
        self.fetches: dict[str, LatestFetch] = {}

    def handle(self, event: Input, now: float) -> list[SLEffect]:
        match event:
            case Request(FetchLatest() as ask):
                return self._asked(ask, now)
            case Receive(sender, MergedUnavailable() as unavailable):
                return self._unavailable(sender, unavailable)
            case TimerFired(LatestDeadline(contract)):
                return self._deadline(contract, now)
            case TimerFired(LatestStall(contract, _, tries)):
                return self._stalled(contract, tries)
        return []

    def _asked(self, ask: FetchLatest, now: float) -> list[SLEffect]:
        if ask.contract in self.fetches:  # one fetch per contract: its answer goes to all
            return []
        fetch = LatestFetch(ask.contract, ask.layout, now + ask.wait_s)
        self.fetches[ask.contract] = fetch
        end = SetTimer(LatestDeadline(ask.contract), ask.wait_s)
        return [end, *self._look(fetch, now)]

    def follow(self, now: float) -> list[SLEffect]:
        """A block was committed: the node joined, or a newer round finished."""
        return [e for f in list(self.fetches.values()) for e in self._look(f, now)]

    def _look(self, fetch: LatestFetch, now: float) -> list[SLEffect]:
        if self.book.me not in self.book.app.state.members:
            return self._say(fetch, "waiting for this node's ledger to catch up (joining)")
        contract = self.book.app.state.contracts.get(fetch.contract)
        if contract is not None and contract.layout is not None:
            problem = layout_difference(contract.layout, specs_of(fetch.layout))
            if problem:
                reason = f"this model differs from the contract's: {problem}"
                return self._end(fetch, LatestFailed(fetch.contract, reason, True))
        record = latest_done(self.book.app, fetch.contract)
        if record is None:  # no round has finished: the trainer starts from its own weights
            return self._end(fetch, LatestModel(fetch.contract, 0, b"", b""))
        if record.number <= fetch.number:
            return []  # fetching it already (or waiting for a newer one)
        assert record.merged_root is not None
        fetch.number, fetch.root = record.number, record.merged_root
        held = self.book.kept.kept.get((fetch.contract, record.number))
        if held is not None and held[0] == record.merged_root:  # this node took part
            flat = held[1] if isinstance(held[1], bytearray) else bytes(held[1])
            model = LatestModel(fetch.contract, record.number, record.merged_root, flat)
            return self._end(fetch, model)
        fetch.sources = [
            p
            for p in record.participants
            if p != self.book.me and record.merged.get(p) == record.merged_root
        ]
        fetch.buffer = bytearray(fetch.layout.total_bytes)
        return self._next(fetch)

    def _next(self, fetch: LatestFetch) -> list[SLEffect]:
        """Ask the next peer for the model; none left: wait for a newer round."""
        fetch.got, fetch.seen, fetch.tries = 0, 0, fetch.tries + 1
        if not fetch.sources:
            fetch.source = ""
            return self._say(
                fetch,
                f"no peer holds the swarm's model of round {fetch.number} any more;"
                " waiting for the next round to finish",
            )
        fetch.source = fetch.sources.pop(0)
        tag = LatestStall(fetch.contract, fetch.number, fetch.tries)
        return [
            Send(fetch.source, FetchMerged(fetch.contract, fetch.number)),
            SetTimer(tag, STALL_S),
            *self._say(
                fetch, f"fetching the swarm's model of round {fetch.number} from {fetch.source[:8]}"
            ),
        ]

    def piece(self, sender: NodeId, p: MergedPiece) -> list[SLEffect] | None:
        """A piece of the model being fetched (None: not for a latest fetch)."""
        fetch = self.fetches.get(p.contract)
        if fetch is None or p.round != fetch.number or sender != fetch.source or not sender:
            return None
        if not 0 <= p.start <= len(fetch.buffer) - len(p.data):
            return [Log(f"round {p.round}: a fetched piece outside the model", "warning")]
        fetch.buffer[p.start : p.start + len(p.data)] = p.data
        fetch.got += len(p.data)
        if fetch.got < len(fetch.buffer):
            return []
        root = build_manifest(fetch.layout, fetch.buffer).root
        if root != fetch.root:
            text = (
                f"round {fetch.number}: the model from {sender[:8]} does not match the"
                " ledger's root; trying the next peer"
            )
            return [Log(text, "warning"), *self._next(fetch)]
        self.book.keep(fetch.contract, fetch.number, root, fetch.buffer)
        return self._end(fetch, LatestModel(fetch.contract, fetch.number, root, fetch.buffer))

    def _unavailable(self, sender: NodeId, m: MergedUnavailable) -> list[SLEffect]:
        fetch = self.fetches.get(m.contract)
        if fetch is None or m.round != fetch.number or sender != fetch.source or not sender:
            return []
        return self._next(fetch)

    def _deadline(self, contract: str, now: float) -> list[SLEffect]:
        fetch = self.fetches.get(contract)
        if fetch is None or now + 1e-6 < fetch.deadline:
            return []  # (the timer of an earlier fetch)
        return self._end(fetch, LatestFailed(contract, self._why(fetch)))

    def _stalled(self, contract: str, tries: int) -> list[SLEffect]:
        fetch = self.fetches.get(contract)
        if fetch is None or tries != fetch.tries or not fetch.source:
            return []
        if fetch.got > fetch.seen:  # still coming
            fetch.seen = fetch.got
            return [SetTimer(LatestStall(contract, fetch.number, tries), STALL_S)]
        text = f"{fetch.source[:8]} sent none of round {fetch.number}'s model in {STALL_S:g} s"
        return [Log(f"{text}; trying the next peer", "warning"), *self._next(fetch)]

    def _why(self, fetch: LatestFetch) -> str:
        if self.book.me not in self.book.app.state.members:
            return "this node has not joined the swarm yet (its ledger is catching up)"
        if not fetch.source:
            return (
                f"no peer holds the swarm's model of round {fetch.number} any more, and no"
                " round finished since (is the training over?)"
            )
        return f"round {fetch.number}'s model did not arrive from {fetch.source[:8]} in time"

    def _say(self, fetch: LatestFetch, text: str) -> list[SLEffect]:
        if text == fetch.said:
            return []
        fetch.said = text
        return [Deliver(LatestProgress(fetch.contract, text)), Log(text, "info")]

    def _end(self, fetch: LatestFetch, value: LatestModel | LatestFailed) -> list[SLEffect]:
        del self.fetches[fetch.contract]
        return [Deliver(value)]

"""How a node gets the swarm's latest merged model for a trainer that joins late (or restarts).

HPE's semantics: a node that joins a training in progress starts from the swarm's current
model, not from its own fresh weights. The trainer asks its node (:class:`FetchLatest`, with
its model's layout); the SL round core (:mod:`swarmlearn.roles.sl.core`) answers:

1. until the node's own ``Join`` is on its ledger, it waits: a ledger that has not caught up
   yet does not know the rounds that ran before;
2. a model whose tensors differ from the contract's fails at once, naming the tensor;
3. the ledger's latest DONE round of the contract with a merged root is the one fetched; none
   yet: the answer is round 0 (the trainer starts from its own weights);
4. the model held here (the node took part) is delivered at once; else it is fetched from
   the participants that reported the ledger's root, several at once, every chunk checked
   against that root (:class:`~swarmlearn.roles.sl.fetch.ModelFetch`: a peer that lies,
   stalls or answers ``MergedUnavailable`` is dropped and its chunks asked of the others);
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

from dataclasses import dataclass

from swarmlearn.consensus.ledger.app import SwarmApp
from swarmlearn.consensus.ledger.rounds import RoundRecord, RoundStatus, layout_difference
from swarmlearn.merge.manifest import Layout
from swarmlearn.roles.sl.fetch import Fetched, ModelFetch
from swarmlearn.roles.sl.messages import (
    FetchLatest,
    LatestFailed,
    LatestModel,
    LatestProgress,
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
    Request,
    SetTimer,
    TimerFired,
)


@dataclass
class LatestFetch:
    """One contract's fetch of its latest merged model."""

    contract: str
    layout: Layout
    deadline: float
    number: int = 0  # the round whose model is fetched (0: none chosen yet)
    root: bytes = b""  # the ledger's root of it
    fetch: ModelFetch | None = None  # None: none started; failed: waiting for a newer round
    tries: int = 0  # fetches started (a timer of an earlier one drops out)
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
            case TimerFired(LatestDeadline(contract)):
                return self._deadline(contract, now)
            case TimerFired(LatestStall(contract, number, tries)):
                return self._tick(contract, number, tries, now)
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
        sources = [
            p
            for p in record.participants
            if p != self.book.me and record.merged.get(p) == record.merged_root
        ]
        fetch.tries += 1
        tag = LatestStall(fetch.contract, fetch.number, fetch.tries)
        inner = ModelFetch(fetch.contract, fetch.number, fetch.root, fetch.layout, sources, tag)
        fetch.fetch = inner
        effects = inner.start(now)
        if inner.asking():
            names = ", ".join(p[:8] for p in inner.asking())
            effects += self._say(
                fetch, f"fetching the swarm's model of round {fetch.number} from {names}"
            )
        return effects + self._after(fetch)

    def fetched(
        self,
        sender: NodeId,
        message: Fetched,
        digest: bytes | None,
        now: float,
    ) -> list[SLEffect] | None:
        """A fetched model's manifest or chunk (``digest``: hashed by a lane), or a peer's
        ``MergedUnavailable`` (None: not for a latest fetch)."""
        fetch = self.fetches.get(message.contract)
        inner = None if fetch is None else fetch.fetch
        if fetch is None or inner is None or message.round != fetch.number:
            return None
        if not inner.expects(sender, message):
            return None
        effects = inner.receive(sender, message, digest, now)
        return effects + self._after(fetch)

    def _after(self, fetch: LatestFetch) -> list[SLEffect]:
        """The model is delivered once complete; when no peer sent it, the fetch waits for
        a newer round."""
        inner = fetch.fetch
        assert inner is not None
        if inner.complete:
            hashes = inner.hashes()
            self.book.keep(
                fetch.contract, fetch.number, fetch.root, inner.buffer, fetch.layout, hashes
            )
            return self._end(
                fetch, LatestModel(fetch.contract, fetch.number, fetch.root, inner.buffer)
            )
        if inner.failure:
            return self._say(
                fetch,
                f"no peer holds the swarm's model of round {fetch.number} any more;"
                " waiting for the next round to finish",
            )
        return []

    def _deadline(self, contract: str, now: float) -> list[SLEffect]:
        fetch = self.fetches.get(contract)
        if fetch is None or now + 1e-6 < fetch.deadline:
            return []  # (the timer of an earlier fetch)
        return self._end(fetch, LatestFailed(contract, self._why(fetch)))

    def _tick(self, contract: str, number: int, tries: int, now: float) -> list[SLEffect]:
        fetch = self.fetches.get(contract)
        inner = None if fetch is None else fetch.fetch
        if fetch is None or inner is None or (number, tries) != (fetch.number, fetch.tries):
            return []
        return inner.tick(now) + self._after(fetch)

    def _why(self, fetch: LatestFetch) -> str:
        if self.book.me not in self.book.app.state.members:
            return "this node has not joined the swarm yet (its ledger is catching up)"
        if fetch.fetch is None or fetch.fetch.failure:
            return (
                f"no peer holds the swarm's model of round {fetch.number} any more, and no"
                " round finished since (is the training over?)"
            )
        names = ", ".join(p[:8] for p in fetch.fetch.asking())
        return f"round {fetch.number}'s model did not arrive from {names} in time"

    def _say(self, fetch: LatestFetch, text: str) -> list[SLEffect]:
        if text == fetch.said:
            return []
        fetch.said = text
        return [Deliver(LatestProgress(fetch.contract, text)), Log(text, "info")]

    def _end(self, fetch: LatestFetch, value: LatestModel | LatestFailed) -> list[SLEffect]:
        del self.fetches[fetch.contract]
        return [Deliver(value)]

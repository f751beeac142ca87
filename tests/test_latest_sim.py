"""A node that joins late gets the swarm's latest merged model (roles/sl/latest.py, simulator).

Three whole swarm nodes (ledger + SL) in the simulator; two of them run rounds, the third
never contributes. Its trainer then asks for the contract's latest model (``FetchLatest``):
it gets the model of the latest round, bit for bit the one the participants merged, with the
ledger's root, asked of both participants at once; a peer that serves other bytes, or
stalls, is dropped and its chunks asked of the other; a model whose
tensors differ from the contract's is refused, naming the tensor; with no round finished,
the answer is round 0. When the participants merged in their trainers' handover files they
hold no copy once every participant has the model: the late node hears
``MergedUnavailable``, waits, and gets the next round's model (the peers keep it for it).
"""

from __future__ import annotations

import mmap
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest

from swarmlearn.consensus.ledger.app import DEFAULT_CONTRACT
from swarmlearn.merge import ModelState, flatten, layout_of
from swarmlearn.merge.manifest import Layout
from swarmlearn.roles.sl.fetch import STALL_S
from swarmlearn.roles.sl.messages import (
    Contribute,
    FetchLatest,
    FetchMerged,
    LatestFailed,
    LatestModel,
    MergedPiece,
    MergedUnavailable,
)
from swarmlearn.sansio import Deliver, Effect, Log, NodeId, Send
from tests.test_rounds_sim import (
    CHUNK_BYTES,
    RoundChecker,
    Swarm,
    make_swarm,
    model,
    start_simulator,
)

pytestmark = pytest.mark.sim

Answer = LatestModel | LatestFailed


@pytest.fixture(scope="module")
def swarm3(tmp_path_factory: pytest.TempPathFactory) -> Swarm:
    return make_swarm(tmp_path_factory.mktemp("latest"), 3)


class Late:
    """Two nodes train; the third (``joiner``) watches, then asks for the latest model."""

    def __init__(self, swarm: Swarm, seed: int) -> None:
        self.checker = RoundChecker()
        self.sim = start_simulator(swarm, seed, self.checker)
        self.rng = np.random.default_rng(seed)
        self.layout = layout_of(model(self.rng), chunk_bytes=CHUNK_BYTES)
        *self.trainers, self.joiner = self.sim.node_ids
        self.answers: list[Answer] = []
        self.logs: list[str] = []
        self.unavailable: list[NodeId] = []  # peers that answered MergedUnavailable
        self.files: dict[NodeId, mmap.mmap] = {}
        self.sim.set_policy(self.joiner, self._watch_joiner)
        for node in self.trainers:
            self.sim.set_policy(node, self._watch_trainer)

    def _watch_joiner(self, node: NodeId, effects: list[Effect]) -> list[Effect]:
        for effect in effects:
            if isinstance(effect, Deliver) and isinstance(effect.value, Answer):
                self.answers.append(effect.value)
            elif isinstance(effect, Log):
                self.logs.append(effect.text)
        return effects

    def _watch_trainer(self, node: NodeId, effects: list[Effect]) -> list[Effect]:
        for effect in effects:
            if isinstance(effect, Send) and isinstance(effect.message, MergedUnavailable):
                self.unavailable.append(node)
        return effects

    def run_round(self, number: int, *, in_files: bool = False) -> None:
        at = self.sim.loop.now + 1.0
        for node in self.trainers:
            flat: bytes | memoryview = bytes(flatten(model(self.rng), self.layout))
            if in_files:  # a trainer's handover file: the merge lands in it
                if node not in self.files:
                    self.files[node] = mmap.mmap(-1, self.layout.total_bytes)
                self.files[node][:] = flat
                flat = memoryview(self.files[node])
            contribution = Contribute(DEFAULT_CONTRACT, flat, self.layout, 1, 2)
            self.sim.request(node, contribution, at=at)
        self.run_until(lambda: len(self.done(number)) == len(self.trainers))

    def done(self, number: int) -> dict[str, bytes]:
        found = self.checker.done.get((DEFAULT_CONTRACT, number), {})
        return {node: bytes(outcome.flat) for node, outcome in found.items()}

    def ask(self, layout: Layout | None = None, wait_s: float = 60.0) -> None:
        asked = FetchLatest(DEFAULT_CONTRACT, layout or self.layout, wait_s)
        self.sim.request(self.joiner, asked, at=self.sim.loop.now + 1.0)

    def run_until(self, condition: Callable[[], bool], limit_s: float = 120.0) -> None:
        self.sim.run(
            until=lambda: bool(self.sim.violations) or condition(),
            time_limit=self.sim.loop.now + limit_s,
        )
        assert not self.sim.violations, self.sim.violations
        assert condition(), "the simulation ended before the condition held"

    def root_of(self, number: int) -> bytes:
        app = self.sim.nodes[self.joiner].core.app  # type: ignore[union-attr]
        root = app.state.contracts[DEFAULT_CONTRACT].rounds[number].merged_root
        assert isinstance(root, bytes)
        return root


def test_a_late_node_gets_the_latest_round_verified_against_the_ledger(swarm3: Swarm) -> None:
    late = Late(swarm3, seed=21)
    late.ask()  # nothing has run yet: round 0, at once
    late.run_until(lambda: len(late.answers) == 1)
    assert late.answers[0] == LatestModel(DEFAULT_CONTRACT, 0, b"", b"")
    late.run_round(1)
    late.run_round(2)
    late.ask()
    late.run_until(lambda: len(late.answers) == 2)
    answer = late.answers[1]
    assert isinstance(answer, LatestModel), answer
    assert answer.round == 2
    assert answer.root == late.root_of(2)
    merged = set(late.done(2).values())
    assert len(merged) == 1
    assert bytes(answer.flat) == merged.pop()
    assert late.unavailable == []


def test_a_peer_that_serves_other_bytes_is_passed_over(swarm3: Swarm) -> None:
    late = Late(swarm3, seed=22)
    late.run_round(1)
    app = late.sim.nodes[late.joiner].core.app  # type: ignore[union-attr]
    liar = app.state.contracts[DEFAULT_CONTRACT].rounds[1].participants[0]

    def flip(node: NodeId, effects: list[Effect]) -> list[Effect]:
        out: list[Effect] = []
        for effect in effects:
            piece = effect.message if isinstance(effect, Send) else None
            if isinstance(effect, Send) and isinstance(piece, MergedPiece) and piece.attempt == -1:
                data = bytearray(piece.data)
                data[-1] ^= 1  # one bit off in the last chunk
                effect = Send(effect.to, replace(piece, data=bytes(data)))
            out.append(effect)
        return out

    late.sim.set_policy(liar, flip)
    late.ask()
    late.run_until(lambda: len(late.answers) == 1)
    answer = late.answers[0]
    assert isinstance(answer, LatestModel), answer
    assert (answer.round, answer.root) == (1, late.root_of(1))
    assert bytes(answer.flat) == next(iter(late.done(1).values()))
    refused = [text for text in late.logs if "does not match the ledger's root" in text]
    assert len(refused) == 1, late.logs
    assert liar[:8] in refused[0]


def test_another_model_is_refused_naming_the_tensor(swarm3: Swarm) -> None:
    late = Late(swarm3, seed=23)
    late.run_round(1)
    arrays = dict(model(late.rng))
    arrays["fc.bias"] = np.zeros(31, dtype=np.float32)  # one more output than the contract's
    late.ask(layout_of(ModelState(arrays), chunk_bytes=CHUNK_BYTES))
    late.run_until(lambda: len(late.answers) == 1)
    answer = late.answers[0]
    assert isinstance(answer, LatestFailed), answer
    assert answer.mismatch
    assert "tensor 'fc.bias': shape (31,)" in answer.reason, answer.reason


def test_merged_in_handover_files_the_late_node_gets_the_next_round(swarm3: Swarm) -> None:
    late = Late(swarm3, seed=24)
    late.run_round(1, in_files=True)
    late.run_round(2, in_files=True)
    late.ask()
    # Both participants freed round 2's model (each trainer reads it in its file): each says
    # so, and the late node waits for the next round.
    late.run_until(lambda: len(late.unavailable) == len(late.trainers))
    assert sorted(late.unavailable) == sorted(late.trainers)
    assert late.answers == []
    late.run_round(3, in_files=True)
    late.run_until(lambda: len(late.answers) == 1)
    answer = late.answers[0]
    assert isinstance(answer, LatestModel), answer
    assert (answer.round, answer.root) == (3, late.root_of(3))
    assert bytes(answer.flat) == next(iter(late.done(3).values()))


def test_with_no_peer_holding_it_the_late_node_says_why_at_its_deadline(swarm3: Swarm) -> None:
    late = Late(swarm3, seed=25)
    late.run_round(1, in_files=True)
    late.ask(wait_s=20.0)
    late.run_until(lambda: len(late.answers) == 1)
    answer = late.answers[0]
    assert isinstance(answer, LatestFailed), answer
    assert not answer.mismatch
    assert "no peer holds the swarm's model of round 1" in answer.reason, answer.reason


def test_the_model_comes_from_both_peers_and_a_stalled_one_holds_nothing_up(
    swarm3: Swarm,
) -> None:
    """The late node asks both participants at once, each for its share of the chunks; one
    of them then sends nothing of it: once the other is idle it is asked for the stalled
    one's chunks (the endgame), and the model arrives, the ledger's bit for bit, well within
    a stall period."""
    late = Late(swarm3, seed=26)
    late.run_round(1)
    app = late.sim.nodes[late.joiner].core.app  # type: ignore[union-attr]
    slow, other = app.state.contracts[DEFAULT_CONTRACT].rounds[1].participants
    asked: dict[NodeId, set[int]] = {slow: set(), other: set()}

    def watch(node: NodeId, effects: list[Effect]) -> list[Effect]:
        for effect in effects:
            if isinstance(effect, Send) and isinstance(effect.message, FetchMerged):
                asked[effect.to] |= set(effect.message.indexes)
        return late._watch_joiner(node, effects)

    def stall(node: NodeId, effects: list[Effect]) -> list[Effect]:
        return [
            e
            for e in effects
            if not (isinstance(e, Send) and isinstance(e.message, MergedPiece))
            or e.message.attempt != -1
        ]

    late.sim.set_policy(late.joiner, watch)
    late.sim.set_policy(slow, stall)
    began = late.sim.loop.now
    late.ask()
    late.run_until(lambda: len(late.answers) == 1)
    answer = late.answers[0]
    assert isinstance(answer, LatestModel), answer
    assert (answer.round, answer.root) == (1, late.root_of(1))
    assert bytes(answer.flat) == next(iter(late.done(1).values()))
    chunks = set(range(late.layout.chunk_count))
    assert asked[slow]
    assert asked[slow] < chunks  # a share, not all of it
    assert asked[other] == chunks  # its own share, then the stalled one's
    assert late.sim.loop.now - began < 1.0 + STALL_S

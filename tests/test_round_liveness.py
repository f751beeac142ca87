"""A sync round never hangs silently (roles/sl/core.py, in the simulator: real consensus and keys).

- Two nodes whose first check-ins race with different models: the ledger takes one; the
  other's trainer hears the ledger's reason at once, not at its syncTimeout.
- A round that never reaches minPeers: the trainer hears "waiting for minPeers" every
  WAIT_PROGRESS_S, and the round fails at its syncTimeout with a reason that says so; its
  check-in leaves the round, which is abandoned on the ledger; the node's next weights open
  a fresh round, which then merges cleanly.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from swarmlearn.consensus.ledger.app import DEFAULT_CONTRACT
from swarmlearn.consensus.ledger.rounds import ABANDONED, RoundStatus
from swarmlearn.merge import ModelState, flatten, layout_of, merge
from swarmlearn.merge.manifest import Layout
from swarmlearn.roles.local.endpoint import LocalClient
from swarmlearn.roles.sl.core import Contribute, Progress, RoundDone, RoundFailed
from swarmlearn.roles.sl.ends import WAIT_PROGRESS_S
from swarmlearn.sim import Simulator
from swarmlearn.sim.checkers import Checker, Violation
from tests.test_callback_torch import two_daemons
from tests.test_rounds_sim import CHUNK_BYTES, Swarm, make_swarm, model, start_simulator

pytestmark = pytest.mark.sim


class Heard(Checker):
    """What each node delivered to its trainer, with the virtual time."""

    name = "heard"

    def __init__(self) -> None:
        self.values: list[tuple[str, float, Any]] = []

    def on_deliver(self, node: str, incarnation: int, value: Any, time: float) -> Violation | None:
        if isinstance(value, Progress | RoundDone | RoundFailed):
            self.values.append((node, time, value))
        return None

    def of(self, kind: type, node: str | None = None) -> list[tuple[str, float, Any]]:
        return [v for v in self.values if isinstance(v[2], kind) and node in (None, v[0])]


@pytest.fixture(scope="module")
def swarm2(tmp_path_factory: pytest.TempPathFactory) -> Swarm:
    return make_swarm(tmp_path_factory.mktemp("liveness"), 2)


def simulator(swarm: Swarm, heard: Heard) -> Simulator:
    return start_simulator(swarm, 3, heard)


def contribution(layout: Layout, state: ModelState, node: str, wait_s: float) -> Contribute:
    flat = bytes(flatten(state, layout))
    weight = random.Random(node).randint(1, 100)
    return Contribute(DEFAULT_CONTRACT, flat, layout, weight, 2, wait_s=wait_s)


def test_a_check_in_the_ledger_refuses_fails_the_round_at_once(swarm2: Swarm) -> None:
    heard = Heard()
    sim = simulator(swarm2, heard)
    rng = np.random.default_rng(5)
    first, second = sim.node_ids
    wide = ModelState({**model(rng), "extra": np.zeros(3, np.float32)})
    narrow = model(rng)
    for node, state in ((first, wide), (second, narrow)):  # at the same moment
        layout = layout_of(state, chunk_bytes=CHUNK_BYTES)
        sim.request(node, contribution(layout, state, node, 600), at=1.0)
    sim.run(until=lambda: bool(heard.of(RoundFailed)), time_limit=600)
    (node, at, failed), *others = heard.of(RoundFailed)
    assert others == []
    assert at < 10, at  # a few blocks, not the 600 s syncTimeout
    assert failed.round == 1
    assert failed.reason.startswith("the ledger refuses it: "), failed.reason
    assert "'extra'" in failed.reason  # which tensor the two models disagree on
    # The refused node stays quiet from then on: no check-in resent every RESEND_S.
    progress_after = [v for v in heard.of(Progress, node) if v[1] > at]
    sim.run(until=lambda: False, time_limit=at + 30)
    assert [v for v in heard.of(Progress, node) if v[1] > at] == progress_after == []


def test_a_round_short_of_min_peers_says_so_and_ends_at_the_sync_timeout(swarm2: Swarm) -> None:
    heard = Heard()
    sim = simulator(swarm2, heard)
    rng = np.random.default_rng(6)
    lonely, late = sim.node_ids
    layout = layout_of(model(rng), chunk_bytes=CHUNK_BYTES)
    sync_timeout_s = 2.5 * WAIT_PROGRESS_S
    sim.request(lonely, contribution(layout, model(rng), lonely, sync_timeout_s), at=1.0)
    sim.run(until=lambda: bool(heard.of(RoundFailed)), time_limit=sync_timeout_s + 60)
    waiting = [
        (at, v.text) for _, at, v in heard.of(Progress, lonely) if "waiting for minPeers" in v.text
    ]
    assert [text for _, text in waiting] == [
        f"round 1: 1/2 checked in, waiting for minPeers=2 ({WAIT_PROGRESS_S * n:g} s)"
        for n in (1, 2)
    ]
    ((node, at, failed),) = heard.of(RoundFailed)
    assert node == lonely
    assert 1.0 + sync_timeout_s <= at < 1.0 + sync_timeout_s + 1.0
    assert failed.reason == (
        f"round 1: 1/2 checked in within syncTimeout={sync_timeout_s:g} s, fewer than minPeers=2"
    )
    # The trainer syncs again with newer weights and the other node comes: the open round
    # takes the newer check-in and merges it.
    states = {lonely: model(rng), late: model(rng)}
    now = sim.loop.now
    for node, state in states.items():
        sim.request(node, contribution(layout, state, node, 600), at=now + 1.0)
    sim.run(until=lambda: len(heard.of(RoundDone)) == 2, time_limit=now + 60)
    done = heard.of(RoundDone)
    assert sorted(node for node, _, _ in done) == sorted(states)
    nodes = sorted(states)
    weights = [random.Random(node).randint(1, 100) for node in nodes]
    expected = bytes(flatten(merge([states[n] for n in nodes], weights, "mean"), layout))
    assert all(bytes(v.flat) == expected and v.round == 2 for _, _, v in done)
    app = sim.nodes[lonely].core.app  # type: ignore[union-attr]
    record = app.state.contracts[DEFAULT_CONTRACT].rounds[1]
    assert (record.status, record.reason) == (RoundStatus.FAILED, ABANDONED)


@pytest.mark.process
def test_a_real_node_fails_a_round_short_of_min_peers_at_the_sync_timeout(tmp_path: Path) -> None:
    """Two swarm-node processes, one trainer asking for three: at its syncTimeout the node
    itself ends the round and says why (the client's socket would raise only later)."""
    state = ModelState({"w": np.arange(1000, dtype=np.float32)})
    layout = layout_of(state)
    heard: list[str] = []
    with (
        two_daemons(tmp_path) as data,
        LocalClient(data[0] / "sl.sock", timeout_s=3.0, on_progress=heard.append) as client,
    ):
        flat = bytes(flatten(state, layout))
        outcome = client.sync_round(DEFAULT_CONTRACT, layout, flat, min_peers=3)
    assert outcome.merged is None
    assert outcome.reason == "round 1: 1/3 checked in within syncTimeout=3 s, fewer than minPeers=3"
    assert heard[:2] == ["checking in", "round 1: 1/3 checked in"]

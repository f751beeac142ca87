"""The ledger over gossip in the simulator: small swarms of validators and followers (the full
size, 200 validators and 1,000 followers, is ``python -m swarmlearn.sim --scenario
ledger-gossip --nodes 1200``, reported by bench/sim.py)."""

from __future__ import annotations

import dataclasses

import pytest

from swarmlearn.consensus.tendermint.events import SubmitTx
from swarmlearn.consensus.tendermint.gossip_simulation import (
    LEDGER_SWARM,
    ledger_factory,
    ledger_node_ids,
    ledger_of,
    prepare_links,
)
from swarmlearn.consensus.tendermint.over_gossip import TOPIC_VOTES, encode
from swarmlearn.p2p.gossip import GossipMessage
from swarmlearn.sansio import Effect, NodeId, Send
from swarmlearn.sim.cluster import Simulator
from swarmlearn.sim.scenarios import run_scenario
from tests.test_ledger_gossip import signed_vote

pytestmark = pytest.mark.sim


def test_validators_and_followers_commit_every_block_over_gossip() -> None:
    result = run_scenario("ledger-gossip", seed=3, nodes=36)
    assert result.ok, result.message
    lines = "\n".join(result.checker_lines)
    assert "followers holding every block: 30/30" in lines


def test_the_same_seed_gives_the_same_run() -> None:
    first = run_scenario("ledger-gossip", seed=5, nodes=18)
    second = run_scenario("ledger-gossip", seed=5, nodes=18)
    assert first.ok
    assert first.fingerprint == second.fingerprint


def test_a_node_forging_votes_loses_its_neighbours_and_the_ledger_goes_on() -> None:
    ids = ledger_node_ids(LEDGER_SWARM)(11, 24)
    sim = Simulator(11, ids, ledger_factory(LEDGER_SWARM)())
    prepare_links(LEDGER_SWARM)(sim)
    sim.start()
    forger = "f0000"
    sim.run(time_limit=3.0)
    neighbours = ledger_of(sim, forger).p2p.peers.connected()
    assert neighbours

    def forge(node: NodeId, effects: list[Effect]) -> list[Effect]:
        vote = dataclasses.replace(signed_vote("v001"), value=b"\x09" * 32)  # a forgery
        noise = GossipMessage(TOPIC_VOTES, encode(dataclasses.replace(vote, round=len(effects))))
        return [*effects, *(Send(peer, noise) for peer in neighbours)]

    sim.set_policy(forger, forge)
    sim.request("v000", SubmitTx(b"a=1"))
    sim.run(time_limit=8.0)
    for peer in neighbours:
        node = ledger_of(sim, peer)  # followers check the votes topic too, unsubscribed
        assert node.counters.rejected.get(TOPIC_VOTES, 0) > 0
        assert node.gossip.score(forger) < node.gossip.config.prune_threshold  # out of meshes
    validators = [n for n in ids if n.startswith("v")]
    assert all(ledger_of(sim, v).consensus.height > 1 for v in validators)

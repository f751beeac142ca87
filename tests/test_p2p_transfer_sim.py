"""Bulk transfer in the simulator: several sources in parallel, a corrupt source caught, a
partition survived without refetching, a source crashing behind the peer table, limits."""

from __future__ import annotations

import random
from typing import Any

import pytest

from swarmlearn.p2p.messages import Chunk
from swarmlearn.p2p.peertable import PeerTableConfig
from swarmlearn.p2p.transfer import BlobManifest
from swarmlearn.p2p.transfer_core import (
    BlobFetched,
    FetchBlob,
    FetchFailed,
    PeerMisbehaved,
    ServeBlob,
    TransferConfig,
    TransferCore,
)
from swarmlearn.sansio import Effect, NodeId, Send
from swarmlearn.sim import Checker, LinkConfig, NodeContext, Simulator
from tests.p2p_sim import SwarmSpec, node_ids, swarm_factory

pytestmark = pytest.mark.sim

CHUNK_BYTES = 64 * 1024
BLOB = random.Random(5).randbytes(2 * 1024 * 1024 + 1000)
MANIFEST = BlobManifest.build(BLOB, CHUNK_BYTES)
LINK = LinkConfig(latency_min_s=0.002, latency_tail_s=0.001, bandwidth_bps=100e6)
CONFIG = TransferConfig(request_timeout_s=1.0, retry_s=0.5, tick_s=0.1)


class Outcomes(Checker):
    name = "transfer"

    def __init__(self) -> None:
        self.values: dict[NodeId, list[Any]] = {}

    def on_deliver(self, node: NodeId, incarnation: int, value: Any, time: float) -> None:
        self.values.setdefault(node, []).append(value)

    def fetched(self, node: NodeId) -> bytes | None:
        done = [v for v in self.values.get(node, []) if isinstance(v, BlobFetched)]
        return bytes(done[0].data) if done else None

    def of(self, node: NodeId, kind: type) -> list[Any]:
        return [v for v in self.values.get(node, []) if isinstance(v, kind)]


def plain(count: int, seed: int, config: TransferConfig = CONFIG) -> tuple[Simulator, Outcomes]:
    """Transfer cores alone (every node reaches every other)."""
    outcomes = Outcomes()

    def factory(context: NodeContext) -> TransferCore:
        return TransferCore(context.node_id, context.rng, config)

    sim = Simulator(seed, node_ids(count), factory, link=LINK, checkers=[outcomes])
    sim.start()
    return sim, outcomes


def serve(sim: Simulator, sources: list[NodeId]) -> None:
    for node in sources:
        sim.request(node, ServeBlob(MANIFEST, BLOB))


def chunk_bytes_to(sim: Simulator, node: NodeId) -> int:
    return sum(s.bytes_delivered for (_, dst), s in sim.network.stats().items() if dst == node)


def test_a_blob_is_fetched_from_several_sources_in_parallel() -> None:
    sim, outcomes = plain(8, seed=1)
    serve(sim, ["n000", "n001", "n002", "n003"])
    sim.request("n007", FetchBlob(MANIFEST.root, ("n000", "n001", "n002", "n003")))
    sim.run(until=lambda: bool(outcomes.of("n007", BlobFetched)), time_limit=30.0)
    assert outcomes.fetched("n007") == BLOB
    core = sim.nodes["n007"].core
    assert isinstance(core, TransferCore)
    received = [sim.network.stats()[(f"n00{i}", "n007")].bytes_delivered for i in range(4)]
    assert all(count > len(BLOB) // 8 for count in received)  # every source did its part
    alone = len(BLOB) * 8 / LINK.bandwidth_bps
    assert sim.now < alone / 2  # faster than one source could be


def test_a_peer_serving_corrupt_chunks_is_caught_and_the_blob_completes_from_others() -> None:
    sim, outcomes = plain(6, seed=2)
    serve(sim, ["n000", "n001", "n002"])

    def corrupt(node: NodeId, effects: list[Effect]) -> list[Effect]:
        out: list[Effect] = []
        for effect in effects:
            if isinstance(effect, Send) and isinstance(effect.message, Chunk):
                bad = bytes(len(effect.message.data))
                effect = Send(effect.to, Chunk(effect.message.blob, effect.message.index, bad))
            out.append(effect)
        return out

    sim.set_policy("n001", corrupt)
    for fetcher in ("n004", "n005"):
        sim.request(fetcher, FetchBlob(MANIFEST.root, ("n000", "n001", "n002")))
    done = ("n004", "n005")
    sim.run(until=lambda: all(outcomes.of(n, BlobFetched) for n in done), time_limit=30.0)
    for fetcher in ("n004", "n005"):
        assert outcomes.fetched(fetcher) == BLOB
        [blame] = outcomes.of(fetcher, PeerMisbehaved)
        assert blame.peer == "n001"
        assert "bad hash" in blame.reason


def test_a_partition_mid_transfer_resumes_without_refetching() -> None:
    sim, outcomes = plain(4, seed=3)
    serve(sim, ["n000", "n001"])
    sim.request("n003", FetchBlob(MANIFEST.root, ("n000", "n001")))
    sim.run(time_limit=0.03)
    partial = chunk_bytes_to(sim, "n003")
    assert 0 < partial < len(BLOB) // 2
    sim.network.partition(["n003"], ["n000", "n001"])
    sim.run(time_limit=3.0)
    assert "n003" not in outcomes.values  # stuck while cut off, not failed
    sim.network.heal()
    sim.run(until=lambda: bool(outcomes.of("n003", BlobFetched)), time_limit=30.0)
    assert outcomes.fetched("n003") == BLOB
    assert chunk_bytes_to(sim, "n003") < len(BLOB) * 1.15  # what it held was kept


def test_a_source_crashing_mid_transfer_does_not_stall_it() -> None:
    table = PeerTableConfig(ping_interval_s=0.5, ping_timeout_s=1.5, backoff_max_s=1.0)

    def transfer(context: NodeContext) -> TransferCore:
        return TransferCore(context.node_id, random.Random(context.rng.getrandbits(64)),
                            TransferConfig(request_timeout_s=30.0))  # fmt: skip

    outcomes = Outcomes()
    nodes = node_ids(6)
    spec = SwarmSpec(table=table, gossip=None, transfer=transfer)
    sim = Simulator(4, nodes, swarm_factory(spec, nodes), link=LINK, checkers=[outcomes])
    sim.start()
    sim.run(time_limit=2.0)
    serve(sim, ["n001", "n002", "n003"])
    sim.request("n005", FetchBlob(MANIFEST.root, ("n001", "n002", "n003"), MANIFEST))
    sim.run(time_limit=sim.now + 0.06)
    sim.crash("n002")  # its requests are lost; the peer table notices by the ping deadline
    sim.run(until=lambda: bool(outcomes.of("n005", BlobFetched)), time_limit=20.0)
    assert outcomes.fetched("n005") == BLOB
    assert sim.now < 2.0 + 6.0  # well before the 30 s request timeout


def test_limits_refuse_an_oversized_blob_and_a_fetch_with_no_source() -> None:
    sim, outcomes = plain(3, seed=5, config=TransferConfig(blob_bytes_max=1024 * 1024))
    serve(sim, ["n000"])
    sim.request("n002", FetchBlob(MANIFEST.root, ("n000",)))
    sim.request("n001", FetchBlob(MANIFEST.root, ("n002",)))
    sim.run(time_limit=5.0)
    [failed] = outcomes.of("n002", FetchFailed)
    assert "ceiling" in failed.reason
    assert outcomes.of("n001", FetchFailed) == [
        FetchFailed(MANIFEST.root, "no source has the blob")
    ]

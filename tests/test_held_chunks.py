"""Chunks held for their turn are bounded per sender (issue 7, peak memory at 4 nodes).

- :class:`RangeMerge` counts the bytes it holds per participant, and lets them go when it
  folds them (mean) or merges their region (coordinate methods);
- a real lane stops reading a sender that holds too much (``PEER_BUDGET_BYTES``) while the
  other senders' frames still arrive, and reads it again once those chunks are let go;
- in the simulator, a round re-planned after a node died mid exchange, and one a trainer
  fails, end with nothing held for any sender on any node (``held_by_sender``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import trio

from swarmlearn.merge import RangeMerge, WeightSet, flatten, layout_of, plan_shards
from swarmlearn.merge.methods import resolve_method
from swarmlearn.p2p.bulk_push import PEER_BUDGET_BYTES, RoundLanes
from swarmlearn.p2p.identity import Identity
from swarmlearn.roles.sl.core import RoundChunk
from swarmlearn.roles.sl.state import held_by_sender
from swarmlearn.sansio import Effect, NodeId
from swarmlearn.sim import Simulator
from tests.test_round_lanes import WAIT_S, Inbox, identities  # noqa: F401 (a fixture)
from tests.test_round_refill import run_round_with_a_death
from tests.test_rounds_sim import CHUNK_BYTES, RoundChecker, Swarm, make_swarm, model

pytestmark = pytest.mark.sim


@pytest.fixture(scope="module")
def swarm4(tmp_path_factory: pytest.TempPathFactory) -> Swarm:
    return make_swarm(tmp_path_factory.mktemp("held"), 4)


@pytest.mark.parametrize("method", ["mean", "coordmedian"])
def test_range_merge_counts_held_bytes_per_participant(method: str) -> None:
    rng = np.random.default_rng(5)
    layout = layout_of(model(rng), chunk_bytes=CHUNK_BYTES)
    flats = [bytes(flatten(model(rng), layout)) for _ in range(3)]
    shard = plan_shards(layout, 3).shards[0]
    merge = RangeMerge(layout, shard, WeightSet.of([1, 2, 3], 3), resolve_method(method))
    chunks = list(shard.chunks(layout))
    assert len(chunks) >= 2
    sizes = {c: layout.chunk_span(c)[1] - layout.chunk_span(c)[0] for c in chunks}

    def add(participant: int, chunk: int) -> None:
        start, stop = layout.chunk_span(chunk)
        merge.add(participant, chunk, flats[participant][start:stop])

    for chunk in chunks:  # participants 2 then 1: both held, whatever the method
        add(2, chunk)
        add(1, chunk)
    total = sum(sizes.values())
    assert merge.held_by == [0, total, total]
    add(0, chunks[0])  # the first region completes: its chunks of 1 and 2 are let go
    assert merge.held_by == [0, total - sizes[chunks[0]], total - sizes[chunks[0]]]
    for chunk in chunks[1:]:
        add(0, chunk)
    assert merge.done
    assert merge.held_by == [0, 0, 0]
    assert merge.held_bytes == 0


@pytest.mark.process
async def test_a_lane_stops_reading_a_sender_that_holds_too_much(
    identities: dict[str, Identity],  # noqa: F811 (the fixture)
) -> None:
    a, b, c = identities["a"], identities["b"], identities["c"]
    me, slow, free = str(c.peer_id), str(a.peer_id), str(b.peer_id)
    inbox = Inbox(expected=2)
    receiver = RoundLanes(c, inbox.deliver)
    senders = {slow: RoundLanes(a, Inbox(0).deliver), free: RoundLanes(b, Inbox(0).deliver)}
    receiver.set_held({slow: PEER_BUDGET_BYTES})  # a's chunks the merge holds: a full budget
    async with trio.open_nursery() as nursery:
        port = await nursery.start(receiver.serve, "127.0.0.1")
        for peer, sender in senders.items():
            sender.set_host(me, "127.0.0.1")
            sender.set_port(me, port)
            assert sender.send(me, RoundChunk("c", 1, 0, 0, peer.encode() * 64))
        with trio.fail_after(WAIT_S):
            while slow not in receiver.stalled or not inbox.got:  # noqa: ASYNC110 (threads)
                await trio.sleep(0.01)
        assert [peer for peer, _, _ in inbox.got] == [free]  # b's came; a's waits
        receiver.release(len(free.encode() * 64), free)
        receiver.set_held({})  # a's chunks were folded: its lane reads again
        with trio.fail_after(WAIT_S):
            await inbox.full.wait()
        assert [peer for peer, _, _ in inbox.got] == [free, slow]
        receiver.release(len(slow.encode() * 64), slow)
        assert receiver.peer_bytes(slow) == receiver.peer_bytes(free) == 0
        assert slow not in receiver.stalled
        for sender in senders.values():
            sender.close()
        receiver.close()
        nursery.cancel_scope.cancel()


def watched(
    sim: Simulator,
    peaks: dict[NodeId, int],
    inner: Callable[[NodeId, list[Effect]], list[Effect]],
) -> Callable[[NodeId, list[Effect]], list[Effect]]:
    """``inner``, and the most each node held for its senders after any input."""

    def policy(node: NodeId, effects: list[Effect]) -> list[Effect]:
        core = sim.nodes[node].core
        held = held_by_sender(core.sl.rounds, node)  # type: ignore[union-attr]
        peaks[node] = max(peaks.get(node, 0), sum(held.values()))
        return inner(node, effects)

    return policy


def run_watched(swarm: Swarm, refill: bool) -> tuple[Simulator, RoundChecker, int]:
    """Round 1 on 4 nodes with merges in the handover files; one owner dies after its first
    merged piece went out, the ledger re-plans with the survivors. ``refill``: the
    survivors' trainers write their weights again (else one never answers and fails)."""
    peaks: dict[NodeId, int] = {}
    silent: list[NodeId] = []  # the first survivor asked, without refill: it never answers

    def refill_of(node: NodeId, flat: bytes) -> bytes:
        if refill or silent:
            return flat
        silent.append(node)
        return b""

    run = run_round_with_a_death(swarm, refill_of, lambda sim, policy: watched(sim, peaks, policy))
    return run.sim, run.checker, max(peaks.values())


@pytest.mark.parametrize("refill", [True, False])
def test_nothing_stays_held_after_a_replanned_or_failed_round(swarm4: Swarm, refill: bool) -> None:
    sim, checker, peak = run_watched(swarm4, refill)
    assert peak > 0  # chunks were held for their turn on the way
    assert (checker.failed == []) is refill  # (without one trainer, fewer than min_peers)
    survivors = [node for node in sim.node_ids if sim.nodes[node].alive]
    assert len(survivors) == 3
    for node in survivors:
        core = sim.nodes[node].core
        assert held_by_sender(core.sl.rounds, node) == {}  # type: ignore[union-attr]

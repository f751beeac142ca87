"""A round lane loses a message mid-round, over real sockets: the round still finishes,
bit-identical on every node, through the loss repair (roles/sl/repair.py: ``ResendRound``).

Three in-process swarm nodes on loopback (real TLS links and round lanes, one trio loop)
run one sync round. The test interposes at the driver's seam where a lane hands a received
message to the node (``RoundLanes.deliver``): on one node it drops the first message of the
chosen kind from one peer, as a lane that broke mid-frame would, and gives its bytes back to
the lane's budget. Nothing else is touched: the receiver's core notices what is missing
once the attempt is quiet and asks the sender again; the sender's core answers from what it
still holds. Every wait is on an event (a block, an outcome) under a deadline: no sleeps.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import trio

from swarmlearn.consensus.ledger.app import DEFAULT_CONTRACT
from swarmlearn.merge import ModelState, flatten, layout_of, merge
from swarmlearn.merge.manifest import Layout
from swarmlearn.p2p.certs import create_ca, issue_certificate
from swarmlearn.p2p.identity import Role
from swarmlearn.p2p.wire import Message, payload_of
from swarmlearn.roles.node.node import ValidatorNode, ValidatorOptions
from swarmlearn.roles.sl.core import Contribute, RoundDone, RoundFailed
from swarmlearn.roles.sl.messages import MergedPiece, RoundChunk, RoundManifest
from swarmlearn.sansio import Request
from tests.api_helpers import identity

pytestmark = pytest.mark.process

NODES = 3
FLOATS = 24_000  # 96 kB in 16 kB chunks: two chunks of every range for every owner
CHUNK_BYTES = 16 * 1024
WAIT_S = 120.0  # three ledgers and a round in one loop on a busy 2-core machine


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("loss")
    ca = create_ca(root)
    for index in range(NODES):
        issue_certificate(ca, f"n{index}", root, hosts=["127.0.0.1"], roles=[Role.SN, Role.SL])
    return root


def weights(index: int) -> ModelState:
    rng = np.random.default_rng(100 + index)
    return ModelState({"w": rng.standard_normal(FLOATS, dtype=np.float32)})


class Outcomes:
    """What each node's SL core delivered for the round (its trainer would hear it)."""

    def __init__(self, nodes: list[ValidatorNode]) -> None:
        self.got: dict[str, RoundDone | RoundFailed] = {}
        self.all_in = trio.Event()
        for node in nodes:
            node.trainers.deliver = self._watch(node.me)  # type: ignore[method-assign,assignment]

    def _watch(self, me: str) -> Callable[[object], None]:
        def deliver(value: object) -> None:
            if isinstance(value, RoundDone | RoundFailed):
                self.got[me] = value
                if len(self.got) == NODES:
                    self.all_in.set()

        return deliver


class LoseOnce:
    """On ``node``'s lanes, the first ``kind`` from ``sender`` is lost on arrival."""

    def __init__(self, node: ValidatorNode, sender: str, kind: type[Message]) -> None:
        self.node, self.sender, self.kind = node, sender, kind
        self.lost: Message | None = None
        self.after: list[type[Message]] = []  # what came from the sender after the loss
        self.passed_on = node.lanes.deliver
        node.lanes.deliver = self.deliver

    def deliver(self, peer: str, message: Message, digest: bytes | None) -> None:
        if peer == self.sender and self.lost is None and isinstance(message, self.kind):
            self.lost = message
            self.node.lanes.release(len(payload_of(message)), peer)  # as the node would
            return
        if peer == self.sender and self.lost is not None:
            self.after.append(type(message))
        self.passed_on(peer, message, digest)


async def start_swarm(pki: Path, tmp_path: Path, nursery: trio.Nursery) -> list[ValidatorNode]:
    nodes: list[ValidatorNode] = []
    for index in range(NODES):
        options = ValidatorOptions(
            tmp_path / f"n{index}",
            ("127.0.0.1", 0),
            sentinel=not nodes,
            bootstrap=None if not nodes else nodes[0].address,
        )
        node = await ValidatorNode.open(
            identity(pki, f"n{index}"), options, on_ready=lambda line: None
        )
        await nursery.start(node.run)
        nodes.append(node)
    for node in nodes:  # each node's own ledger says every node joined, seated
        while not (node.joined() and all(n.me in node.app.state.members for n in nodes)):
            await node.wait_committed()
    return nodes


@pytest.mark.parametrize("kind", [RoundManifest, RoundChunk, MergedPiece])
async def test_a_lost_lane_message_is_asked_again_and_the_round_is_bit_identical(
    pki: Path, tmp_path: Path, kind: type[Message]
) -> None:
    layout: Layout = layout_of(weights(0), chunk_bytes=CHUNK_BYTES)
    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as nursery:
            nodes = await start_swarm(pki, tmp_path, nursery)
            outcomes = Outcomes(nodes)
            by_id = sorted(nodes, key=lambda n: n.me)  # the round's participant order
            receiver, sender = by_id[0], by_id[1]  # the receiver owns range 0
            lose = LoseOnce(receiver, sender.me, kind)
            for index, node in enumerate(nodes):
                flat = bytes(flatten(weights(index), layout))
                node.driver.submit(Request(Contribute(DEFAULT_CONTRACT, flat, layout, 1, NODES)))
            await outcomes.all_in.wait()
            nursery.cancel_scope.cancel()

    assert lose.lost is not None, f"no {kind.__name__} came from the sender"
    done = {me: o for me, o in outcomes.got.items() if isinstance(o, RoundDone)}
    assert len(done) == NODES, [
        o.reason for o in outcomes.got.values() if isinstance(o, RoundFailed)
    ]
    merged = {bytes(o.flat) for o in done.values()}
    assert len(merged) == 1  # bit-identical on every node
    order = [nodes.index(n) for n in by_id]
    expected = bytes(flatten(merge([weights(i) for i in order]), layout))
    assert merged.pop() == expected
    assert len({o.root for o in done.values()}) == 1
    # Through the repair: the receiver asked, the sender resent, within one attempt.
    assert receiver.node.sl.repair.asks_sent > 0
    assert sender.node.sl.repair.resent > 0
    assert kind in lose.after  # the lost message's kind came again
    record = receiver.app.state.contracts[DEFAULT_CONTRACT].rounds[1]
    assert record.attempt == 1  # no re-plan: repaired within the attempt

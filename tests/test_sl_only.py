"""Real processes: a node whose certificate grants SL but not SN has no validator seat, yet
follows the ledger through its peers, gets its Join committed and takes part in sync rounds.

The sentinel (sn, sl), one more SN node and one SL-only node (all real ``swarm-node``
processes on loopback, mutual TLS) run two rounds; every node ends with the same merged
weights, bit for bit, equal to the weighted mean computed here.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import trio

from swarmlearn.consensus.ledger.app import DEFAULT_CONTRACT
from swarmlearn.merge import ModelState, flatten, layout_of, merge
from swarmlearn.merge.manifest import Layout
from swarmlearn.p2p.certs import create_ca, issue_certificate
from swarmlearn.p2p.identity import Identity, IdentityPaths, Role, load_identity
from swarmlearn.roles.api.messages import LedgerQuery, LedgerReply
from swarmlearn.roles.local.endpoint import LocalClient, RoundOutcome
from swarmlearn.roles.node.node import ask
from tests.test_real_swarm import node_process, wait_for

pytestmark = pytest.mark.process

NAMES = ("sn0", "sn1", "sl2")
ROLES = ([Role.SN, Role.SL], [Role.SN, Role.SL], [Role.SL])


def model(seed: int) -> ModelState:
    rng = np.random.default_rng(seed)
    return ModelState({"w": rng.standard_normal(20_000).astype(np.float32)})


def identity(pki: Path, name: str) -> Identity:
    paths = IdentityPaths(pki / f"{name}.pem", pki / f"{name}-key.pem", pki / "ca.pem")
    return load_identity(paths)


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    ca = create_ca(tmp_path / "pki")
    for name, roles in zip(NAMES, ROLES, strict=True):
        issue_certificate(ca, name, tmp_path / "pki", hosts=["127.0.0.1"], roles=roles)
    return tmp_path / "pki"


def train(socket: Path, node: int, rounds: range, layout: Layout) -> list[RoundOutcome]:
    outcomes = []
    with LocalClient(socket, timeout_s=90) as client:
        for number in rounds:
            flat = bytes(flatten(model(100 * number + node), layout))
            outcome = client.sync_round(
                DEFAULT_CONTRACT, layout, flat, weight=node + 1, min_peers=len(NAMES)
            )
            merged = None if outcome.merged is None else bytes(outcome.merged)
            outcomes.append(RoundOutcome(outcome.round, merged, outcome.root, outcome.reason))
    return outcomes


async def members(client: Identity, port: int) -> dict[str, list[str]]:
    reply = await ask(client, "127.0.0.1", port, LedgerQuery("members"), LedgerReply)
    return {row["node"]: row["roles"] for row in json.loads(reply.json)}


def test_an_sl_only_node_follows_the_ledger_and_runs_rounds(pki: Path, tmp_path: Path) -> None:
    data = [tmp_path / name for name in NAMES]
    client = identity(pki, "sn0")
    sl_only = str(identity(pki, "sl2").peer_id)
    layout = layout_of(model(0), chunk_bytes=16 * 1024)
    with node_process(pki, "sn0", data[0], "--sentinel", "--listen", "127.0.0.1:0") as (_, port0):
        join = ["--bootstrap", f"127.0.0.1:{port0}", "--listen", "127.0.0.1:0"]
        with (
            node_process(pki, "sn1", data[1], *join) as (_, port1),
            node_process(pki, "sl2", data[2], *join) as (_, port2),
        ):
            ports = [port0, port1, port2]
            formed = trio.run(
                wait_for,
                client,
                ports,
                "two validators, and the SL-only node at the ledger's height",
                lambda s: (
                    all(len(x.validators) == 2 for x in s)
                    and len({(x.height, x.app_hash) for x in s}) == 1
                ),
            )
            assert sl_only not in formed[2].validators  # a member without a seat
            assert trio.run(members, client, port2)[sl_only] == ["sl"]  # its Join committed

            sockets = [d / "sl.sock" for d in data]
            with ThreadPoolExecutor(len(NAMES)) as pool:
                runs = list(pool.map(lambda i: train(sockets[i], i, range(1, 3), layout), range(3)))
    order = sorted(range(len(NAMES)), key=lambda i: str(identity(pki, NAMES[i]).peer_id))
    for number in (1, 2):
        outcomes = [node_runs[number - 1] for node_runs in runs]
        assert all(o.merged is not None for o in outcomes), [o.reason for o in outcomes]
        assert len({o.root for o in outcomes}) == 1
        states = [model(100 * number + i) for i in order]
        expected = bytes(flatten(merge(states, [i + 1 for i in order]), layout))
        assert {o.merged for o in outcomes} == {expected}

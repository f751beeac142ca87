"""Real processes: four swarm-node daemons run sync rounds of a model handed in by trainers
through each node's local endpoint; one node is SIGKILLed mid-round and comes back."""

from __future__ import annotations

import contextlib
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import trio

from swarmlearn.consensus.ledger.app import DEFAULT_CONTRACT
from swarmlearn.errors import ConfigError
from swarmlearn.merge import ModelState, flatten, layout_of, merge
from swarmlearn.merge.manifest import Layout
from swarmlearn.p2p.identity import IdentityPaths, load_identity
from swarmlearn.roles.local.endpoint import LocalClient, RoundOutcome
from tests.test_real_swarm import make_pki, node_process, wait_for

pytestmark = pytest.mark.process

NODES = 4
MODEL_FLOATS = 2_000_000  # 8 MB of float32 weights
ROUNDS_MODEL_FLOATS = 12_500_000  # 50 MB: the rounds issue's real-process model


def model(seed: int, floats: int = MODEL_FLOATS) -> ModelState:
    rng = np.random.default_rng(seed)
    return ModelState(
        {
            "w": rng.standard_normal(floats, dtype=np.float32),
            "b": rng.standard_normal(10, dtype=np.float32),
        }
    )


def model_for(layout: Layout, seed: int) -> ModelState:
    """``model(seed)`` at the size ``layout`` was made for."""
    return model(seed, layout.tensors[0].shape[0])


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    return make_pki(tmp_path, NODES, operator=False)


def node_id(pki: Path, index: int) -> str:
    paths = IdentityPaths(pki / f"sn{index}.pem", pki / f"sn{index}-key.pem", pki / "ca.pem")
    return str(load_identity(paths).peer_id)


def train_rounds(
    socket: Path, node: int, rounds: range, layout: Layout, min_peers: int
) -> list[RoundOutcome]:
    outcomes = []
    with LocalClient(socket, timeout_s=120) as client:
        for number in rounds:
            flat = bytes(flatten(model_for(layout, 1000 * number + node), layout))
            outcome = client.sync_round(
                DEFAULT_CONTRACT, layout, flat, weight=node + 1, min_peers=min_peers
            )
            # the merged weights are a view of the handover file, which the next round reuses
            merged = None if outcome.merged is None else bytes(outcome.merged)
            outcomes.append(replace(outcome, merged=merged))
    return outcomes


def test_four_daemons_run_rounds_and_a_killed_one_rejoins(pki: Path, tmp_path: Path) -> None:
    layout = layout_of(model(0, ROUNDS_MODEL_FLOATS), chunk_bytes=1024 * 1024)
    data = [tmp_path / f"n{i}" for i in range(NODES)]
    with node_process(pki, "sn0", data[0], "--sentinel", "--listen", "127.0.0.1:0") as (_, port0):
        join = ["--bootstrap", f"127.0.0.1:{port0}", "--listen", "127.0.0.1:0"]
        with (
            node_process(pki, "sn1", data[1], *join) as (_, _p1),
            node_process(pki, "sn2", data[2], *join) as (_, _p2),
            node_process(pki, "sn3", data[3], *join) as (victim, port3),
        ):
            sockets = [d / "sl.sock" for d in data]
            ports = [port0, _p1, _p2, port3]
            client = load_identity(
                IdentityPaths(pki / "sn0.pem", pki / "sn0-key.pem", pki / "ca.pem")
            )
            trio.run(
                wait_for,
                client,
                ports,
                "4 validators",
                lambda s: all(len(x.validators) == NODES for x in s),
            )
            with ThreadPoolExecutor(NODES) as pool:
                first = list(
                    pool.map(
                        lambda i: train_rounds(sockets[i], i, range(1, 3), layout, NODES),
                        range(NODES),
                    )
                )
            for number in (1, 2):
                outcomes = [runs[number - 1] for runs in first]
                assert all(o.merged is not None for o in outcomes), [o.reason for o in outcomes]
                assert len({o.root for o in outcomes}) == 1
                # The reference sums in the round's participant order: sorted by node id.
                order = sorted(range(NODES), key=lambda i: node_id(pki, i))
                states = [model_for(layout, 1000 * number + i) for i in order]
                expected = bytes(flatten(merge(states, [i + 1 for i in order]), layout))
                assert outcomes[0].merged == expected

            # Round 3: node 3 checks in, then dies mid-round; the other three finish it.
            with ThreadPoolExecutor(NODES) as pool:
                doomed = pool.submit(_contribute_then_die, sockets[3], layout, victim)
                third = list(
                    pool.map(
                        lambda i: train_rounds(sockets[i], i, range(3, 4), layout, NODES - 1),
                        range(NODES - 1),
                    )
                )
                doomed.result()
            outcomes = [runs[0] for runs in third]
            assert all(o.merged is not None for o in outcomes), [o.reason for o in outcomes]
            assert len({o.root for o in outcomes}) == 1

            # Restarted from its data directory, node 3 catches up and joins rounds 4 and 5.
            with (
                node_process(pki, "sn3", data[3], "--listen", f"127.0.0.1:{port3}"),
                ThreadPoolExecutor(NODES) as pool,
            ):
                fourth = list(
                    pool.map(
                        lambda i: train_rounds(sockets[i], i, range(4, 6), layout, NODES),
                        range(NODES),
                    )
                )
            for number in (4, 5):
                outcomes = [runs[number - 4] for runs in fourth]
                assert all(o.merged is not None for o in outcomes), [o.reason for o in outcomes]
                assert len({o.root for o in outcomes}) == 1
                assert {o.round for o in outcomes} == {number}


def _contribute_then_die(socket: Path, layout: Layout, victim: subprocess.Popen[str]) -> None:
    """Node 3's trainer hands over its weights; the node is killed a moment later."""
    client = LocalClient(socket, timeout_s=60)
    progress = threading.Event()
    client.on_progress = lambda text: progress.set()
    sender = threading.Thread(target=_sync_quietly, args=(client, layout), daemon=True)
    sender.start()
    progress.wait(timeout=30)  # it checked in
    victim.kill()
    victim.wait()
    sender.join(timeout=60)
    client.close()


def _sync_quietly(client: LocalClient, layout: Layout) -> None:
    flat = bytes(flatten(model_for(layout, 3003), layout))
    with contextlib.suppress(ConfigError, OSError):  # its node dies under it
        client.sync_round(DEFAULT_CONTRACT, layout, flat, weight=4, min_peers=NODES - 1)

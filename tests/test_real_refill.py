"""Real processes: an owner SIGKILLed mid exchange, once merged bytes landed in the handover
files (issue 7). Four swarm-node daemons, each trainer handing its weights over in a shared
handover file; node 3's trainer watches its own file and kills its node the moment the node
wrote its merged range there, before its merged pieces are out to everyone: the survivors,
whose own ranges are merged into their files by then, see the round re-planned without it,
have their trainers refill their files (checked against their commitments), and finish with
identical weights: the reference merge of the round's participants, bit for bit.
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest
import trio

from swarmlearn.consensus.ledger.app import DEFAULT_CONTRACT
from swarmlearn.errors import ConfigError
from swarmlearn.merge import flatten, layout_of, merge
from swarmlearn.merge.manifest import Layout
from swarmlearn.merge.plan import plan_shards
from swarmlearn.p2p.identity import IdentityPaths, load_identity
from swarmlearn.roles.local.endpoint import LocalClient, RoundOutcome
from tests.test_real_rounds import NODES, model, node_id, pki  # noqa: F401  (pki: a fixture)
from tests.test_real_swarm import node_process, wait_for

pytestmark = pytest.mark.process

KILL_WAIT_S = 60.0


def survivor(socket: Path, node: int, layout: Layout) -> tuple[RoundOutcome, list[str]]:
    said: list[str] = []
    with LocalClient(socket, timeout_s=90, on_progress=said.append) as client:
        flat = bytes(flatten(model(7000 + node), layout))
        outcome = client.sync_round(
            DEFAULT_CONTRACT, layout, flat, weight=node + 1, min_peers=NODES - 1
        )
        merged = None if outcome.merged is None else bytes(outcome.merged)
    kept = RoundOutcome(outcome.round, merged, outcome.root, outcome.reason)
    return replace(kept, participants=outcome.participants), said


def doomed(socket: Path, layout: Layout, probe: slice, victim: subprocess.Popen[str]) -> bool:
    """Node 3's trainer: hand over, then kill the node once it wrote merged bytes into the
    file (its own range, merged); True when that happened before the round ended there."""
    client = LocalClient(socket, timeout_s=90)
    staging = client.staging(layout.total_bytes)
    assert staging is not None
    flat = flatten(model(7003), layout, out=staging)
    before = bytes(staging[probe])
    sender = threading.Thread(target=_sync_quietly, args=(client, layout, flat), daemon=True)
    sender.start()
    deadline = time.monotonic() + KILL_WAIT_S
    while bytes(staging[probe]) == before and sender.is_alive() and time.monotonic() < deadline:
        time.sleep(0.0002)  # polling the shared file for the node's write
    in_time = sender.is_alive()
    victim.kill()
    victim.wait()
    sender.join(timeout=60)
    client.close()
    return in_time


def _sync_quietly(client: LocalClient, layout: Layout, flat: memoryview) -> None:
    with contextlib.suppress(ConfigError, OSError):  # its node dies under it
        client.sync_round(DEFAULT_CONTRACT, layout, flat, weight=NODES, min_peers=NODES - 1)


def test_survivors_refill_and_finish_after_an_owner_dies_mid_exchange(
    pki: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    layout = layout_of(model(0), chunk_bytes=256 * 1024)
    data = [tmp_path / f"n{i}" for i in range(NODES)]
    with node_process(pki, "sn0", data[0], "--sentinel", "--listen", "127.0.0.1:0") as (_, port0):
        join = ["--bootstrap", f"127.0.0.1:{port0}", "--listen", "127.0.0.1:0"]
        with (
            node_process(pki, "sn1", data[1], *join) as (_, port1),
            node_process(pki, "sn2", data[2], *join) as (_, port2),
            node_process(pki, "sn3", data[3], *join) as (victim, port3),
        ):
            identity = load_identity(
                IdentityPaths(pki / "sn0.pem", pki / "sn0-key.pem", pki / "ca.pem")
            )
            ports = [port0, port1, port2, port3]
            trio.run(
                wait_for,
                identity,
                ports,
                "4 validators",
                lambda s: all(len(x.validators) == NODES for x in s),
            )
            order = sorted(range(NODES), key=lambda i: node_id(pki, i))
            shard = plan_shards(layout, NODES).shards[order.index(3)]
            probe = slice(shard.start_byte, shard.start_byte + 64)
            sockets = [d / "sl.sock" for d in data]
            with ThreadPoolExecutor(NODES) as pool:
                killed = pool.submit(doomed, sockets[3], layout, probe, victim)
                ends = list(pool.map(lambda i: survivor(sockets[i], i, layout), range(3)))
                assert killed.result(), "node 3 wrote no merged bytes before the round ended"
    outcomes = [outcome for outcome, _ in ends]
    assert all(o.merged is not None for o in outcomes), [o.reason for o in outcomes]
    assert len({o.root for o in outcomes}) == 1
    members = [i for i in order if i != 3] if outcomes[0].participants == 3 else order
    states = [model(7000 + i) for i in members]
    expected = bytes(flatten(merge(states, [i + 1 for i in members]), layout))
    assert all(o.merged == expected for o in outcomes)
    # Whether a survivor had merged bytes in its file when attempt 2 came depends on timing
    # (in runs here: all three had); each one asked refilled, and the refill verified.
    asked = ["needs this node's weights again" in " ".join(said) for _, said in ends]
    for (_, said), was_asked in zip(ends, asked, strict=True):
        assert was_asked == any("weights refilled and verified" in text for text in said), said
    print(f"participants {outcomes[0].participants}; survivors that refilled: {asked}")

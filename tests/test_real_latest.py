"""Real processes: a daemon that joins after rounds ran hands its trainer the swarm's model.

Two swarm-node daemons run two rounds of a model handed in by trainers (weights in the
socket's frames: each node keeps round 2's merged model to serve). A third daemon then joins
(``--bootstrap``); its trainer asks for the contract's latest model (``LocalClient.latest``,
through a shared-memory handover file) and gets round 2's merged model, bit for bit, whose
root the ledger holds, asked of both participants at once; a model with another tensor
shape is refused, naming the tensor; a PyTorch SwarmCallback there loads that model before
its first sync.
"""

from __future__ import annotations

import io
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
import trio

from swarmlearn.callback.pytorch import SwarmCallback
from swarmlearn.consensus.ledger.app import DEFAULT_CONTRACT
from swarmlearn.errors import ConfigError
from swarmlearn.merge import ModelState, flatten, layout_of, unpack
from swarmlearn.merge.manifest import Layout
from swarmlearn.p2p.identity import IdentityPaths, load_identity
from swarmlearn.roles.api.messages import LedgerQuery, LedgerReply
from swarmlearn.roles.local.endpoint import LocalClient
from swarmlearn.roles.node.node import ask
from tests.test_real_swarm import make_pki, node_process, wait_for

pytestmark = pytest.mark.process

MODEL_FLOATS = 1_500_000  # 6 MB: two of the pieces a node serves


def model(seed: int, outputs: int = 10) -> ModelState:
    rng = np.random.default_rng(seed)
    return ModelState(
        {
            "w": rng.standard_normal(MODEL_FLOATS).astype(np.float32),
            "b": rng.standard_normal(outputs).astype(np.float32),
        }
    )


def train_two_rounds(socket: Path, node: int, layout: Layout) -> list[bytes]:
    merged = []
    with LocalClient(socket, timeout_s=60) as client:
        client.use_shared = False  # the weights in the frames: the node keeps its own copy
        for number in (1, 2):
            flat = bytes(flatten(model(1000 * number + node), layout))
            outcome = client.sync_round(DEFAULT_CONTRACT, layout, flat, min_peers=2)
            assert outcome.merged is not None, outcome.reason
            merged.append(bytes(outcome.merged))
    return merged


class Joiner(torch.nn.Module):
    """The trainers' model, in PyTorch, before any training: zeros."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(MODEL_FLOATS))
        self.b = torch.nn.Parameter(torch.zeros(10))


def callback_joins(socket: Path) -> tuple[Joiner, str]:
    """A SwarmCallback on the late node: before its first sync it loads the swarm's model;
    that sync's round then waits for a peer in vain (syncTimeout) and keeps those weights."""
    stream = io.StringIO()
    logger = logging.getLogger("test_real_latest")
    logger.addHandler(logging.StreamHandler(stream))
    logger.setLevel(logging.INFO)
    joiner = Joiner()
    callback = SwarmCallback(
        1, 2, model=joiner, nodeSocket=str(socket), syncTimeout=2, logger=logger
    )
    try:
        callback.on_train_begin()
    finally:
        callback.close()
    return joiner, stream.getvalue()


def test_a_daemon_that_joins_late_gets_round_2s_model(tmp_path: Path) -> None:
    pki = make_pki(tmp_path, 3, operator=False)
    operator = load_identity(IdentityPaths(pki / "sn0.pem", pki / "sn0-key.pem", pki / "ca.pem"))
    layout = layout_of(model(0))  # the chunks a SwarmCallback cuts too
    data = [tmp_path / f"n{i}" for i in range(3)]
    with node_process(pki, "sn0", data[0], "--sentinel", "--listen", "127.0.0.1:0") as (_, port0):
        join = ["--bootstrap", f"127.0.0.1:{port0}", "--listen", "127.0.0.1:0"]
        with node_process(pki, "sn1", data[1], *join) as (_, port1):
            two = lambda found: all(len(s.validators) == 2 for s in found)  # noqa: E731
            trio.run(wait_for, operator, [port0, port1], "2 validators", two)
            with ThreadPoolExecutor(2) as pool:
                runs = list(
                    pool.map(lambda i: train_two_rounds(data[i] / "sl.sock", i, layout), (0, 1))
                )
            assert runs[0] == runs[1]
            with (
                node_process(pki, "sn2", data[2], *join),
                LocalClient(data[2] / "sl.sock", timeout_s=60) as client,
            ):
                assert client.use_shared  # the model comes in the handover file
                progress: list[str] = []
                client.on_progress = progress.append
                found = client.latest(DEFAULT_CONTRACT, layout, timeout_s=30)
                # asked of both participants at once, each for a share of the chunks
                asked = [p for p in progress if "fetching the swarm's model of round 2" in p]
                assert len(asked) == 1, progress
                assert asked[0].count(",") == 1, asked
                assert found.reason == ""
                assert found.merged is not None
                assert found.round == 2
                assert bytes(found.merged) == runs[0][1]
                with pytest.raises(ConfigError, match=r"tensor 'b': shape \(11,\)"):
                    client.latest(DEFAULT_CONTRACT, layout_of(model(0, 11)), timeout_s=30)
                joined, said = callback_joins(data[2] / "sl.sock")
                swarms = unpack(runs[0][1], layout)
                assert np.array_equal(joined.w.detach().numpy(), swarms["w"])
                assert np.array_equal(joined.b.detach().numpy(), swarms["b"])
                assert "loaded the swarm's model of round 2" in said
            reply = trio.run(
                ask, operator, "127.0.0.1", port0, LedgerQuery("contracts"), LedgerReply
            )
    [contract] = [c for c in json.loads(reply.json) if c["name"] == DEFAULT_CONTRACT]
    assert found.root.hex() == contract["rounds"][1]["merged_root"]
    assert contract["rounds"][1]["round"] == 2

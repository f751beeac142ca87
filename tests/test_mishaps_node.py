"""Everyday mishaps on real ``swarm-node`` daemons (issue 16): each ends with identical weights
or one clear failure within a stated bound, and no daemon is restarted.

Four daemons (the demo's LocalSwarm: 3 of 4 validators keep the ledger going while one is
paused), trainers through the nodes' local endpoints (LocalClient) and the SwarmCallback:

- paused_node_recovers: a node stopped (SIGSTOP) past its round's deadline and resumed gets
  the round's outcome within bounded fetch tries, then joins the next round;
- model_not_fitting_contract_fails_loudly: a Keras script on a contract that holds a
  PyTorch model ends at its first sync with one SwarmError line, exit status 1;
- trainer_started_before_node: a script waits for its node's socket, then trains;
- swci_init_rerun: an SWCI init script runs twice; other settings are refused;
- final_perfdata: the final round's PERFDATA is measured on the final merged model, so two
  nodes that validate on the same data report the same figures.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from swarmlearn.consensus.ledger.app import DEFAULT_CONTRACT
from swarmlearn.consensus.ledger.txs import CreateContract
from swarmlearn.demo.swarm import LocalSwarm
from swarmlearn.merge import ModelState, flatten, layout_of
from swarmlearn.merge.manifest import Layout
from swarmlearn.roles.local.endpoint import LocalClient, RoundOutcome
from swarmlearn.roles.sl.fetch import deadline_s
from swarmlearn.swci.client import ApiClient
from swarmlearn.swci.main import main as swci_main

pytestmark = [pytest.mark.process, pytest.mark.slow]

NODES = 4
FLOATS = 10_000
ROUND_WAIT_S = 90.0  # a round of a 40 kB model, with a 10 s exchange deadline passed in it
#: After the paused node resumes, its trainer hears the round's outcome within this: the
#: fetch's deadline (roles/sl/fetch.py) and a catch-up margin.
FETCH_BOUND_S = deadline_s(FLOATS * 4) + 30.0
SCRIPT_WAIT_S = 240.0  # a Keras script's TensorFlow import is slow on a busy machine
PERF_WAIT_S = 30.0  # the final PERFDATA is a transaction after the scripts end
POLL_S = 0.2


@pytest.fixture(scope="module")
def swarm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSwarm]:
    with LocalSwarm(tmp_path_factory.mktemp("mishaps"), NODES) as running:
        yield running
        assert all(node.process.poll() is None for node in running.nodes)  # none restarted


def model(seed: int) -> ModelState:
    rng = np.random.default_rng(seed)
    return ModelState({"w": rng.standard_normal(FLOATS, dtype=np.float32)})


LAYOUT = layout_of(model(0), chunk_bytes=16 * 1024)


class Trainer:
    """One training process's connection to its node, across rounds; what its node said."""

    def __init__(self, swarm: LocalSwarm, node: int) -> None:
        self.said: list[str] = []
        self.heard = threading.Condition()
        self.client = LocalClient(
            swarm.nodes[node].socket, timeout_s=ROUND_WAIT_S, on_progress=self._hear
        )
        self.node = node

    def _hear(self, text: str) -> None:
        with self.heard:
            self.said.append(text)
            self.heard.notify_all()

    def sync(self, seed: int, min_peers: int, layout: Layout = LAYOUT) -> RoundOutcome:
        flat = bytes(flatten(model(seed), layout))
        outcome = self.client.sync_round(
            DEFAULT_CONTRACT, layout, flat, weight=1, min_peers=min_peers
        )
        merged = None if outcome.merged is None else bytes(outcome.merged)  # the file is reused
        return replace(outcome, merged=merged)

    def wait_for(self, text: str, timeout_s: float) -> bool:
        with self.heard:
            return self.heard.wait_for(lambda: any(text in s for s in self.said), timeout_s)


def all_sync(trainers: list[Trainer], seed: int, min_peers: int) -> list[RoundOutcome]:
    with ThreadPoolExecutor(len(trainers)) as pool:
        return list(pool.map(lambda t: t.sync(seed + t.node, min_peers), trainers))


def test_paused_node_recovers(swarm: LocalSwarm) -> None:
    trainers = [Trainer(swarm, node) for node in (1, 2, 3)]
    paused = trainers[-1]
    first = all_sync(trainers, 100, 3)
    assert all(o.merged is not None for o in first), [o.reason for o in first]
    assert len({o.root for o in first}) == 1

    # Node 3 checks in (the ledger has it: its trainer hears "1/2 checked in"); then its
    # daemon is stopped. Nodes 1 and 2 close the round with it, its deadline passes, and the
    # ledger re-plans the round without it.
    with ThreadPoolExecutor(3) as pool:
        waiting = pool.submit(paused.sync, 203, 2)
        assert paused.wait_for("1/2 checked in", 60.0), paused.said
        victim = swarm.nodes[3].process
        victim.send_signal(signal.SIGSTOP)
        try:
            second = list(pool.map(lambda t: t.sync(200 + t.node, 2), trainers[:2]))
        finally:
            victim.send_signal(signal.SIGCONT)
        resumed = time.monotonic()
        assert all(o.merged is not None for o in second), [o.reason for o in second]
        assert second[0].root == second[1].root
        late = waiting.result(timeout=FETCH_BOUND_S)
    took_s = time.monotonic() - resumed
    assert late.round == second[0].round
    fetches = [s for s in paused.said if "fetching the merged model" in s]
    assert len(fetches) <= 1, fetches  # before: one per block, for minutes
    if late.merged is not None:  # a peer still held the merged model
        assert late.root == second[0].root
    else:
        assert "could not be fetched" in late.reason or "failed" in late.reason, late.reason
    assert took_s < FETCH_BOUND_S

    third = all_sync(trainers, 300, 3)  # it joins the next round: identical weights
    assert all(o.merged is not None for o in third), [o.reason for o in third]
    assert len({o.root for o in third}) == 1
    assert len({o.merged for o in third}) == 1
    assert third[0].round > second[0].round
    for trainer in trainers:
        trainer.client.close()


KERAS_SCRIPT = """
import os
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np
import keras
from swarmlearning.tf import SwarmCallback

model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(32), keras.layers.Dense(10)])
model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
swarm = SwarmCallback(syncFrequency=4, minPeers=1, trainingContract="torch-lab")
x, y = np.zeros((64, 64), "float32"), np.zeros(64, "int64")
model.fit(x, y, batch_size=16, epochs=1, callbacks=[swarm], verbose=0)
print("the script ended normally")
"""


def torch_net(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))


def test_model_not_fitting_contract_fails_loudly(swarm: LocalSwarm, tmp_path: Path) -> None:
    from swarmlearn.callback.pytorch import SwarmCallback

    operator = ApiClient(f"https://127.0.0.1:{swarm.nodes[0].api_port}", swarm.operator())
    operator.submit(CreateContract("torch-lab"))
    operator.close()
    net = torch_net()
    socket = str(swarm.nodes[1].socket)
    callback = SwarmCallback(
        syncFrequency=100, minPeers=1, model=net, trainingContract="torch-lab", nodeSocket=socket
    )
    callback.on_train_begin()
    callback.on_train_end()
    callback.close()
    assert callback.rounds_done >= 1  # the contract holds the PyTorch model now

    script = tmp_path / "keras_script.py"
    script.write_text(KERAS_SCRIPT)
    environment = {**os.environ, "SWARM_NODE_SOCKET": str(swarm.nodes[2].socket)}
    environment.pop("SWARM_LOOPBACK", None)
    ran = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        env={**environment, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"},
        timeout=SCRIPT_WAIT_S,
        check=False,
    )
    assert ran.returncode == 1, ran.stdout + ran.stderr
    assert "the script ended normally" not in ran.stdout
    assert "Traceback" not in ran.stderr, ran.stderr
    (line,) = [x for x in ran.stderr.splitlines() if x.startswith("SwarmError:")]
    assert "trainingContract 'torch-lab' holds another model (" in line
    assert "the contract's is '0.weight'" in line  # the tensor, named
    assert "RESET CONTRACT torch-lab" in line


def perf_script(socket: Path, node: int, contract: str) -> None:
    """Trains on its own data; validates on data every node shares (PERFDATA's loss)."""
    from swarmlearn.callback.pytorch import SwarmCallback

    rng = np.random.default_rng(node)
    x = torch.tensor(rng.standard_normal((64, 64)), dtype=torch.float32)
    y = torch.tensor(rng.integers(0, 10, 64))
    shared = np.random.default_rng(99)
    xv = torch.tensor(shared.standard_normal((32, 64)), dtype=torch.float32)
    yv = torch.tensor(shared.integers(0, 10, 32))
    val = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(xv, yv), batch_size=16)
    net = torch_net(node)  # the first round's figures: each node's own weights
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    callback = SwarmCallback(
        syncFrequency=100,
        minPeers=2,
        model=net,
        trainingContract=contract,
        nodeSocket=str(socket),
        adsValData=val,
        lossFunction="CrossEntropyLoss",
        metricFunction="Accuracy",
        totalEpochs=1,
    )
    callback.on_train_begin()
    for start in range(0, 64, 16):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x[start : start + 16]), y[start : start + 16])
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        callback.on_batch_end()
    callback.on_epoch_end(0)
    callback.on_train_end()


def test_final_perfdata_is_measured_on_the_final_model(swarm: LocalSwarm) -> None:
    operator = ApiClient(f"https://127.0.0.1:{swarm.nodes[0].api_port}", swarm.operator())
    operator.submit(CreateContract("perf-lab"))
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda i: perf_script(swarm.nodes[i].socket, i, "perf-lab"), (1, 2)))
    # The final figures follow the final round (a transaction each, after the scripts end).
    deadline = time.monotonic() + PERF_WAIT_S
    while True:
        rows = operator.get("perfdata", contract="perf-lab")
        final = max(row["round"] for row in rows)
        last = [row for row in rows if row["round"] == final]
        if last[0]["loss"] == last[-1]["loss"] or time.monotonic() > deadline:
            break
        time.sleep(POLL_S)  # real processes: nothing to wait on but the ledger's answers
    operator.close()
    assert len(last) == 2, rows
    # the same final model, the same validation data: the same figures on both nodes
    assert last[0]["loss"] == last[1]["loss"], rows
    assert last[0]["metric"] == last[1]["metric"], rows
    first = [row for row in rows if row["round"] == 1]
    assert first[0]["loss"] != first[1]["loss"]  # measured on each node's own weights


def test_trainer_started_before_node(tmp_path: Path) -> None:
    from swarmlearn.callback.pytorch import SwarmCallback

    solo = tmp_path / "solo"
    socket = solo / "n0" / "sl.sock"  # where LocalSwarm's node will listen
    waiting = threading.Event()
    said: list[str] = []

    class Heard(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            said.append(record.getMessage())
            if "waiting for the swarm node's local endpoint" in record.getMessage():
                waiting.set()

    logger = logging.getLogger("mishaps-early-script")
    logger.addHandler(Heard())
    logger.setLevel(logging.INFO)
    rounds: list[int] = []

    def script() -> None:
        callback = SwarmCallback(
            syncFrequency=100, minPeers=1, model=torch_net(), nodeSocket=str(socket), logger=logger
        )
        callback.on_train_begin()
        callback.on_train_end()
        callback.close()
        rounds.append(callback.rounds_done)

    trainer = threading.Thread(target=script)
    trainer.start()
    try:
        assert waiting.wait(60.0), said  # it waits for its node, and says so
        with LocalSwarm(solo, 1):
            trainer.join(ROUND_WAIT_S)
    finally:
        trainer.join(ROUND_WAIT_S)
    assert rounds, said
    assert rounds[0] >= 1, said
    assert f"waiting for the swarm node's local endpoint at {socket}" in said[0]


def swci(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = swci_main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_swci_init_rerun(
    swarm: LocalSwarm,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    paths = swarm.identity_paths("operator")
    identity = ["--cert", str(paths.cert), "--key", str(paths.key), "--cacert", str(paths.ca)]
    init = tmp_path / "swci-init"
    init.write_text(
        f"CREATE CONTEXT lab WITH IP 127.0.0.1 {swarm.nodes[0].api_port}\n"
        "SWITCH CONTEXT lab\n"
        "CREATE CONTRACT init-lab\n"
        "RESET CONTRACT init-lab\n"
    )
    status, out, err = swci(capsys, "--script", str(init), *identity)
    assert status == 0, err
    assert "contract init-lab created at height" in out
    status, out, err = swci(capsys, "--script", str(init), *identity)  # run again
    assert status == 0, err
    assert "contract init-lab exists already with the same settings" in out
    other = tmp_path / "swci-other"
    other.write_text("CREATE CONTRACT init-lab WITH MERGE coordmedian\n")
    status, out, err = swci(capsys, "--script", str(other), *identity)
    assert status == 1
    assert "exists with merge method 'mean', not 'coordmedian'" in err

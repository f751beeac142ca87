"""Issue 9 end to end: an SWCI script in HPE's grammar drives a whole training on loopback.

Two real ``swarm-node`` daemons (SN + SL + SWOP, each with its SWOP profile), an operator
running ``swarmlearn ci --script`` twice, as HPE's ``swci-init`` would:

1. a task whose program does not exist, assigned WITH 2 PEERS: WAIT FOR TASKRUNNER fails and
   GET TASKRUNNER STATUS shows each SWOP's ERROR with the exit status and the program's
   complaint;
2. RESET TASKRUNNER, a contract, a RUN_SWARM task from YAML (a small PyTorch training with
   SwarmCallback), assigned WITH 2 PEERS, WAIT FOR TASKRUNNER, PERFDATA (each node's loss),
   LIST ROUNDS (every round merged by both, one merged hash per round on the ledger).

About 20 s, most of it two PyTorch imports and the training itself.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest

from swarmlearn.consensus.ledger.tasks import DEFAULT_TASKRUNNER
from swarmlearn.p2p.certs import create_ca, issue_certificate
from swarmlearn.p2p.identity import Role

pytestmark = pytest.mark.process

HERE = Path(__file__).parent
SWCI_TIMEOUT_S = 240
RUN_TASK = """\
Name: swarm_digits
TaskType: RUN_SWARM
Author: e2e
Prereq: ROOTTASK
Outcome: swarm_digits
Body:
  Command: model/train.py
  Entrypoint: python3
  WorkingDir: .
  Envvars:
    - CONTRACT: digits
  MaxRunTimeS: 180
"""
BAD_TASK = RUN_TASK.replace("swarm_digits", "bad_task").replace("model/train.py", "model/nope.py")
PROFILE = """\
groupname: e2e
taskrunner: defaulttaskbb.taskdb.sml.hpe
nodes:
  - slnodedef:
      idx: 0
      slhostname: sl{i}
      privatedata: {{src: data{i}, mType: BIND}}
      usrenvvars: [{{NODE: {i}}}]
"""


@contextmanager
def node(root: Path, i: int, *flags: str) -> Iterator[tuple[int, int]]:
    """swarm-node ``sn<i>`` with ``usr/swop<i>.yaml``; (p2p port, API port) once it serves."""
    pki, data = root / "pki", root / f"sn{i}"
    command = [sys.executable, "-m", "swarmlearn.roles.node.daemon", "--data", str(data)]
    command += ["--cert", str(pki / f"sn{i}.pem"), "--key", str(pki / f"sn{i}-key.pem")]
    command += ["--cacert", str(pki / "ca.pem"), "--listen", "127.0.0.1:0"]
    command += ["--api", "127.0.0.1:0", "--swop-profile", str(root / "usr" / f"swop{i}.yaml")]
    data.mkdir()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with (
        (data / "stderr.log").open("w") as errors,
        subprocess.Popen(
            [*command, *flags], stdout=subprocess.PIPE, stderr=errors, text=True, env=env
        ) as process,
    ):
        try:
            assert process.stdout is not None
            banner = process.stdout.readline()  # blocks until the node serves (or dies)
            assert ", api https://" in banner, (data / "stderr.log").read_text()
            yield int(banner.split("/tcp/")[1].split("/")[0]), int(banner.rsplit(":", 1)[1])
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)


def swci(root: Path, script: str) -> tuple[int, dict[str, Any]]:
    """Run an SWCI script as the operator; its exit status and its JSON documents by command."""
    path = root / "usr" / "swci-init"
    path.write_text(script)
    pki = root / "pki"
    command = [sys.executable, "-m", "swarmlearn.cli.main", "ci", "--script", str(path), "--json"]
    command += ["--cert", str(pki / "operator.pem"), "--key", str(pki / "operator-key.pem")]
    command += ["--cacert", str(pki / "ca.pem")]
    env = {**os.environ, "XDG_CONFIG_HOME": str(root / "config")}
    done = subprocess.run(
        command,
        cwd=root / "usr",
        env=env,
        capture_output=True,
        text=True,
        timeout=SWCI_TIMEOUT_S,
        check=False,
    )
    documents = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return done.returncode, {d["command"]: d for d in documents}


@pytest.fixture
def usr(tmp_path: Path) -> Path:
    ca = create_ca(tmp_path / "pki")
    for i in (0, 1):
        roles = [Role.SN, Role.SL, Role.SWOP]
        issue_certificate(ca, f"sn{i}", tmp_path / "pki", hosts=["127.0.0.1"], roles=roles)
    issue_certificate(ca, "operator", tmp_path / "pki", hosts=[], roles=[Role.SWCI])
    usr = tmp_path / "usr"
    (usr / "model").mkdir(parents=True)
    (usr / "taskdefs").mkdir()
    shutil.copy(HERE / "swop_digits_train.py", usr / "model" / "train.py")
    (usr / "taskdefs" / "swarm_digits.yaml").write_text(RUN_TASK)
    (usr / "taskdefs" / "bad_task.yaml").write_text(BAD_TASK)
    for i in (0, 1):
        (usr / f"swop{i}.yaml").write_text(PROFILE.format(i=i))
        (usr / f"data{i}").mkdir()
    return usr


def test_an_swci_script_runs_a_training_through_two_swops(usr: Path) -> None:
    root = usr.parent
    runner = DEFAULT_TASKRUNNER
    with ExitStack() as stack:
        p2p0, api0 = stack.enter_context(node(root, 0, "--sentinel"))
        stack.enter_context(node(root, 1, "--bootstrap", f"127.0.0.1:{p2p0}"))
        status, docs = swci(
            root,
            f"WAIT FOR IP 127.0.0.1 {api0}\n"
            f"CREATE CONTEXT e2e WITH IP 127.0.0.1 {api0}\n"
            "SWITCH CONTEXT e2e\n"
            "CREATE TASK FROM taskdefs/bad_task.yaml\n"
            "FINALIZE TASK bad_task\n"
            f"ASSIGN TASK bad_task TO {runner} WITH 2 PEERS\n"
            f"WAIT FOR TASKRUNNER {runner} 120\n"
            f"GET TASKRUNNER STATUS {runner}\n",
        )
        assert status == 1  # WAIT FOR TASKRUNNER failed: the task ended in ERROR
        assert docs[f"WAIT FOR TASKRUNNER {runner} 120"]["error"].count("exit status 2") == 2
        failed = docs[f"GET TASKRUNNER STATUS {runner}"]["result"]
        assert failed["state"] == "ERROR"
        reasons = list(failed["errors"].values())
        assert len(reasons) == 2
        assert all("exit status 2" in r and "can't open file" in r for r in reasons)
        status, docs = swci(
            root,
            "EXIT ON FAILURE\n"
            "CREATE CONTRACT digits\n"
            f"RESET TASKRUNNER {runner}\n"
            "CREATE TASK FROM taskdefs/swarm_digits.yaml\n"
            "FINALIZE TASK swarm_digits\n"
            f"ASSIGN TASK swarm_digits TO {runner} WITH 2 PEERS\n"
            f"WAIT FOR TASKRUNNER {runner} 200\n"
            "PERFDATA digits\n"
            "LIST ROUNDS digits\n"
            "EXIT\n",
        )
        assert status == 0, docs
    assert docs[f"WAIT FOR TASKRUNNER {runner} 200"]["result"]["state"] == "COMPLETE"
    perf = docs["PERFDATA digits"]["result"]
    assert len(perf) == 2
    assert all(p["loss"] > 0 and p["epochs_total"] == 2 for p in perf)
    rounds = docs["LIST ROUNDS digits"]["result"]
    assert len(rounds) >= 4  # a sync every 10 of 40 batches, then the final models
    for r in rounds:
        assert r["status"] == "done", r
        assert len(r["participants"]) == 2
        # done with 2 participants: both reported this root (a strict majority of 2 is both)
        assert r["merged_root"]
    for i in (0, 1):
        log = root / f"sn{i}" / "swop" / "logs" / "swarm_digits.2.node0.log"
        assert f"node {i}: trained 2 epochs on the swarm" in log.read_text()

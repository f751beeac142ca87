"""Every SWCI command against two real swarm-node daemons on loopback (one swarm per module).

Commands run in-process through a :class:`Session`, as the REPL runs them, over real mutual
TLS to the node API. Sync rounds are real: two trainers hand weights to the nodes' local
endpoints. The SWOP side of the task framework is played by the test with the SWOP
certificates' own signed transactions, so the taskrunner states SWCI shows are the ledger's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from swarmlearn.consensus.ledger import tasks as tx
from swarmlearn.errors import ConfigError
from swarmlearn.merge import ModelState, flatten, layout_of
from swarmlearn.p2p.identity import IdentityPaths
from swarmlearn.roles.local.endpoint import LocalClient, RoundOutcome
from swarmlearn.swci.client import ApiClient, CommandFailed
from swarmlearn.swci.grammar import parse
from swarmlearn.swci.runtime import Result, Session, execute
from tests.swci_swarm import Swarm, two_node_swarm

pytestmark = pytest.mark.process

TR = "defaulttaskbb.taskdb.sml.hpe"


@pytest.fixture(scope="module")
def swarm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Swarm]:
    with two_node_swarm(tmp_path_factory.mktemp("swci-swarm")) as running:
        yield running


@pytest.fixture
def session(swarm: Swarm, tmp_path: Path) -> Iterator[Session]:
    found = Session(
        directory=tmp_path / "config",
        identity=swarm.paths("operator"),
        cwd=tmp_path,
        progress=lambda text: None,
        wait_for_ip_interval_s=0.01,
        taskrunner_poll_s=0.05,
    )
    run(found, f"CREATE CONTEXT lab WITH IP 127.0.0.1 {swarm.api_ports[0]}")
    yield found
    found.close()


def run(session: Session, line: str) -> Result:
    return execute(session, parse(line))


def fails(session: Session, line: str) -> str:
    with pytest.raises((CommandFailed, ConfigError)) as caught:
        run(session, line)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_contexts_persist_switch_and_carry_variables(session: Session, swarm: Swarm) -> None:
    created = run(session, f"create context edge with ip 127.0.0.1 {swarm.api_ports[1]}")
    assert created.doc["active"] is False  # the first context (lab) stays active
    assert created.doc["cert"] == str(swarm.paths("operator").cert)
    assert [d["name"] for d in run(session, "LIST CONTEXTS").doc] == ["edge", "lab"]
    run(session, "SWITCH CONTEXT edge")
    info = run(session, "GET CONTEXT INFO")
    assert (info.doc["name"], info.doc["port"]) == ("edge", swarm.api_ports[1])
    assert run(session, "GET CONTEXT INFO lab").doc["active"] is False
    run(session, "SET CONTEXT ENV edge MAX_EPOCHS 5")
    run(session, "SET CONTEXT ENV edge NOTE 'two words'")
    assert run(session, "GET CONTEXT ENV edge NOTE").text == "two words"
    assert run(session, "LIST CONTEXT ENV edge").doc == {"MAX_EPOCHS": "5", "NOTE": "two words"}
    assert "has no variable 'NOPE' (set: MAX_EPOCHS, NOTE)" in fails(
        session, "GET CONTEXT ENV edge NOPE"
    )
    assert "no context 'egde'; did you mean 'edge'?" in fails(session, "SWITCH CONTEXT egde")
    # The file is the state: a new session (another terminal) sees the same.
    again = Session(directory=session.directory)
    assert again.active().name == "edge"
    assert run(again, "LIST NODES").doc  # the edge node's API answers too
    again.close()


def test_list_nodes_shows_sn_sl_and_swop_nodes_not_operators(
    session: Session, swarm: Swarm
) -> None:
    swop = ApiClient(swarm.url(), swarm.identity("swop1"))
    swop.submit(tx.EnrollTaskRunner(TR))  # joins first: a SWOP member
    swop.close()
    created = run(session, "CREATE CONTRACT nodes-check")  # the operator joins by itself
    nodes = run(session, "LIST NODES")
    roles = sorted(tuple(n["roles"]) for n in nodes.doc)
    assert roles == [("sl", "sn"), ("sl", "sn"), ("swop",)]
    # Last seen is liveness: both validators voted on the contract's block, although their
    # latest transaction is older (their Join).
    for node in (n for n in nodes.doc if "sn" in n["roles"]):
        assert node["alive_height"] >= created.doc["height"] > node["last_seen_height"]
        assert str(node["alive_height"]) in nodes.text
    operator = str(swarm.identity("operator").peer_id)
    assert operator[:12] not in nodes.text
    assert nodes.text.splitlines()[0].split()[:3] == ["NODE", "ROLES", "ADDRESS"]


def _model(seed: int) -> ModelState:
    rng = np.random.default_rng(seed)
    return ModelState({"w": rng.standard_normal(256).astype(np.float32)})


def _train(swarm: Swarm, node: int, contract: str) -> RoundOutcome:
    layout = layout_of(_model(0), chunk_bytes=512)
    with LocalClient(swarm.data[node] / "sl.sock", timeout_s=60) as client:
        flat = bytes(flatten(_model(node + 1), layout))
        perf = (0.5 + node, 0.8 - node / 10, 1, 3)
        return client.sync_round(contract, layout, flat, min_peers=2, perf=perf)


def test_contract_commands_with_a_real_round(session: Session, swarm: Swarm) -> None:
    created = run(session, "CREATE CONTRACT lab-mean")
    assert created.doc["height"] > 0
    assert "exists with merge method 'mean', not 'coordmedian'" in fails(
        session, "CREATE CONTRACT lab-mean with merge coordmedian"
    )
    assert (
        "merge method 'x' is not one of: coordmedian, geomedian, krum, mean, multikrum, trimmedmean"
        in fails(session, "CREATE CONTRACT lab-x with merge x")
    )
    run(session, "CREATE CONTRACT lab-median WITH MERGE coordmedian")
    assert run(session, "GET CONTRACT INFO lab-median").doc["merge_method"] == "coordmedian"
    # an init script run again: the same settings succeed and say so
    again = run(session, "CREATE CONTRACT lab-mean")
    assert again.text == "contract lab-mean exists already with the same settings"
    assert run(session, "GET CONTRACT INFO lab-mean").doc["tensors"] == 0
    assert run(session, "GET CONTRACT STATUS lab-mean").doc["rounds"] == 0
    assert run(session, "LIST ROUNDS lab-mean").text == "(no rounds yet)"
    assert run(session, "PERFDATA lab-mean").doc == []
    with ThreadPoolExecutor(2) as pool:
        outcomes = list(pool.map(lambda node: _train(swarm, node, "lab-mean"), range(2)))
    assert all(o.merged is not None for o in outcomes), [o.reason for o in outcomes]

    rounds = run(session, "LIST ROUNDS lab-mean").doc
    assert [(r["round"], len(r["participants"])) for r in rounds] == [(1, 2)]
    assert rounds[0]["merged_root"] == outcomes[0].root.hex() == outcomes[1].root.hex()
    assert rounds[0]["duration_s"] >= 0
    assert "lab-mean" in [r["contract"] for r in run(session, "LIST ROUNDS").doc]
    perf = run(session, "PERFDATA lab-mean")
    assert sorted(p["loss"] for p in perf.doc) == [0.5, 1.5]
    assert {(p["round"], p["epochs_done"], p["epochs_total"]) for p in perf.doc} == {(1, 1, 3)}
    assert perf.text.splitlines()[0].split()[:4] == ["NODE", "STATUS", "ROUND", "LOSS"]
    info = run(session, "GET CONTRACT INFO lab-mean").doc
    assert (info["tensors"], info["parameters"]) == (1, 256)
    status = run(session, "GET CONTRACT STATUS lab-mean").doc
    assert (status["latest_round"], status["rounds_merged"]) == (1, 1)
    listed = {c["name"]: c for c in run(session, "LIST CONTRACTS").doc}
    assert listed["lab-mean"]["latest_status"] == status["latest_status"]

    assert run(session, "RESET CONTRACT lab-mean").doc["height"] > created.doc["height"]
    assert run(session, "LIST ROUNDS lab-mean").doc == []
    assert run(session, "PERFDATA lab-mean").doc == []  # the new run only
    run(session, "RESET CONTRACT lab-mean")  # HPE's init scripts reset twice: not a replay
    assert "no contract 'nope'" in fails(session, "PERFDATA nope")
    assert "no contract 'nope'" in fails(session, "RESET CONTRACT nope")


TASK_YAML = """\
Name: {name}
TaskType: RUN_SWARM
Author: tester
Prereq: ROOTTASK
Outcome: trained
Body:
  Command: model/train.py --epochs 3
  Entrypoint: python3
  WorkingDir: /tmp
  Envvars:
    - MAX_EPOCHS: 3
"""


def _swop(swarm: Swarm, name: str) -> ApiClient:
    return ApiClient(swarm.url(1), swarm.identity(name))


def _report(swop: ApiClient, session: Session, runner: str, state: str, reason: str = "") -> None:
    current = run(session, f"GET TASKRUNNER INFO {runner}").doc
    swop.submit(tx.TaskPeerStatus(runner, current["task"], state, reason, current["assignment"]))


def test_task_commands(session: Session, tmp_path: Path) -> None:
    (tmp_path / "defs").mkdir()
    (tmp_path / "defs" / "draft.yaml").write_text(TASK_YAML.format(name="draft"))
    (tmp_path / "defs" / "train.yaml").write_text(TASK_YAML.format(name="train"))
    (tmp_path / "defs" / "bad.yaml").write_text("Name: x\nTaskType: BUILD\n")
    run(session, "CD defs")
    assert run(session, "PWD").doc["cwd"] == str(tmp_path / "defs")
    assert run(session, "CREATE TASK FROM draft.yaml").doc["task"] == "draft"
    assert run(session, "DELETE TASK draft").doc["task"] == "draft"
    run(session, "CREATE TASK FROM train.yaml")
    assert "bad.yaml" in fails(session, "CREATE TASK FROM bad.yaml")
    assert "file does not exist" in fails(session, "CREATE TASK FROM missing.yaml")
    info = run(session, "GET TASK INFO train").doc
    assert (info["task_type"], info["prereq"]) == ("RUN_SWARM", "ROOTTASK")
    assert info["finalized"] is False
    body = run(session, "GET TASK BODY train")
    assert body.doc["Command"] == "model/train.py --epochs 3"
    assert json.loads(body.text) == body.doc
    run(session, "FINALIZE TASK train")
    assert run(session, "GET TASK INFO train").doc["finalized"] is True
    assert "finalized: only drafts can be deleted" in fails(session, "DELETE TASK train")
    names = [t["name"] for t in run(session, "LIST TASKS").doc]
    assert "train" in names
    assert "draft" not in names


def test_taskrunner_commands_complete_and_error(
    session: Session, swarm: Swarm, tmp_path: Path
) -> None:
    (tmp_path / "run.yaml").write_text(TASK_YAML.format(name="job"))
    run(session, "CREATE TASK FROM run.yaml")
    run(session, "FINALIZE TASK job")
    run(session, "CREATE TASKRUNNER tr1")
    assert "tr1" in [r["name"] for r in run(session, "LIST TASKRUNNERS").doc]
    swops = [_swop(swarm, "swop1"), _swop(swarm, "swop2")]
    for swop in swops:
        swop.submit(tx.EnrollTaskRunner("tr1"))
    peers = run(session, "LIST TASKRUNNER PEERS tr1").doc
    assert sorted(p["node"] for p in peers) == sorted(str(s.identity.peer_id) for s in swops)

    run(session, "ASSIGN TASK job TO tr1 WITH 2 PEERS")
    assert run(session, "GET TASKRUNNER STATUS tr1").doc["state"] == "ASSIGNED"
    for swop in swops:
        _report(swop, session, "tr1", "RUNNING")
    status = run(session, "GET TASKRUNNER STATUS tr1").doc
    assert (status["state"], status["active_peers"], status["peer_type"]) == ("RUNNING", 2, "SL")
    progress: list[str] = []
    session.progress = progress.append
    assert "still RUNNING after 0.2 s" in fails(session, "WAIT FOR TASKRUNNER tr1 0.2")
    assert progress.count("#") >= 1  # polled and showed it
    for swop in swops:
        _report(swop, session, "tr1", "COMPLETE")
    done = run(session, "WAIT FOR TASKRUNNER tr1 30")
    assert (done.doc["state"], done.doc["completed_peers"]) == ("COMPLETE", 2)

    run(session, "RESET TASKRUNNER tr1")
    run(session, "RESET TASKRUNNER tr1")  # as HPE's scripts do: before and after a run
    assert run(session, "GET TASKRUNNER STATUS tr1").doc["state"] == "IDLE"
    run(session, "ASSIGN TASK job TO tr1 WITH ALL PEERS")
    for swop in swops:
        _report(swop, session, "tr1", "RUNNING")
    _report(swops[0], session, "tr1", "ERROR", "exit status 127: python3: bad-command not found")
    _report(swops[1], session, "tr1", "COMPLETE")
    failed = fails(session, "WAIT FOR TASKRUNNER tr1 30")
    assert "task job ended in ERROR" in failed
    assert "bad-command not found" in failed
    listed = {p["node"]: p for p in run(session, "LIST TASKRUNNER PEERS tr1").doc}
    first = str(swops[0].identity.peer_id)
    assert listed[first]["state"] == "ERROR"
    by_id = run(session, f"GET TASKRUNNER PEER STATUS tr1 {first[:10]}").doc
    assert (by_id["state"], by_id["reason"]) == ("ERROR", listed[first]["reason"])
    by_index = run(session, f"GET TASKRUNNER PEER STATUS tr1 {listed[first]['index']}").doc
    assert by_index == by_id
    assert "no peer is '7' (give an index 0..1 or a node id)" in fails(
        session, "GET TASKRUNNER PEER STATUS tr1 7"
    )

    run(session, f"ASSIGN TASK job TO tr1 TARGET {first}")  # retry the failed SWOP
    assert run(session, "GET TASKRUNNER INFO tr1").doc["counts"]["IDLE"] == 1
    # The same assignment and the same reports as before: nonces make them new transactions.
    _report(swops[0], session, "tr1", "RUNNING")
    _report(swops[0], session, "tr1", "COMPLETE")
    assert run(session, "WAIT FOR TASKRUNNER tr1").doc["state"] == "COMPLETE"
    assert "no taskrunner 'nope'" in fails(session, "ASSIGN TASK job TO nope WITH 1 PEERS")
    for swop in swops:
        swop.close()


def test_misc_commands(session: Session, swarm: Swarm) -> None:
    answered = run(session, f"WAIT FOR IP 127.0.0.1 {swarm.api_ports[0]} 3")
    assert answered.doc["tries"] == 1
    closed = swarm.api_ports[0] + 1 if swarm.api_ports[0] < 65535 else 1
    if closed in swarm.api_ports:
        closed = 1
    message = fails(session, f"WAIT FOR IP 127.0.0.1 {closed} 3")
    assert message.startswith(f"WAIT FOR IP 127.0.0.1:{closed}: no answer after 3 tries")
    assert run(session, "SLEEP 0.01").doc == {"slept_s": 0.01}
    assert run(session, "EXIT ON FAILURE").doc == {"exit_on_failure": True}
    assert session.exit_on_failure
    run(session, "EXIT ON FAILURE OFF")
    assert not session.exit_on_failure
    assert run(session, "EXIT").exit
    assert run(session, "HELP PERFDATA").text.startswith("PERFDATA <name>")
    assert "is not a directory" in fails(session, "CD /nonexistent/dir")


def test_failures_are_one_clear_line(session: Session, swarm: Swarm, tmp_path: Path) -> None:
    assert fails(session, "GET CONTRACT INFO nope") == "no contract 'nope'"
    run(session, "CREATE CONTEXT dead WITH IP 127.0.0.1 1")
    run(session, "SWITCH CONTEXT dead")
    assert "cannot reach the node API at https://127.0.0.1:1" in fails(session, "LIST NODES")
    stranger = Session(directory=tmp_path / "stranger", identity=swarm.paths("stranger", "other"))
    run(stranger, f"CREATE CONTEXT lab WITH IP 127.0.0.1 {swarm.api_ports[0]}")
    message = fails(stranger, "LIST NODES")
    assert "certificate" in message
    assert "127.0.0.1" in message
    stranger.close()
    # A stranger that trusts the swarm's CA too: our side is happy, the node hangs up.
    bundle = tmp_path / "both.pem"
    other_ca = (swarm.root / "other" / "ca.pem").read_text()
    bundle.write_text(other_ca + swarm.paths("n0").ca.read_text())
    paths = swarm.paths("stranger", "other")
    trusting = Session(
        directory=tmp_path / "stranger", identity=IdentityPaths(paths.cert, paths.key, bundle)
    )
    run(trusting, f"CREATE CONTEXT lab WITH IP 127.0.0.1 {swarm.api_ports[0]}")
    assert "it most likely rejected your certificate" in fails(trusting, "LIST NODES")
    trusting.close()
    bare = Session(directory=tmp_path / "bare")
    run(bare, f"CREATE CONTEXT lab WITH IP 127.0.0.1 {swarm.api_ports[0]}")
    assert "context 'lab' has no cert, key, cacert: give --cert" in fails(bare, "LIST NODES")
    given = Session(directory=tmp_path / "bare", identity=swarm.paths("operator"))
    assert run(given, "LIST NODES").doc  # a context made without identity uses --cert etc.
    given.close()
    assert "no active context" in fails(Session(directory=tmp_path / "none"), "LIST NODES")


INIT_SCRIPT = """\
EXIT ON FAILURE
wait for ip 127.0.0.1 {port}
create context test-mnist with ip 127.0.0.1 {port}
switch context test-mnist
cd {directory}
CREATE CONTRACT init-contract
CREATE TASK FROM taskdefs/init_task.yaml
FINALIZE TASK init_task
GET TASK INFO init_task
LIST TASKS
CREATE TASKRUNNER init-tr
ASSIGN TASK init_task TO init-tr WITH 1 PEERS
WAIT FOR TASKRUNNER init-tr 0.5
LIST CONTRACTS
"""


def test_an_hpe_init_script_through_the_swci_command(swarm: Swarm, tmp_path: Path) -> None:
    """The real ``swci`` executable runs an init script in HPE's grammar; nobody runs the
    task, so the bounded WAIT fails and EXIT ON FAILURE ends the script with status 1."""
    (tmp_path / "taskdefs").mkdir()
    (tmp_path / "taskdefs" / "init_task.yaml").write_text(TASK_YAML.format(name="init_task"))
    script = tmp_path / "swci-init"
    script.write_text(INIT_SCRIPT.format(port=swarm.api_ports[0], directory=tmp_path))
    operator = swarm.paths("operator")
    env = {
        **os.environ,
        "XDG_CONFIG_HOME": str(tmp_path / "cfg"),
        "SWARM_ID_CERT": str(operator.cert),
        "SWARM_ID_KEY": str(operator.key),
        "SWARM_ID_CACERT": str(operator.ca),
    }
    swci = Path(sys.executable).with_name("swci")
    done = subprocess.run(
        [str(swci), "--json", "--script", str(script)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    documents = [json.loads(line) for line in done.stdout.splitlines()]
    assert done.returncode == 1, done.stderr
    assert [d["ok"] for d in documents] == [True] * 12 + [False]
    assert documents[9]["result"][0]["name"] == "init_task"
    assert documents[-1]["error"] == "WAIT FOR TASKRUNNER init-tr: still ASSIGNED after 0.5 s"
    assert done.stderr.strip().endswith("still ASSIGNED after 0.5 s")

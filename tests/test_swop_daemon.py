"""A real ``swarm-node`` that is also a SWOP: tasks from the ledger end COMPLETE or ERROR with
the reason in the API, prereqs chain, RESET TASKRUNNER stops a running program; and
``swarmlearn collect-logs`` packs what the host holds, without secrets.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from cryptography.hazmat.primitives.serialization import Encoding

from swarmlearn.cli.main import main
from swarmlearn.consensus.ledger.app import sign_transaction
from swarmlearn.consensus.ledger.tasks import (
    AssignTask,
    CreateTask,
    CreateTaskRunner,
    FinalizeTask,
    ResetTaskRunner,
)
from swarmlearn.consensus.ledger.txs import Join
from swarmlearn.p2p.certs import create_ca, issue_certificate
from swarmlearn.p2p.identity import IdentityPaths, Role, load_identity
from swarmlearn.p2p.tls import client_context
from swarmlearn.p2p.wire import Message
from swarmlearn.roles.swop.profile import load_task_yaml
from tests.test_swop import task_file

POLL_S = 0.1
WAIT_S = 60.0


@dataclass(frozen=True)
class FailedRun:
    root: Path
    data: Path
    runner: dict[str, Any]  # GET /v1/taskrunners/lab-runner at the end


def make_host(root: Path) -> None:
    """A CA, a host certificate (sn, sl, swop), an operator's, node.toml and usr/profile.yaml."""
    pki = root / "pki"
    ca = create_ca(pki)
    roles = [Role.SN, Role.SL, Role.SWOP]
    issue_certificate(ca, "host1", pki, hosts=["127.0.0.1"], roles=roles)
    issue_certificate(ca, "op", pki, hosts=[], roles=[Role.SWCI])
    (root / "node.toml").write_text(
        f'cert = "{pki}/host1.pem"\nkey = "{pki}/host1-key.pem"\ncacert = "{pki}/ca.pem"\n'
    )
    usr = root / "usr"
    usr.mkdir()
    (usr / "profile.yaml").write_text(
        "groupname: lab\ntaskrunner: lab-runner\nenvvars: [{API_TOKEN: hunter2}]\n"
        "nodes: [{slnodedef: {idx: 0, privatedata: {src: data}}}]\n"
    )
    (usr / "data").mkdir()


class Operator:
    """Signs and submits as the operator over the node's HTTP API (what SWCI does)."""

    def __init__(self, root: Path, url: str, http: httpx.AsyncClient) -> None:
        pki = root / "pki"
        self.identity = load_identity(
            IdentityPaths(pki / "op.pem", pki / "op-key.pem", pki / "ca.pem")
        )
        self.url, self.http = url, http
        self.runner_url = f"{url}/v1/taskrunners/lab-runner"

    async def submit(self, body: Message) -> None:
        chain = (await self.http.get(f"{self.url}/v1/health")).json()["chain"]
        tx = sign_transaction(self.identity, chain, body)
        reply = (await self.http.post(f"{self.url}/v1/transactions?wait=30", content=tx)).json()
        assert reply["accepted"], reply

    async def start(self) -> None:
        await self.submit(Join("", self.identity.certificate.public_bytes(Encoding.DER)))
        await self.submit(CreateTaskRunner("lab-runner"))  # the SWOP waits for it, then enrols
        await poll(self.http, self.runner_url, lambda r: len(r["listeners"]) == 1, "enrolment")

    async def run_task(self, task: CreateTask, peers: int = 1) -> dict[str, Any]:
        """Create, finalize, assign; the runner once the task is over."""
        await self.submit(task)
        await self.submit(FinalizeTask(task.name))
        await self.submit(AssignTask(task.name, "lab-runner", peers))
        done: dict[str, Any] = await poll(
            self.http, self.runner_url, lambda r: r["state"] in ("COMPLETE", "ERROR"), "end"
        )
        return done

    async def reset(self) -> None:
        await self.submit(ResetTaskRunner("lab-runner", nonce=time.time_ns()))


def client(root: Path) -> httpx.AsyncClient:
    pki = root / "pki"
    op = load_identity(IdentityPaths(pki / "op.pem", pki / "op-key.pem", pki / "ca.pem"))
    return httpx.AsyncClient(verify=client_context(op), timeout=30)


@pytest.fixture(scope="module")
def failed_run(tmp_path_factory: pytest.TempPathFactory) -> FailedRun:
    """A real swarm-node SWOP takes a RUN_SWARM task whose program does not exist."""
    root = tmp_path_factory.mktemp("daemon")
    make_host(root)
    task = load_task_yaml(
        task_file(
            root / "usr", "bad_run", "RUN_SWARM", "Command: no_such_script.py\nEntrypoint: python3"
        )
    )

    async def drive(url: str) -> dict[str, Any]:
        async with client(root) as http:
            operator = Operator(root, url, http)
            await operator.start()
            return await operator.run_task(task)

    with swop_daemon(root, root / "host1") as url:
        runner = trio.run(drive, url)
    return FailedRun(root, root / "host1", runner)


@contextmanager
def swop_daemon(root: Path, data: Path) -> Iterator[str]:
    """A sentinel swarm-node that is also a SWOP (SWOP_PROFILE, HPE's variable); its API URL."""
    command = [sys.executable, "-m", "swarmlearn.roles.node.daemon", "--data", str(data)]
    command += ["--config", str(root / "node.toml"), "--sentinel", "--listen", "127.0.0.1:0"]
    command += ["--api", "127.0.0.1:0"]
    profile = str(root / "usr" / "profile.yaml")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "SWOP_PROFILE": profile}
    data.mkdir(parents=True)
    with (
        (data / "stderr.log").open("w") as errors,
        subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=errors, text=True, env=env
        ) as node,
    ):
        try:
            assert node.stdout is not None
            banner = node.stdout.readline()  # blocks until the node serves (or dies)
            assert ", api " in banner, (data / "stderr.log").read_text()
            yield banner.split(", api ")[1].strip()
        finally:
            node.send_signal(signal.SIGTERM)
            node.wait(timeout=30)


async def poll(http: httpx.AsyncClient, url: str, done: Any, what: str) -> Any:
    """GET ``url`` until ``done(json)``; the real daemon gives nothing else to wait on."""
    found = None
    with trio.move_on_after(WAIT_S):
        while True:
            found = (await http.get(url)).json()
            if done(found):
                return found
            await trio.sleep(POLL_S)
    raise AssertionError(f"no {what} within {WAIT_S} s: {found}")


def test_a_swop_daemon_reports_a_failing_run_as_error_with_the_reason(
    failed_run: FailedRun,
) -> None:
    done = failed_run.runner
    assert (done["task"], done["state"], done["peer_type"]) == ("bad_run", "ERROR", "SL")
    assert done["counts"]["ERROR"] == 1
    [peer] = done["peers"]
    assert peer["reason"].startswith("node 0: exit status 2: ")
    assert "can't open file" in peer["reason"]
    assert "no_such_script.py" in peer["reason"]
    logs = sorted((failed_run.data / "swop" / "logs").glob("bad_run.*.log"))
    assert [p.name for p in logs] == ["bad_run.1.node0.log"]
    assert "no_such_script.py" in logs[0].read_text()


@pytest.mark.process
def test_collect_logs_packs_logs_config_versions_and_ledger_without_secrets(
    failed_run: FailedRun, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root = failed_run.root
    monkeypatch.setenv("SWARM_API_TOKEN", "hunter2")
    monkeypatch.setenv("SWARM_ID_KEY", str(root / "pki" / "host1-key.pem"))
    output = root / "report.tar.gz"
    argv = ["collect-logs", "--data-dir", str(failed_run.data), "-o", str(output)]
    argv += ["--config", str(root / "node.toml"), "--swop-profile", str(root / "usr/profile.yaml")]
    assert main(argv) == 0
    assert f"wrote {output}" in capsys.readouterr().out
    with tarfile.open(output) as archive:
        files = {
            m.name.split("/", 1)[1]: archive.extractfile(m).read()  # type: ignore[union-attr]
            for m in archive.getmembers()
        }
    assert {"versions.json", "environment.json", "files.txt", "ledger.json"} <= set(files)
    assert "logs/stderr.log" in files
    assert b"no_such_script.py" in files["logs/swop/logs/bad_run.1.node0.log"]
    assert not any(name.startswith("logs/ledger/") for name in files)  # binary, not logs
    ledger = json.loads(files["ledger.json"])
    assert [t["name"] for t in ledger["tasks"]] == ["bad_run"]
    runners = {r["name"]: r for r in ledger["taskrunners"]}
    assert runners["lab-runner"]["peers"] == failed_run.runner["peers"]  # replayed offline
    assert json.loads(files["versions.json"])["swarmlearn"]
    env = json.loads(files["environment.json"])
    assert env["SWARM_API_TOKEN"] == "<redacted>"
    assert env["SWARM_ID_KEY"].endswith("host1-key.pem")  # a key's path, not the key
    config = json.loads(files["config/node.toml.json"])
    assert config["key"].endswith("host1-key.pem")
    assert b"API_TOKEN: <redacted>" in files["config/swop-profile.yaml"]
    everything = b"".join(files.values())
    assert b"PRIVATE KEY" not in everything
    assert b"hunter2" not in everything
    assert main(["collect-logs", "--data-dir", str(root / "nope")]) == 2


@pytest.mark.process
def test_a_swop_daemon_chains_env_then_run_and_stops_a_run_on_reset(tmp_path: Path) -> None:
    make_host(tmp_path)
    usr = tmp_path / "usr"
    env = load_task_yaml(task_file(usr, "env", "MAKE_USER_ENV", "Requirements: []"))
    show = 'Command: -c "import sys; print(sys.prefix)"'
    run = load_task_yaml(task_file(usr, "run", "RUN_SWARM", show, prereq="env"))
    (usr / "wait.py").write_text(
        "import os, time\n"
        "open(os.environ['SWARM_PRIVATE_DATA'] + '/pid', 'w').write(str(os.getpid()))\n"
        "time.sleep(600)  # until RESET TASKRUNNER stops it\n"
    )
    long_run = load_task_yaml(task_file(usr, "long_run", "RUN_SWARM", "Command: wait.py"))

    async def drive(url: str) -> None:
        async with client(tmp_path) as http:
            operator = Operator(tmp_path, url, http)
            await operator.start()
            assert (await operator.run_task(env))["state"] == "COMPLETE"
            await operator.reset()
            assert (await operator.run_task(run))["state"] == "COMPLETE"  # its prereq is done
            await operator.reset()
            await operator.submit(long_run)
            await operator.submit(FinalizeTask("long_run"))
            await operator.submit(AssignTask("long_run", "lab-runner"))  # WITH ALL PEERS
            await poll(http, operator.runner_url, lambda r: r["state"] == "RUNNING", "RUNNING")
            pid_file = usr / "data" / "pid"
            await until(lambda: pid_file.exists() and bool(pid_file.read_text()), "the program")
            pid = int(pid_file.read_text())
            await operator.reset()
            await until(lambda: not alive(pid), "the program stopped by the SWOP")
            idle = (await http.get(operator.runner_url)).json()
            assert (idle["state"], idle["task"], idle["peers"]) == ("IDLE", None, [])

    with swop_daemon(tmp_path, tmp_path / "host1") as url:
        trio.run(drive, url)
    logs = tmp_path / "host1" / "swop" / "logs"
    assert (logs / "run.2.node0.log").read_text().strip() == str(
        tmp_path / "host1" / "swop" / "envs" / "env-out"
    )  # the program ran in the environment its prereq built


async def until(check: Callable[[], bool], what: str) -> None:
    """Poll a real process's traces until ``check()``, within ``WAIT_S``."""
    with trio.move_on_after(WAIT_S):
        while True:
            if check():
                return
            await trio.sleep(POLL_S)
    raise AssertionError(f"no {what} within {WAIT_S} s")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True

"""SWOP: YAML checks (one line naming the field), each task type for real (subprocesses,
files, a virtualenv). The real daemon's tests are in ``test_swop_daemon.py``.
"""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import pytest
import trio

from swarmlearn.consensus.ledger.tasks import (
    canonical_json,
)
from swarmlearn.errors import ConfigError
from swarmlearn.roles.swop.profile import Profile, load_profile, load_task_yaml
from swarmlearn.roles.swop.tasks import TaskFailed, Workspace, execute

TASK = """\
Name: {name}
TaskType: {kind}
Author: test
Prereq: {prereq}
Outcome: {name}-out
Body:
{body}
"""
PROFILE = """\
groupname: lab
taskrunner: {runner}
policyuri: ~
envvars:
  - SHARED: from-profile
nodes:
  - slnodedef:
      idx: 0
      slhostname: sl0
      privatedata: {{src: private0, mType: BIND}}
      usrenvvars: [{{WHO: node0}}]
  - slnodedef:
      idx: 1
      privatedata: {{src: private1}}
      usrenvvars: [{{WHO: node1}}]
"""


def task_file(tmp_path: Path, name: str, kind: str, body: str, prereq: str = "ROOTTASK") -> Path:
    path = tmp_path / f"{name}.yaml"
    indented = "\n".join(f"    {line}" for line in body.splitlines())
    path.write_text(TASK.format(name=name, kind=kind, prereq=prereq, body=indented))
    return path


def profile_file(tmp_path: Path, runner: str = "defaulttaskbb.taskdb.sml.hpe") -> Profile:
    (tmp_path / "profile.yaml").write_text(PROFILE.format(runner=runner))
    return load_profile(tmp_path / "profile.yaml")


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("Name: t\n", "TaskType: missing (required: Name, TaskType, Author, Prereq, Outcome"),
        ("- a list\n", "expected a mapping of Name, TaskType"),
        ("Name: [t\n", "not valid YAML at line 2"),
        (TASK.format(name="t", kind="BUILD", prereq="ROOTTASK", body="  Command: x"),
         "TaskType: 'BUILD' is not one of: RUN_SWARM, MAKE_SWARM_USER_CONTENT, MAKE_USER_ENV"),
        (TASK.format(name="a b", kind="RUN_SWARM", prereq="ROOTTASK", body="  Command: x"),
         "Name: no spaces, and not ROOTTASK"),
        (TASK.format(name="t", kind="RUN_SWARM", prereq="ROOTTASK", body="  Entrypoint: x"),
         "Body.Command: missing: the program to run"),
        (TASK.format(name="t", kind="RUN_SWARM", prereq="ROOTTASK", body="  Comand: x"),
         "Body.Comand: unknown key; valid: Command, Entrypoint, WorkingDir"),
        (TASK.format(name="t", kind="RUN_SWARM", prereq="ROOTTASK",
                     body="  Command: x\n  Envvars: [{1A: x}]"),
         "Body.Envvars[0]: '1A' is not a valid variable name"),
        (TASK.format(name="t", kind="MAKE_SWARM_USER_CONTENT", prereq="ROOTTASK",
                     body="  OpsList: [{Operation: FETCH, Target: x}]"),
         "Body.OpsList[0].Operation: 'FETCH' is not one of: DOWNLOAD, COPY, EXTRACT"),
        (TASK.format(name="t", kind="MAKE_SWARM_USER_CONTENT", prereq="ROOTTASK",
                     body="  OpsList: [{Operation: DOWNLOAD, Target: 'https://x/y.tgz'}]"),
         "Body.OpsList[0].Target: only local paths and file:// URIs (no network)"),
        (TASK.format(name="t", kind="MAKE_SWARM_USER_CONTENT", prereq="ROOTTASK",
                     body="  OpsList: []"),
         "Body.OpsList: expected a list of 1..20 operations"),
        (TASK.format(name="t", kind="MAKE_USER_ENV", prereq="ROOTTASK", body="  Inherit: maybe"),
         "Body.Inherit: expected true or false"),
    ],
)  # fmt: skip
def test_task_yaml_mistakes_get_one_line_naming_the_field(
    tmp_path: Path, text: str, error: str
) -> None:
    path = tmp_path / "task.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_task_yaml(path)
    message = str(caught.value)
    assert message.startswith(f"task {path}: ")
    assert error in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("groupname: g\nnodes: []\n", "taskrunner: missing"),
        ("groupname: g\ntaskrunner: r\nnodes: []\n", "nodes: expected a list of one or more"),
        ("groupname: g\ntaskrunner: r\nnodse: []\n",
         "nodse: unknown key; valid: groupname, taskrunner, nodes, envvars, apisrv"),
        ("groupname: g\ntaskrunner: r\nnodes: [{slnodedef: {idx: -1}}]\n",
         "nodes[0].slnodedef.idx: expected a whole number >= 0"),
        ("groupname: g\ntaskrunner: r\nnodes: [{slnodedef: {idx: 0}}]\n",
         "nodes[0].slnodedef.privatedata: expected a mapping of src, mType"),
        ("groupname: g\ntaskrunner: r\nnodes:\n"
         "  - slnodedef: {idx: 0, privatedata: {src: d}}\n"
         "  - slnodedef: {idx: 0, privatedata: {src: d}}\n",
         "nodes[1].slnodedef.idx: 0 is used twice"),
        ("groupname: g\ntaskrunner: r\nnodes:\n  - slnodedef:\n      idx: 0\n"
         "      privatedata: {src: d}\n      identity: [{attribute: {aType: PASSWORD, src: x}}]\n",
         "nodes[0].slnodedef.identity[0].attribute.aType: 'PASSWORD' is not one of: KEY, CERT"),
        ("groupname: g\ntaskrunner: r\napisrv: {locator: {host: sn1, port: 0}}\n"
         "nodes: [{slnodedef: {idx: 0, privatedata: {src: d}}}]\n",
         "apisrv.locator.port: expected a port number (1..65535)"),
    ],
)  # fmt: skip
def test_profile_mistakes_get_one_line_naming_the_field(
    tmp_path: Path, text: str, error: str
) -> None:
    path = tmp_path / "profile.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_profile(path)
    assert str(caught.value).startswith(f"profile {path}: ")
    assert error in str(caught.value)


def test_an_hpe_style_task_file_becomes_a_create_task(tmp_path: Path) -> None:
    path = task_file(
        tmp_path,
        "swarm_mnist_task",
        "RUN_SWARM",
        "Command: model/mnist_tf.py\nEntrypoint: python3\nWorkingDir: /tmp/test\n"
        "Envvars:\n  - MAX_EPOCHS: 2\n  - SWARM_LOOPBACK: True\nPrivateContent: /tmp/test/",
        prereq="user_env_tf_build_task",
    )
    task = load_task_yaml(path)
    assert (task.name, task.task_type, task.prereq) == (
        "swarm_mnist_task",
        "RUN_SWARM",
        "user_env_tf_build_task",
    )
    assert json.loads(task.body)["Envvars"] == [{"MAX_EPOCHS": 2}, {"SWARM_LOOPBACK": True}]
    assert task.body == canonical_json(json.loads(task.body))


@pytest.mark.process
async def test_make_user_env_builds_a_venv_and_reuses_it_when_unchanged(tmp_path: Path) -> None:
    profile = profile_file(tmp_path)
    ws = Workspace(tmp_path / "swop", tmp_path / "sl.sock")
    bare = load_task_yaml(task_file(tmp_path, "env", "MAKE_USER_ENV", "Requirements: []"))
    assert "built with 0 requirements" in await execute(bare, [], profile, ws, 1)
    python = ws.env_dir("env-out") / "bin" / "python"
    seen = await trio.run_process(
        [str(python), "-c", "import sys, swarmlearn; print(sys.prefix)"], capture_stdout=True
    )
    assert Path(seen.stdout.decode().strip()) == ws.env_dir("env-out")  # its own, and inherits ours
    assert "reused" in await execute(bare, [], profile, ws, 2)
    # changed requirements: rebuilt, with pip, offline (pip is satisfied from the venv itself)
    with_pip = load_task_yaml(
        task_file(tmp_path, "env", "MAKE_USER_ENV", "Requirements: [pip]\nPipOptions: [--no-index]")
    )
    assert "built with 1 requirements" in await execute(with_pip, [], profile, ws, 3)
    broken = load_task_yaml(
        task_file(
            tmp_path,
            "env",
            "MAKE_USER_ENV",
            "Requirements: [no-such-package-xyz]\nPipOptions: [--no-index]",
        )
    )
    with pytest.raises(TaskFailed, match=r"pip install: exit status 1: .*no-such-package-xyz"):
        await execute(broken, [], profile, ws, 4)


async def test_make_swarm_user_content_copies_and_extracts_per_node(tmp_path: Path) -> None:
    profile = profile_file(tmp_path)
    ws = Workspace(tmp_path / "swop", tmp_path / "sl.sock")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "train.py").write_text("print('hi')\n")
    (tmp_path / "data.csv").write_text("1,2\n")
    with tarfile.open(tmp_path / "extra.tar.gz", "w:gz") as archive:
        archive.add(tmp_path / "data.csv", arcname="inner/data.csv")
    body = (
        "ContentType: SWARMCONTENT\nOpsList:\n"
        "  - {Operation: COPY, Target: model}\n"
        f"  - {{Operation: DOWNLOAD, Target: 'file://{tmp_path}/data.csv',"
        " Options: [{Out: d/data.csv}]}\n"
        "  - {Operation: EXTRACT, Target: extra.tar.gz, Options: [{Out: x}]}"
    )
    task = load_task_yaml(task_file(tmp_path, "content", "MAKE_SWARM_USER_CONTENT", body))
    assert "3 operations, 2 copies" in await execute(task, [], profile, ws, 1)
    for idx in (0, 1):
        root = ws.content_dir("content-out") / str(idx)
        assert (root / "model" / "train.py").read_text() == "print('hi')\n"
        assert (root / "d" / "data.csv").read_text() == "1,2\n"
        assert (root / "x" / "inner" / "data.csv").read_text() == "1,2\n"
    nope = "OpsList: [{Operation: COPY, Target: nope}]"
    missing = load_task_yaml(task_file(tmp_path, "content", "MAKE_SWARM_USER_CONTENT", nope))
    with pytest.raises(TaskFailed, match=r"OpsList\[0\]: .*nope does not exist"):
        await execute(missing, [], profile, ws, 2)


@pytest.mark.process
async def test_run_swarm_runs_one_program_per_node_with_its_env(tmp_path: Path) -> None:
    profile = profile_file(tmp_path)
    ws = Workspace(tmp_path / "swop", tmp_path / "sl.sock")
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "show.py").write_text(
        "import json, os, sys\n"
        "keys = ['SWARM_NODE_SOCKET', 'SWARM_PRIVATE_DATA', 'WHO', 'SHARED', 'EPOCHS']\n"
        "out = {k: os.environ.get(k) for k in keys}\n"
        "out['cwd'] = os.getcwd()\n"
        "print('working', file=sys.stderr)\n"
        "open(f\"out-{os.environ['SWARM_NODE_INDEX']}.json\", 'w').write(json.dumps(out))\n"
    )
    body = "Command: show.py\nEntrypoint: python3\nWorkingDir: app\nEnvvars: [{EPOCHS: 3}]"
    task = load_task_yaml(task_file(tmp_path, "run", "RUN_SWARM", body))
    assert await execute(task, [], profile, ws, 1) == "2 node(s) exited 0"
    for idx in (0, 1):
        seen = json.loads((tmp_path / "app" / f"out-{idx}.json").read_text())
        assert seen == {
            "SWARM_NODE_SOCKET": str(tmp_path / "sl.sock"),
            "SWARM_PRIVATE_DATA": str(tmp_path / f"private{idx}"),
            "WHO": f"node{idx}",
            "SHARED": "from-profile",
            "EPOCHS": "3",
            "cwd": str(tmp_path / "app"),
        }
        assert ws.log_path("run", 1, idx).read_text() == "working\n"
    failing = load_task_yaml(
        task_file(tmp_path, "run", "RUN_SWARM", "Command: -c \"import sys; sys.exit('bad data')\"")
    )
    with pytest.raises(TaskFailed) as caught:
        await execute(failing, [], profile, ws, 2)
    assert str(caught.value) == ("node 0: exit status 1: bad data; node 1: exit status 1: bad data")
    absent = load_task_yaml(
        task_file(tmp_path, "run", "RUN_SWARM", "Command: x\nEntrypoint: nosuch-program")
    )
    with pytest.raises(TaskFailed, match="node 0: cannot start 'nosuch-program'"):
        await execute(absent, [], profile, ws, 3)


def started(directory: Path) -> list[int]:
    return [int(text) for p in directory.glob("pid-*") if (text := p.read_text())]


@pytest.mark.process
async def test_run_swarm_is_stopped_when_cancelled(tmp_path: Path) -> None:
    profile = profile_file(tmp_path)
    ws = Workspace(tmp_path / "swop", tmp_path / "sl.sock")
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "wait.py").write_text(
        "import os, sys\n"
        "open(f\"pid-{os.environ['SWARM_NODE_INDEX']}\", 'w').write(str(os.getpid()))\n"
        "import time; time.sleep(600)  # until stopped\n"
    )
    task = load_task_yaml(
        task_file(tmp_path, "run", "RUN_SWARM", "Command: wait.py\nWorkingDir: app")
    )
    pids: list[int] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(execute, task, [], profile, ws, 1)
        with trio.fail_after(30):
            while len(pids) < 2:  # poll the real processes until both have started
                pids = started(tmp_path / "app")
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # reaped: gone

"""SWCI commands on the ledger's tasks and taskrunners (HPE's SWOP task framework).

Writes are the operator transactions of :mod:`swarmlearn.consensus.ledger.tasks`; a task YAML
file becomes a ``CreateTask`` through :func:`swarmlearn.roles.swop.profile.load_task_yaml`.
WAIT FOR TASKRUNNER polls the runner until its task is done (COMPLETE, ERROR or IDLE, as
HPE's ``isTaskDone``), printing ``#`` per poll, within a bounded time.
"""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import quote

from swarmlearn.consensus.ledger import tasks as tx
from swarmlearn.roles.swop.profile import load_task_yaml
from swarmlearn.swci import commands as c
from swarmlearn.swci import render
from swarmlearn.swci.client import CommandFailed
from swarmlearn.swci.runtime import Result, Session, handles

DONE_STATES = ("COMPLETE", "ERROR", "IDLE")


def _get(session: Session, what: str, name: str) -> dict[str, Any]:
    found: dict[str, Any] = session.client().get(f"{what}/{quote(name, safe='')}")
    return found


def _submitted(session: Session, body: Any, text: str, **doc: Any) -> Result:
    height = session.client().submit(body)
    return Result({**doc, "height": height}, f"{text} at height {height}")


@handles(c.CreateTaskFrom)
def create_task_from(session: Session, command: c.CreateTaskFrom) -> Result:
    body = load_task_yaml(session.path(command.path))
    return _submitted(session, body, f"task {body.name} created", task=body.name)


@handles(c.FinalizeTask)
def finalize_task(session: Session, command: c.FinalizeTask) -> Result:
    name = command.name
    return _submitted(session, tx.FinalizeTask(name), f"task {name} finalized", task=name)


@handles(c.DeleteTask)
def delete_task(session: Session, command: c.DeleteTask) -> Result:
    name = command.name
    return _submitted(session, tx.DeleteTask(name), f"task {name} deleted", task=name)


@handles(c.GetTaskInfo)
def get_task_info(session: Session, command: c.GetTaskInfo) -> Result:
    doc = {k: v for k, v in _get(session, "tasks", command.name).items() if k != "body"}
    return Result(doc, render.fields(list(doc.items())))


@handles(c.GetTaskBody)
def get_task_body(session: Session, command: c.GetTaskBody) -> Result:
    body = _get(session, "tasks", command.name)["body"]
    return Result(body, json.dumps(body, indent=2, sort_keys=True))


@handles(c.ListTasks)
def list_tasks(session: Session, command: c.ListTasks) -> Result:
    tasks = session.client().get("tasks")
    rows = [
        (t["name"], t["task_type"], t["author"], t["prereq"], t["outcome"], t["finalized"],
         t["completed_height"] is not None)
        for t in tasks
    ]  # fmt: skip
    headers = ("NAME", "TYPE", "AUTHOR", "PREREQ", "OUTCOME", "FINALIZED", "COMPLETED")
    return Result(tasks, render.table(headers, rows, "(no tasks)"))


@handles(c.CreateTaskRunner)
def create_taskrunner(session: Session, command: c.CreateTaskRunner) -> Result:
    name = command.name
    return _submitted(
        session, tx.CreateTaskRunner(name), f"taskrunner {name} created", taskrunner=name
    )


@handles(c.AssignTask)
def assign_task(session: Session, command: c.AssignTask) -> Result:
    body = tx.AssignTask(command.task, command.runner, command.peers, command.target)
    how = (
        f"to {render.short(command.target)}"
        if command.target
        else f"with {command.peers} peers"
        if command.peers
        else "with all peers"
    )
    text = f"task {command.task} assigned to {command.runner} {how}"
    return _submitted(session, body, text, task=command.task, taskrunner=command.runner)


@handles(c.ResetTaskRunner)
def reset_taskrunner(session: Session, command: c.ResetTaskRunner) -> Result:
    name = command.name
    body = tx.ResetTaskRunner(name)
    return _submitted(session, body, f"taskrunner {name} reset", taskrunner=name)


def _status(runner: dict[str, Any]) -> dict[str, Any]:
    counts = runner["counts"]
    peers = runner.get("peers", [])
    return {
        "name": runner["name"],
        "task": runner["task"],
        "peer_type": runner["peer_type"],
        "state": runner["state"],
        "quorum": runner["quorum"],
        "active_peers": counts.get("RUNNING", 0),
        "completed_peers": counts.get("COMPLETE", 0),
        "failed_peers": counts.get("ERROR", 0),
        "assigned_height": runner["assigned_height"],
        "finished_height": runner["finished_height"],
        "errors": {p["node"]: p["reason"] for p in peers if p["state"] == "ERROR"},
    }


@handles(c.GetTaskRunnerStatus)
def get_taskrunner_status(session: Session, command: c.GetTaskRunnerStatus) -> Result:
    doc = _status(_get(session, "taskrunners", command.name))
    shown = [(k, v) for k, v in doc.items() if k != "errors"]
    shown += [(f"error {render.short(node)}", why) for node, why in doc["errors"].items()]
    return Result(doc, render.fields(shown))


@handles(c.GetTaskRunnerInfo)
def get_taskrunner_info(session: Session, command: c.GetTaskRunnerInfo) -> Result:
    runner = _get(session, "taskrunners", command.name)
    doc = {k: v for k, v in runner.items() if k != "peers"}
    shown = [(k, v) for k, v in doc.items() if k not in ("listeners", "counts")]
    shown.append(("listeners", [render.short(x["node"]) for x in runner["listeners"]]))
    shown.append(("peers", ", ".join(f"{k} {v}" for k, v in runner["counts"].items())))
    return Result(doc, render.fields(shown))


@handles(c.ListTaskRunners)
def list_taskrunners(session: Session, command: c.ListTaskRunners) -> Result:
    runners = session.client().get("taskrunners")
    rows = [
        (r["name"], r["task"], r["state"], r["quorum"], r["listeners"], r["assignment"])
        for r in runners
    ]
    headers = ("NAME", "TASK", "STATE", "QUORUM", "LISTENERS", "ASSIGNMENT")
    return Result(runners, render.table(headers, rows, "(no taskrunners)"))


def _peers(runner: dict[str, Any]) -> list[dict[str, Any]]:
    """Every SWOP enrolled on the runner (index order), with its state in the assignment."""
    peers = {p["node"]: p for p in runner["peers"]}
    found = []
    for index, listener in enumerate(runner["listeners"]):
        peer = peers.get(listener["node"], {})
        found.append(
            {
                "index": index,
                "node": listener["node"],
                "enrolled_height": listener["enrolled_height"],
                "state": peer.get("state"),
                "reason": peer.get("reason", ""),
                "heights": peer.get("heights"),
            }
        )
    return found


@handles(c.ListTaskRunnerPeers)
def list_taskrunner_peers(session: Session, command: c.ListTaskRunnerPeers) -> Result:
    docs = _peers(_get(session, "taskrunners", command.name))
    rows = [
        (d["index"], render.short(d["node"]), d["enrolled_height"], d["state"], d["reason"])
        for d in docs
    ]
    headers = ("INDEX", "NODE", "ENROLLED AT", "STATE", "REASON")
    return Result(docs, render.table(headers, rows, "(no peers listen on it)"))


@handles(c.GetTaskRunnerPeerStatus)
def get_taskrunner_peer_status(session: Session, command: c.GetTaskRunnerPeerStatus) -> Result:
    peers = _peers(_get(session, "taskrunners", command.name))
    if command.peer.isdigit():
        chosen = [p for p in peers if p["index"] == int(command.peer)]
    else:
        chosen = [p for p in peers if p["node"].startswith(command.peer)]
    if not peers:
        raise CommandFailed(f"taskrunner {command.name}: no peers listen on it")
    if len(chosen) != 1:
        what = "no peer is" if not chosen else f"{len(chosen)} peers are"
        raise CommandFailed(
            f"taskrunner {command.name}: {what} {command.peer!r} "
            f"(give an index 0..{len(peers) - 1} or a node id)"
        )
    doc = chosen[0]
    heights = doc["heights"] or {}
    shown = [(k, v) for k, v in doc.items() if k != "heights"]
    shown += [(f"{k} at", v) for k, v in heights.items()]
    return Result(doc, render.fields(shown))


@handles(c.WaitForTaskRunner)
def wait_for_taskrunner(session: Session, command: c.WaitForTaskRunner) -> Result:
    limit_s = command.timeout_s if command.timeout_s is not None else session.taskrunner_wait_s
    deadline = time.monotonic() + limit_s
    while True:
        runner = _get(session, "taskrunners", command.name)
        if runner["state"] in DONE_STATES:
            break
        if time.monotonic() >= deadline:
            session.progress("\n")
            raise CommandFailed(
                f"WAIT FOR TASKRUNNER {command.name}: still {runner['state']} after {limit_s:g} s"
            )
        session.progress("#")
        time.sleep(min(session.taskrunner_poll_s, max(0.0, deadline - time.monotonic())))
    session.progress("\n")
    doc = _status(runner)
    if doc["state"] == "ERROR":
        why = "; ".join(f"{render.short(n)}: {r}" for n, r in doc["errors"].items())
        raise CommandFailed(f"taskrunner {command.name}: task {doc['task']} ended in ERROR: {why}")
    return Result(doc, f"taskrunner {command.name}: task {doc['task']} {doc['state']}")

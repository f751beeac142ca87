"""Read-only JSON views of the ledger's tasks and taskrunners (node API, SWCI, SWOP).

A task view holds its record and, in the detailed form, its body (the JSON object the
operator wrote). A taskrunner view holds its task, its derived state (IDLE, ASSIGNED,
RUNNING, COMPLETE, ERROR), the assignment number, the quorum, its listeners, and each peer
of the assignment with its state, reason and the heights at which it was assigned, started
and finished; ``counts`` tallies the peers by state.
"""

from __future__ import annotations

import json
from typing import Any

from swarmlearn.consensus.ledger.app import SwarmApp
from swarmlearn.consensus.ledger.tasks import RunnerRecord, TaskRecord


def task(record: TaskRecord, *, with_body: bool = False) -> dict[str, Any]:
    spec = record.spec
    found: dict[str, Any] = {
        "name": spec.name,
        "task_type": spec.task_type,
        "author": spec.author,
        "prereq": spec.prereq,
        "outcome": spec.outcome,
        "finalized": record.finalized,
        "created_height": record.created_height,
        "finalized_height": record.finalized_height,
        "completed_height": record.completed_height,
    }
    if with_body:
        found["body"] = json.loads(spec.body)
    return found


def tasks(app: SwarmApp) -> list[dict[str, Any]]:
    return [task(record) for _, record in sorted(app.state.tasks.tasks.items())]


def task_named(app: SwarmApp, name: str) -> dict[str, Any] | None:
    record = app.state.tasks.tasks.get(name)
    return None if record is None else task(record, with_body=True)


def runner(app: SwarmApp, record: RunnerRecord, *, detailed: bool = False) -> dict[str, Any]:
    task_record = app.state.tasks.tasks.get(record.task) if record.task else None
    task_type = task_record.spec.task_type if task_record else None
    found: dict[str, Any] = {
        "name": record.name,
        "task": record.task,
        "task_type": task_type,
        # HPE: RUN_SWARM peers are SL/ML pairs, the other types' peers are SWOPs
        "peer_type": None if task_type is None else "SL" if task_type == "RUN_SWARM" else "SWOP",
        "state": record.state().value,
        "assignment": record.assignment,
        "quorum": record.quorum,
        "mode": "designated" if record.designated else "first-come",
        "listeners": len(record.listeners),
        "counts": record.counts(),
        "assigned_height": record.assigned_height,
        "finished_height": record.finished_height,
    }
    if detailed:
        found["listeners"] = [
            {"node": node, "enrolled_height": height}
            for node, height in sorted(record.listeners.items())
        ]
        found["peers"] = [
            {
                "node": p.node,
                "state": p.state.value,
                "reason": p.reason,
                "heights": {
                    "assigned": p.assigned_height,
                    "started": p.started_height,
                    "finished": p.finished_height,
                },
            }
            for _, p in sorted(record.peers.items())
        ]
    return found


def runners(app: SwarmApp) -> list[dict[str, Any]]:
    return [runner(app, record) for _, record in sorted(app.state.tasks.runners.items())]


def runner_named(app: SwarmApp, name: str) -> dict[str, Any] | None:
    record = app.state.tasks.runners.get(name)
    return None if record is None else runner(app, record, detailed=True)

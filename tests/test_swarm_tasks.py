"""Tasks and taskrunners on the swarm ledger: who may do what, every refusal, runner states.

Each test is a table of steps (who signs, the body, the expected outcome: "ok" or the
refusal) run through a fresh :class:`SwarmApp`, one block per step, then the state it must end
in.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives import serialization

from swarmlearn.consensus.ledger.app import SwarmApp, sign_transaction
from swarmlearn.consensus.ledger.tasks import (
    DEFAULT_TASKRUNNER,
    AssignTask,
    CreateTask,
    CreateTaskRunner,
    DeleteTask,
    EnrollTaskRunner,
    FinalizeTask,
    ResetTaskRunner,
    RunnerState,
    TaskPeerStatus,
    canonical_json,
)
from swarmlearn.consensus.ledger.txs import Join
from swarmlearn.consensus.tendermint.types import Block, BlockHeader
from swarmlearn.p2p.certs import create_ca, issue_certificate
from swarmlearn.p2p.identity import Identity, IdentityPaths, Role, load_identity
from swarmlearn.p2p.wire import Message

CHAIN = "tasks-test"
T0 = int(dt.datetime.now(dt.UTC).timestamp() * 1000)
# Certificates are valid from T0 - 5 min, whenever the fixture makes them (a long suite may
# run this module's tests more than 5 minutes after it was imported).
AT_T0 = dt.datetime.fromtimestamp(T0 / 1000, dt.UTC)
BODY = canonical_json({"Command": "train.py", "Entrypoint": "python3"})
ROLES = {
    "op": [Role.SWCI],
    "s1": [Role.SN, Role.SL, Role.SWOP],
    "s2": [Role.SWOP],
    "s3": [Role.SWOP],
    "sl": [Role.SL],
}


@dataclass(frozen=True)
class People:
    ca_der: bytes
    ids: dict[str, Identity]

    def uid(self, name: str) -> str:
        return str(self.ids[name].peer_id)


@pytest.fixture(scope="module")
def people(tmp_path_factory: pytest.TempPathFactory) -> People:
    root = tmp_path_factory.mktemp("pki")
    ca = create_ca(root, now=AT_T0)
    ids = {}
    for name, roles in ROLES.items():
        issued = issue_certificate(ca, name, root, hosts=[], roles=roles, now=AT_T0)
        ids[name] = load_identity(IdentityPaths(issued.cert_path, issued.key_path, root / "ca.pem"))
    return People(ca.certificate.public_bytes(serialization.Encoding.DER), ids)


Step = tuple[str, Message, str]  # who, body, "ok" or the exact refusal


class Ledger:
    def __init__(self, people: People) -> None:
        self.people = people
        self.app = SwarmApp(CHAIN, people.ca_der, T0)
        self.height = 0
        joins = []
        for name, identity in people.ids.items():
            der = identity.certificate.public_bytes(serialization.Encoding.DER)
            joins.append(sign_transaction(identity, CHAIN, Join(f"{name}:1", der)))
        self._block(*joins)

    def _block(self, *txs: bytes) -> None:
        self.height += 1
        header = BlockHeader(CHAIN, self.height, T0 + 100 * self.height, "v", *(b"",) * 4)
        self.app.execute_block(Block(header, txs))

    def run(self, steps: list[Step]) -> None:
        for number, (who, body, expected) in enumerate(steps):
            tx = sign_transaction(self.people.ids[who], CHAIN, body)
            self._block(tx)
            outcome = self.app.outcome(tx)
            wanted = expected if expected == "ok" else f"refused: {expected}"
            assert outcome == wanted, f"step {number}: {who} {body}"

    def runner(self, name: str = DEFAULT_TASKRUNNER) -> RunnerState:
        return self.app.state.tasks.runners[name].state()


def task(
    name: str,
    prereq: str = "ROOTTASK",
    kind: str = "RUN_SWARM",
    author: str = "ops",
    body: str = BODY,
) -> Message:
    return CreateTask(name, kind, author, prereq, f"{name}-out", body)


def ready(name: str = "t", prereq: str = "ROOTTASK") -> list[Step]:
    return [("op", task(name, prereq), "ok"), ("op", FinalizeTask(name), "ok")]


def status(runner: str, task_name: str, state: str, assignment: int, reason: str = "") -> Message:
    return TaskPeerStatus(runner, task_name, state, reason, assignment)


def test_the_default_taskrunner_exists_from_genesis(people: People) -> None:
    ledger = Ledger(people)
    assert list(ledger.app.state.tasks.runners) == [DEFAULT_TASKRUNNER]
    assert ledger.runner() == RunnerState.IDLE
    ledger.run([("s2", EnrollTaskRunner(DEFAULT_TASKRUNNER), "ok")])


def test_operators_manage_tasks_and_swops_only_report_as_themselves(people: People) -> None:
    needs_swci = "{} needs the swci role"
    needs_swop = "{} needs the swop role"
    steps: list[Step] = [
        ("s1", task("t"), needs_swci.format("CreateTask")),
        ("sl", FinalizeTask("t"), needs_swci.format("FinalizeTask")),
        ("s2", DeleteTask("t"), needs_swci.format("DeleteTask")),
        ("s2", CreateTaskRunner("r"), needs_swci.format("CreateTaskRunner")),
        ("s3", AssignTask("t", "r", 1), needs_swci.format("AssignTask")),
        ("s3", ResetTaskRunner("r"), needs_swci.format("ResetTaskRunner")),
        ("op", EnrollTaskRunner(DEFAULT_TASKRUNNER), needs_swop.format("EnrollTaskRunner")),
        ("sl", status(DEFAULT_TASKRUNNER, "t", "RUNNING", 1), needs_swop.format("TaskPeerStatus")),
    ]
    ledger = Ledger(people)
    ledger.run(steps)
    assert ledger.app.state.tasks.tasks == {}


def test_task_records_refuse_every_mistake_with_the_reason(people: People) -> None:
    steps: list[Step] = [
        ("op", task("has space"), "task name: 1..160 printable characters without spaces"),
        ("op", task("ROOTTASK"), "ROOTTASK is reserved: it means 'no prerequisite'"),
        ("op", task("t", kind="BUILD"), "task type 'BUILD' is not one of: "
         "RUN_SWARM, MAKE_SWARM_USER_CONTENT, MAKE_USER_ENV"),
        ("op", task("t", author="a" * 161), "author: at most 160 characters"),
        ("op", task("t", prereq="nope"), "prereq 'nope' is not a task (or ROOTTASK)"),
        ("op", task("t", body="{oops"), "body: not JSON text"),
        ("op", task("t", body="[1]"), "body: must be a JSON object"),
        ("op", task("t", body='{"b": 1, "a": 2}'),
         "body: not canonical JSON (sorted keys, no spaces): use canonical_json()"),
        ("op", task("t"), "ok"),
        ("op", task("t"), "task 't' exists"),
        ("op", task("u", prereq="t"), "ok"),
        ("op", DeleteTask("t"), "task 't' is the prereq of u"),
        ("op", DeleteTask("u"), "ok"),
        ("op", DeleteTask("u"), "no task 'u'"),
        ("op", FinalizeTask("u"), "no task 'u'"),
        ("op", FinalizeTask("t"), "ok"),
        ("op", FinalizeTask("t"), "task 't' is already finalized"),
        ("op", DeleteTask("t"), "task 't' is finalized: only drafts can be deleted"),
        ("op", CreateTaskRunner(""), "taskrunner name: 1..160 printable characters without spaces"),
        ("op", CreateTaskRunner(DEFAULT_TASKRUNNER), f"taskrunner {DEFAULT_TASKRUNNER!r} exists"),
        ("op", ResetTaskRunner("r"), "no taskrunner 'r'"),
        ("s2", EnrollTaskRunner("r"), "no taskrunner 'r'"),
    ]  # fmt: skip
    ledger = Ledger(people)
    ledger.run(steps)
    record = ledger.app.state.tasks.tasks["t"]
    assert record.finalized
    assert record.spec.body == BODY


def test_assignments_refuse_what_cannot_run(people: People) -> None:
    d = DEFAULT_TASKRUNNER
    s2 = people.uid("s2")
    busy = f"taskrunner {d!r} holds task 'build': RESET TASKRUNNER first"
    states = "IDLE, RUNNING, COMPLETE, ERROR"
    steps: list[Step] = [
        ("op", task("draft"), "ok"),
        *ready("build"),
        *ready("other"),
        ("op", task("run", "build"), "ok"),
        ("op", FinalizeTask("run"), "ok"),
        ("op", AssignTask("build", "nope", 1), "no taskrunner 'nope'"),
        ("op", AssignTask("nope", d, 1), "no task 'nope'"),
        ("op", AssignTask("draft", d, 1), "task 'draft' is not finalized: FINALIZE TASK first"),
        ("op", AssignTask("run", d, 1), "prereq 'build' of 'run' has not completed"),
        ("op", AssignTask("build", d, -1), "peers must be 0 (all) or more, got -1"),
        ("op", AssignTask("build", d, 1, s2), "give either a number of peers or a target, not both"),  # noqa: E501
        ("op", AssignTask("build", d), f"no SWOP listens on taskrunner {d!r}"),
        ("op", AssignTask("build", d, 0, s2), f"{s2[:16]} does not listen on taskrunner {d!r}"),
        ("s2", status(d, "build", "RUNNING", 0), f"not enrolled on taskrunner {d!r}"),
        ("s2", EnrollTaskRunner(d), "ok"),
        ("s2", status(d, "build", "RUNNING", 0), f"assignment 0 of {d!r} is over"),
        ("op", AssignTask("build", d, 1), "ok"),
        ("op", AssignTask("build", d, 1), busy),
        ("op", AssignTask("other", d, 0, s2), busy),
        ("s2", status(d, "run", "RUNNING", 1), f"taskrunner {d!r} runs 'build', not 'run'"),
        ("s2", status(d, "build", "DONE", 1), f"state 'DONE' is not one of: {states}"),
        ("s2", status(d, "build", "RUNNING", 1, "x" * 1001), "reason: at most 1000 characters"),
        ("s2", status(d, "build", "COMPLETE", 1), "COMPLETE needs RUNNING first (now not claimed)"),
        ("s2", status(d, "build", "RUNNING", 1), "ok"),
        ("s2", status(d, "build", "RUNNING", 1), "already RUNNING in assignment 1"),
        ("op", AssignTask("build", d, 0, s2), f"{s2[:16]} is already RUNNING on {d!r}"),
        ("s2", status(d, "build", "COMPLETE", 1), "ok"),
        ("s2", status(d, "build", "ERROR", 1), "ERROR needs RUNNING first (now COMPLETE)"),
        ("op", ResetTaskRunner(d), "ok"),
        ("s2", status(d, "build", "RUNNING", 1), f"assignment 1 of {d!r} is over"),
        ("op", AssignTask("run", d, 1), "ok"),  # the prereq has completed now
    ]  # fmt: skip
    ledger = Ledger(people)
    ledger.run(steps)
    assert ledger.app.state.tasks.tasks["build"].completed_height is not None
    assert ledger.runner() == RunnerState.ASSIGNED


def test_with_n_peers_the_first_n_claim_and_a_failure_fails_the_runner(people: People) -> None:
    r = "runner-2"
    ledger = Ledger(people)
    ledger.run(
        [
            ("op", CreateTaskRunner(r), "ok"),
            *[(name, EnrollTaskRunner(r), "ok") for name in ("s1", "s2", "s3")],
            *ready(),
            ("op", AssignTask("t", r, 2), "ok"),
            ("s1", status(r, "t", "RUNNING", 1), "ok"),
            ("s2", status(r, "t", "RUNNING", 1), "ok"),
            ("s3", status(r, "t", "RUNNING", 1), "the 2 peers of assignment 1 are taken"),
            ("s1", status(r, "t", "COMPLETE", 1), "ok"),
        ]
    )
    assert ledger.runner(r) == RunnerState.RUNNING
    ledger.run([("s2", status(r, "t", "ERROR", 1, "exit status 2: boom"), "ok")])
    runner = ledger.app.state.tasks.runners[r]
    assert runner.state() == RunnerState.ERROR
    assert runner.counts() == {"IDLE": 0, "RUNNING": 0, "COMPLETE": 1, "ERROR": 1}
    assert runner.peers[people.uid("s2")].reason == "exit status 2: boom"
    assert ledger.app.state.tasks.tasks["t"].completed_height is None
    # TARGET retries the failed SWOP without disturbing the one that completed
    ledger.run(
        [
            ("op", AssignTask("t", r, 0, people.uid("s2")), "ok"),
            ("s2", status(r, "t", "RUNNING", 1), "ok"),
            ("s2", status(r, "t", "COMPLETE", 1), "ok"),
        ]
    )
    assert ledger.runner(r) == RunnerState.COMPLETE
    assert runner.finished_height is not None


def test_with_all_peers_every_listener_must_complete(people: People) -> None:
    r = DEFAULT_TASKRUNNER
    ledger = Ledger(people)
    ledger.run(
        [
            ("s2", EnrollTaskRunner(r), "ok"),
            ("s3", EnrollTaskRunner(r), "ok"),
            *ready(),
            ("op", AssignTask("t", r), "ok"),
            ("s1", EnrollTaskRunner(r), "ok"),  # listens too late for this assignment
            ("s1", status(r, "t", "RUNNING", 1), "not a designated peer of assignment 1"),
            ("s2", status(r, "t", "RUNNING", 1), "ok"),
            ("s2", status(r, "t", "IDLE", 1, "stopped"), "ok"),  # gives it back
            ("s2", status(r, "t", "RUNNING", 1), "ok"),
            ("s2", status(r, "t", "COMPLETE", 1), "ok"),
        ]
    )
    assert ledger.runner(r) == RunnerState.ASSIGNED  # s3 has not started
    ledger.run(
        [
            ("s3", status(r, "t", "RUNNING", 1), "ok"),
            ("s3", status(r, "t", "COMPLETE", 1), "ok"),
        ]
    )
    assert ledger.runner(r) == RunnerState.COMPLETE
    ledger.run([("op", ResetTaskRunner(r), "ok")])
    runner = ledger.app.state.tasks.runners[r]
    assert runner.state() == RunnerState.IDLE
    assert sorted(runner.listeners) == sorted(people.uid(n) for n in ("s1", "s2", "s3"))


def test_target_on_an_idle_runner_assigns_one_swop(people: People) -> None:
    r = DEFAULT_TASKRUNNER
    ledger = Ledger(people)
    ledger.run(
        [
            ("s3", EnrollTaskRunner(r), "ok"),
            *ready(),
            ("op", AssignTask("t", r, 0, people.uid("s3")), "ok"),
            ("s3", status(r, "t", "RUNNING", 1), "ok"),
        ]
    )
    assert ledger.runner(r) == RunnerState.RUNNING
    ledger.run([("s3", status(r, "t", "ERROR", 1, "exit status 1"), "ok")])
    assert ledger.runner(r) == RunnerState.ERROR

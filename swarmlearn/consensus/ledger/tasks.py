"""Tasks and taskrunners on the swarm ledger (HPE's SWOP task framework; tags 0xA8-0xAF).

Theory of operation
-------------------
An operator (swci certificate) creates a *task* (name, type, author, prerequisite, outcome
and a body of canonical JSON text), may delete it while it is a draft, and *finalizes* it,
after which it never changes. ``Prereq: ROOTTASK`` means no prerequisite; any other prereq
names an existing task, and a task can only be assigned once its prereq has COMPLETEd on some
taskrunner (HPE's linear workflows: build the environment, then run).

A *taskrunner* is where SWOP nodes listen (``EnrollTaskRunner``, as themselves). HPE's
``defaulttaskbb.taskdb.sml.hpe`` exists from genesis. The operator assigns one task to a
taskrunner at a time, in one of three ways (``AssignTask``):

- ``peers=n > 0`` (``WITH n PEERS``): the first n listening SWOPs to claim it run it;
- ``peers=0, target=""`` (``WITH ALL PEERS``): every SWOP listening at that moment;
- ``target=node`` (``TARGET uid``): that one SWOP; on a runner already holding the same task
  it adds the SWOP (or retries it after an ERROR) without disturbing the others.

Each assignment has a number; a SWOP reports on it with ``TaskPeerStatus``: RUNNING claims a
slot (refused when the quorum is taken or the SWOP is not designated), then COMPLETE or ERROR
with the reason; IDLE gives a claim back. A report on an older assignment is refused, so a
slow SWOP cannot touch a reset runner. The runner's state derives from its peers: IDLE (no
task), ASSIGNED (nobody running yet), RUNNING, COMPLETE (the quorum completed) or ERROR
(every slot is taken, nobody runs and the quorum cannot complete). ``ResetTaskRunner`` drops
the assignment (SWOPs stop what they run for it) and keeps the listeners.

Every transaction has a ``nonce`` (:class:`~swarmlearn.consensus.ledger.txs.Unique`): the
mempool refuses bytes it has committed before, and HPE's scripts repeat requests (RESET
TASKRUNNER before and after a run). Everything here is deterministic over the transactions
and the block height; the refusal strings are what the API shows.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field

from swarmlearn.consensus.ledger.txs import Unique
from swarmlearn.p2p.wire import Message

DEFAULT_TASKRUNNER = "defaulttaskbb.taskdb.sml.hpe"
ROOT_TASK = "ROOTTASK"
TASK_TYPES = ("RUN_SWARM", "MAKE_SWARM_USER_CONTENT", "MAKE_USER_ENV")
TEXT_CHARS_MAX = 160  # HPE's limit on free-text task fields
BODY_CHARS_MAX = 64 * 1024
REASON_CHARS_MAX = 1_000


class PeerState(enum.StrEnum):
    IDLE = "IDLE"
    RUNNING = "RUNNING"
    COMPLETE = "COMPLETE"
    ERROR = "ERROR"


class RunnerState(enum.StrEnum):
    IDLE = "IDLE"
    ASSIGNED = "ASSIGNED"
    RUNNING = "RUNNING"
    COMPLETE = "COMPLETE"
    ERROR = "ERROR"


# ---------------------------------------------------------------- transactions


@dataclass(frozen=True)
class CreateTask(Unique, Message, tag=0xA8):
    """An operator defines a task; ``body`` is canonical JSON text of an object."""

    name: str
    task_type: str
    author: str
    prereq: str
    outcome: str
    body: str


@dataclass(frozen=True)
class FinalizeTask(Unique, Message, tag=0xA9):
    name: str


@dataclass(frozen=True)
class DeleteTask(Unique, Message, tag=0xAA):
    name: str


@dataclass(frozen=True)
class CreateTaskRunner(Unique, Message, tag=0xAB):
    name: str


@dataclass(frozen=True)
class AssignTask(Unique, Message, tag=0xAC):
    """``peers>0``: WITH n PEERS; ``peers=0, target=""``: WITH ALL PEERS; ``target``: TARGET."""

    task: str
    runner: str
    peers: int = 0
    target: str = ""


@dataclass(frozen=True)
class ResetTaskRunner(Unique, Message, tag=0xAD):
    name: str


@dataclass(frozen=True)
class EnrollTaskRunner(Unique, Message, tag=0xAE):
    """A SWOP listens on a taskrunner (as itself)."""

    runner: str


@dataclass(frozen=True)
class TaskPeerStatus(Unique, Message, tag=0xAF):
    """A SWOP's state in one assignment of a taskrunner (as itself)."""

    runner: str
    task: str
    state: str
    reason: str = ""
    assignment: int = 0


OPERATOR_TXS = (CreateTask, FinalizeTask, DeleteTask, CreateTaskRunner, AssignTask, ResetTaskRunner)
SWOP_TXS = (EnrollTaskRunner, TaskPeerStatus)
TaskTx = (
    CreateTask
    | FinalizeTask
    | DeleteTask
    | CreateTaskRunner
    | AssignTask
    | ResetTaskRunner
    | EnrollTaskRunner
    | TaskPeerStatus
)


def canonical_json(value: object) -> str:
    """The one text of a JSON value that the ledger accepts as a task body."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# ---------------------------------------------------------------- state


@dataclass
class TaskRecord:
    spec: CreateTask
    created_height: int
    finalized_height: int | None = None
    completed_height: int | None = None  # first time a runner completed it

    @property
    def finalized(self) -> bool:
        return self.finalized_height is not None


@dataclass
class PeerRecord:
    node: str
    state: PeerState = PeerState.IDLE
    reason: str = ""
    assigned_height: int = 0
    started_height: int | None = None
    finished_height: int | None = None


@dataclass
class RunnerRecord:
    name: str
    created_height: int = 0
    listeners: dict[str, int] = field(default_factory=dict)  # SWOP -> enrolled height
    task: str | None = None
    assignment: int = 0  # counts assignments; a report names the one it is about
    quorum: int = 0
    designated: bool = False  # ALL / TARGET: only the named peers may run it
    peers: dict[str, PeerRecord] = field(default_factory=dict)
    assigned_height: int | None = None
    finished_height: int | None = None

    def counts(self) -> dict[str, int]:
        found = {state.value: 0 for state in PeerState}
        for peer in self.peers.values():
            found[peer.state.value] += 1
        return found

    def state(self) -> RunnerState:
        if self.task is None:
            return RunnerState.IDLE
        counts = self.counts()
        if counts["COMPLETE"] >= self.quorum:
            return RunnerState.COMPLETE
        if counts["RUNNING"]:
            return RunnerState.RUNNING
        if counts["ERROR"] and not counts["IDLE"] and len(self.peers) >= self.quorum:
            return RunnerState.ERROR  # every slot taken, nobody left to run: cannot complete
        return RunnerState.ASSIGNED


@dataclass
class TaskBook:
    """The tasks and taskrunners of one ledger."""

    tasks: dict[str, TaskRecord] = field(default_factory=dict)
    runners: dict[str, RunnerRecord] = field(
        default_factory=lambda: {DEFAULT_TASKRUNNER: RunnerRecord(DEFAULT_TASKRUNNER)}
    )

    def apply(self, sender: str, body: TaskTx, height: int) -> str:
        """Execute one permitted transaction: "" when done, otherwise why it is refused."""
        match body:
            case CreateTask():
                return self._create(body, height)
            case FinalizeTask(name=name):
                task = self.tasks.get(name)
                if task is None:
                    return f"no task {name!r}"
                if task.finalized:
                    return f"task {name!r} is already finalized"
                task.finalized_height = height
            case DeleteTask(name=name):
                return self._delete(name)
            case CreateTaskRunner(name=name):
                problem = _name_problem("taskrunner", name)
                if problem:
                    return problem
                if name in self.runners:
                    return f"taskrunner {name!r} exists"
                self.runners[name] = RunnerRecord(name, height)
            case AssignTask():
                return self._assign(body, height)
            case ResetTaskRunner(name=name):
                runner = self.runners.get(name)
                if runner is None:
                    return f"no taskrunner {name!r}"
                runner.task, runner.quorum, runner.designated = None, 0, False
                runner.peers = {}
                runner.assigned_height = runner.finished_height = None
            case EnrollTaskRunner(runner=name):
                runner = self.runners.get(name)
                if runner is None:
                    return f"no taskrunner {name!r}"
                runner.listeners.setdefault(sender, height)
            case TaskPeerStatus():
                return self._report(sender, body, height)
        return ""

    # ------------------------------------------------------------ tasks

    def _create(self, body: CreateTask, height: int) -> str:
        problem = _name_problem("task", body.name)
        if problem:
            return problem
        if body.name == ROOT_TASK:
            return f"{ROOT_TASK} is reserved: it means 'no prerequisite'"
        if body.name in self.tasks:
            return f"task {body.name!r} exists"
        if body.task_type not in TASK_TYPES:
            return f"task type {body.task_type!r} is not one of: {', '.join(TASK_TYPES)}"
        for what, text in (("author", body.author), ("outcome", body.outcome)):
            if len(text) > TEXT_CHARS_MAX:
                return f"{what}: at most {TEXT_CHARS_MAX} characters"
        if body.prereq != ROOT_TASK and body.prereq not in self.tasks:
            return f"prereq {body.prereq!r} is not a task (or {ROOT_TASK})"
        problem = _body_problem(body.body)
        if problem:
            return problem
        self.tasks[body.name] = TaskRecord(body, height)
        return ""

    def _delete(self, name: str) -> str:
        task = self.tasks.get(name)
        if task is None:
            return f"no task {name!r}"
        if task.finalized:
            return f"task {name!r} is finalized: only drafts can be deleted"
        dependents = sorted(n for n, t in self.tasks.items() if t.spec.prereq == name)
        if dependents:
            return f"task {name!r} is the prereq of {', '.join(dependents)}"
        del self.tasks[name]
        return ""

    # ------------------------------------------------------------ runners

    def _assign(self, body: AssignTask, height: int) -> str:
        runner = self.runners.get(body.runner)
        if runner is None:
            return f"no taskrunner {body.runner!r}"
        task = self.tasks.get(body.task)
        if task is None:
            return f"no task {body.task!r}"
        if not task.finalized:
            return f"task {body.task!r} is not finalized: FINALIZE TASK first"
        prereq = self.tasks.get(task.spec.prereq)
        if prereq is not None and prereq.completed_height is None:
            return f"prereq {task.spec.prereq!r} of {body.task!r} has not completed"
        if body.peers < 0:
            return f"peers must be 0 (all) or more, got {body.peers}"
        if body.peers and body.target:
            return "give either a number of peers or a target, not both"
        if body.target:
            return self._assign_target(runner, body, height)
        if runner.task is not None:
            return f"taskrunner {runner.name!r} holds task {runner.task!r}: RESET TASKRUNNER first"
        if body.peers:
            self._new_assignment(runner, body.task, body.peers, False, height)
            return ""
        if not runner.listeners:
            return f"no SWOP listens on taskrunner {runner.name!r}"
        self._new_assignment(runner, body.task, len(runner.listeners), True, height)
        for node in sorted(runner.listeners):
            runner.peers[node] = PeerRecord(node, assigned_height=height)
        return ""

    def _assign_target(self, runner: RunnerRecord, body: AssignTask, height: int) -> str:
        if body.target not in runner.listeners:
            return f"{body.target[:16]} does not listen on taskrunner {runner.name!r}"
        if runner.task is None:
            self._new_assignment(runner, body.task, 0, True, height)
        elif runner.task != body.task:
            return f"taskrunner {runner.name!r} holds task {runner.task!r}: RESET TASKRUNNER first"
        peer = runner.peers.get(body.target)
        if peer is not None and peer.state in (PeerState.RUNNING, PeerState.COMPLETE):
            return f"{body.target[:16]} is already {peer.state.value} on {runner.name!r}"
        if peer is None:
            runner.quorum += 1
        runner.peers[body.target] = PeerRecord(body.target, assigned_height=height)
        runner.finished_height = None
        return ""

    @staticmethod
    def _new_assignment(
        runner: RunnerRecord, task: str, quorum: int, designated: bool, height: int
    ) -> None:
        runner.task, runner.quorum, runner.designated = task, quorum, designated
        runner.assignment += 1
        runner.peers = {}
        runner.assigned_height, runner.finished_height = height, None

    def _report(self, sender: str, body: TaskPeerStatus, height: int) -> str:
        runner = self.runners.get(body.runner)
        if runner is None:
            return f"no taskrunner {body.runner!r}"
        if sender not in runner.listeners:
            return f"not enrolled on taskrunner {runner.name!r}"
        if runner.task is None or body.assignment != runner.assignment:
            return f"assignment {body.assignment} of {runner.name!r} is over"
        if body.task != runner.task:
            return f"taskrunner {runner.name!r} runs {runner.task!r}, not {body.task!r}"
        if body.state not in PeerState.__members__:
            return f"state {body.state!r} is not one of: {', '.join(PeerState)}"
        if len(body.reason) > REASON_CHARS_MAX:
            return f"reason: at most {REASON_CHARS_MAX} characters"
        state = PeerState(body.state)
        peer = runner.peers.get(sender)
        current = peer.state if peer is not None else None
        if state == PeerState.RUNNING:
            problem = self._claim_problem(runner, current)
            if problem:
                return problem
            peer = runner.peers.setdefault(sender, PeerRecord(sender, assigned_height=height))
            peer.started_height, peer.finished_height = height, None
        elif peer is None or current != PeerState.RUNNING:
            return f"{state.value} needs RUNNING first (now {current or 'not claimed'})"
        elif state == PeerState.IDLE and not runner.designated:
            del runner.peers[sender]
            return ""
        else:
            peer.finished_height = height if state != PeerState.IDLE else None
        peer.state, peer.reason = state, body.reason
        self._settle(runner, height)
        return ""

    @staticmethod
    def _claim_problem(runner: RunnerRecord, current: PeerState | None) -> str:
        if current == PeerState.IDLE:
            return ""  # designated (ALL, TARGET) or retried
        if current is not None:
            return f"already {current.value} in assignment {runner.assignment}"
        if runner.designated:
            return f"not a designated peer of assignment {runner.assignment}"
        if len(runner.peers) >= runner.quorum:
            return f"the {runner.quorum} peers of assignment {runner.assignment} are taken"
        return ""

    def _settle(self, runner: RunnerRecord, height: int) -> None:
        state = runner.state()
        if state in (RunnerState.COMPLETE, RunnerState.ERROR):
            runner.finished_height = runner.finished_height or height
        else:
            runner.finished_height = None
        if state == RunnerState.COMPLETE and runner.task is not None:
            task = self.tasks[runner.task]
            task.completed_height = task.completed_height or height


def _name_problem(what: str, name: str) -> str:
    if not name or len(name) > TEXT_CHARS_MAX or not name.isprintable() or " " in name:
        return f"{what} name: 1..{TEXT_CHARS_MAX} printable characters without spaces"
    return ""


def _body_problem(body: str) -> str:
    if len(body) > BODY_CHARS_MAX:
        return f"body: at most {BODY_CHARS_MAX} characters"
    try:
        value = json.loads(body)
    except ValueError:
        return "body: not JSON text"
    if not isinstance(value, dict):
        return "body: must be a JSON object"
    if canonical_json(value) != body:
        return "body: not canonical JSON (sorted keys, no spaces): use canonical_json()"
    return ""

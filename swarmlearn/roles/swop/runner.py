"""The SWOP role of ``swarm-node``: take tasks from the ledger and run them, one at a time.

Theory of operation
-------------------
The daemon is a ledger validator, so the SWOP reads the ledger from its own replica and
submits its transactions through its own node; it never needs another node's API.

1. Enrol: once this node is in the registry, ``EnrollTaskRunner(profile.taskrunner)`` until
   the ledger lists it as a listener (the runner may not exist yet: it waits and says so).
2. Watch: every ``POLL_S``, look at the runner. It may claim the runner's task when its own
   peer record is IDLE (WITH ALL PEERS, TARGET) or, WITH n PEERS, while slots are free. The
   claim is ``TaskPeerStatus(RUNNING)``; only a committed claim starts the work, so two SWOPs
   never take the same slot.
3. Run the task (:mod:`swop_tasks`) while a watcher follows the runner: a reset or a new
   assignment cancels the run (its processes are stopped) and nothing is reported.
4. Report COMPLETE or ERROR with the reason, until committed or the assignment is over.

A SWOP restarted while the ledger says it runs a task reports that run as ERROR (it cannot
know how far it got); TARGET retries it. Every submit waits at most ``COMMIT_WAIT_S``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import trio

from swarmlearn.consensus.ledger.app import sign_transaction
from swarmlearn.consensus.ledger.tasks import (
    ROOT_TASK,
    CreateTask,
    EnrollTaskRunner,
    PeerState,
    RunnerRecord,
    TaskPeerStatus,
)
from swarmlearn.p2p.wire import Message
from swarmlearn.roles.node.node import ValidatorNode
from swarmlearn.roles.swop.profile import Profile
from swarmlearn.roles.swop.tasks import REASON_CHARS, TaskFailed, Workspace, execute

log = logging.getLogger("swarmlearn.swop")

POLL_S = 0.2
COMMIT_WAIT_S = 30.0
CHAIN_MAX = 100
REPORT_ATTEMPTS = 50  # each waits for a commit (COMMIT_WAIT_S at most)


class Swop:
    def __init__(
        self, node: ValidatorNode, profile: Profile, *, say: Callable[[str], None] = log.info
    ) -> None:
        self.node = node
        self.profile = profile
        self.me = node.me
        self.runner_name = profile.taskrunner
        self.workspace = Workspace(
            node.options.data_dir / "swop", node.options.data_dir / "sl.sock"
        )
        self.say = say
        self.runs = 0

    def runner(self) -> RunnerRecord | None:
        return self.node.app.state.tasks.runners.get(self.runner_name)

    async def submit(self, body: Message) -> str:
        """'' when committed and accepted, otherwise why not."""
        tx = sign_transaction(self.node.identity, self.node.core.chain_id, body)
        reply = await self.node.submit(tx, COMMIT_WAIT_S)
        return "" if reply.accepted else reply.reason or "refused"

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await self._enrol()
        while True:
            await self._step()
            await trio.sleep(POLL_S)

    async def _enrol(self) -> None:
        waiting_said = False
        while True:
            runner = self.runner()
            if runner is not None and self.me in runner.listeners:
                self.say(f"swop {self.profile.groupname}: listening on {self.runner_name}")
                return
            if self.me in self.node.app.state.members:
                if runner is None and not waiting_said:
                    self.say(f"swop: waiting for taskrunner {self.runner_name} to be created")
                    waiting_said = True
                problem = await self.submit(
                    EnrollTaskRunner(self.runner_name, nonce=time.time_ns())
                )
                if problem:
                    log.debug("enrol: %s", problem)
            await trio.sleep(POLL_S)

    async def _step(self) -> None:
        runner = self.runner()
        if runner is None or runner.task is None:
            return
        mine = runner.peers.get(self.me)
        task, assignment = runner.task, runner.assignment
        if mine is not None and mine.state == PeerState.RUNNING:  # not by us: we restarted
            await self._report(task, assignment, PeerState.ERROR, "the SWOP restarted mid-run")
            return
        free = not runner.designated and mine is None and len(runner.peers) < runner.quorum
        if not (free or (mine is not None and mine.state == PeerState.IDLE)):
            return
        problem = await self.submit(self._status(task, assignment, PeerState.RUNNING, ""))
        if problem:
            log.info("claim of %s refused: %s", task, problem)
            return
        await self._execute(task, assignment)

    async def _execute(self, name: str, assignment: int) -> None:
        tasks = self.node.app.state.tasks.tasks
        spec = tasks[name].spec
        chain: list[CreateTask] = []
        prereq = spec.prereq
        while prereq != ROOT_TASK and prereq in tasks and len(chain) < CHAIN_MAX:
            chain.append(tasks[prereq].spec)
            prereq = tasks[prereq].spec.prereq
        self.runs += 1
        self.say(f"swop: task {name} ({spec.task_type}) RUNNING")
        outcome: tuple[PeerState, str] | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch, nursery.cancel_scope, name, assignment)
            try:
                summary = await execute(spec, chain, self.profile, self.workspace, self.runs)
                outcome = (PeerState.COMPLETE, summary)
            except TaskFailed as failure:
                outcome = (PeerState.ERROR, str(failure))
            except (OSError, ValueError) as error:  # the task's files, not our bug
                outcome = (PeerState.ERROR, f"{type(error).__name__}: {error}")
            nursery.cancel_scope.cancel()
        if outcome is None:
            self.say(f"swop: task {name} stopped (taskrunner reset)")
            return
        state, reason = outcome
        self.say(f"swop: task {name} {state.value}: {reason}")
        await self._report(name, assignment, state, reason[:REASON_CHARS])

    async def _watch(self, scope: trio.CancelScope, name: str, assignment: int) -> None:
        """Cancel the run when the runner is reset or moves on to another assignment."""
        while True:
            await trio.sleep(POLL_S)
            runner = self.runner()
            mine = runner.peers.get(self.me) if runner else None
            if (
                runner is None
                or runner.task != name
                or runner.assignment != assignment
                or mine is None
                or mine.state != PeerState.RUNNING
            ):
                scope.cancel()
                return

    def _status(self, task: str, assignment: int, state: PeerState, reason: str) -> Message:
        nonce = time.time_ns()
        return TaskPeerStatus(self.runner_name, task, state.value, reason, assignment, nonce=nonce)

    async def _report(self, task: str, assignment: int, state: PeerState, reason: str) -> None:
        """Until the ledger records it, the assignment is over, or REPORT_ATTEMPTS refusals."""
        for _ in range(REPORT_ATTEMPTS):
            problem = await self.submit(self._status(task, assignment, state, reason))
            runner = self.runner()
            mine = runner.peers.get(self.me) if runner else None
            if not problem or runner is None or runner.assignment != assignment:
                return
            if runner.task != task or mine is None or mine.state != PeerState.RUNNING:
                return
            log.warning("status %s of %s not recorded (%s); again", state.value, task, problem)
            await trio.sleep(POLL_S)
        log.error("status %s of %s: gave up after %d refusals", state.value, task, REPORT_ATTEMPTS)

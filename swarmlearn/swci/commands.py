"""The SWCI commands as typed values: one frozen dataclass per command of HPE's grammar.

:mod:`swarmlearn.swci.grammar` makes them from a line of text; :mod:`swarmlearn.swci.session`
runs them. Names and paths are kept exactly as typed; numbers are already checked.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_API_PORT = 30304
WAIT_FOR_IP_RETRIES = 360  # HPE: 360 tries, 5 s apart: 30 minutes


@dataclass(frozen=True)
class Command:
    """Base of every command."""


# ------------------------------------------------------------------ contexts


@dataclass(frozen=True)
class CreateContext(Command):
    name: str
    host: str
    port: int = DEFAULT_API_PORT


@dataclass(frozen=True)
class SwitchContext(Command):
    name: str


@dataclass(frozen=True)
class ListContexts(Command):
    pass


@dataclass(frozen=True)
class GetContextInfo(Command):
    name: str | None = None  # None: the active context


@dataclass(frozen=True)
class SetContextEnv(Command):
    name: str
    variable: str
    value: str


@dataclass(frozen=True)
class GetContextEnv(Command):
    name: str
    variable: str


@dataclass(frozen=True)
class ListContextEnv(Command):
    name: str


# ------------------------------------------------------------------ the ledger: nodes, contracts


@dataclass(frozen=True)
class ListNodes(Command):
    pass


@dataclass(frozen=True)
class CreateContract(Command):
    name: str
    merge_method: str = "mean"


@dataclass(frozen=True)
class GetContractInfo(Command):
    name: str


@dataclass(frozen=True)
class GetContractStatus(Command):
    name: str


@dataclass(frozen=True)
class ListContracts(Command):
    pass


@dataclass(frozen=True)
class Perfdata(Command):
    name: str


@dataclass(frozen=True)
class ResetContract(Command):
    name: str


@dataclass(frozen=True)
class ListRounds(Command):
    contract: str | None = None  # None: every contract


# ------------------------------------------------------------------ tasks


@dataclass(frozen=True)
class CreateTaskFrom(Command):
    path: str


@dataclass(frozen=True)
class FinalizeTask(Command):
    name: str


@dataclass(frozen=True)
class GetTaskInfo(Command):
    name: str


@dataclass(frozen=True)
class GetTaskBody(Command):
    name: str


@dataclass(frozen=True)
class ListTasks(Command):
    pass


@dataclass(frozen=True)
class DeleteTask(Command):
    name: str


# ------------------------------------------------------------------ taskrunners


@dataclass(frozen=True)
class CreateTaskRunner(Command):
    name: str


@dataclass(frozen=True)
class AssignTask(Command):
    """``peers > 0``: WITH n PEERS; ``peers == 0`` and no target: WITH ALL PEERS; a target:
    TARGET uid (one SWOP)."""

    task: str
    runner: str
    peers: int = 0
    target: str = ""


@dataclass(frozen=True)
class GetTaskRunnerStatus(Command):
    name: str


@dataclass(frozen=True)
class GetTaskRunnerInfo(Command):
    name: str


@dataclass(frozen=True)
class GetTaskRunnerPeerStatus(Command):
    name: str
    peer: str  # its index in LIST TASKRUNNER PEERS, or its node id (or a unique prefix)


@dataclass(frozen=True)
class ListTaskRunners(Command):
    pass


@dataclass(frozen=True)
class ListTaskRunnerPeers(Command):
    name: str


@dataclass(frozen=True)
class ResetTaskRunner(Command):
    name: str


@dataclass(frozen=True)
class WaitForTaskRunner(Command):
    name: str
    timeout_s: float | None = None  # None: the session's default (HPE: 120 minutes)


# ------------------------------------------------------------------ miscellaneous


@dataclass(frozen=True)
class WaitForIp(Command):
    host: str
    port: int = DEFAULT_API_PORT
    retries: int = WAIT_FOR_IP_RETRIES


@dataclass(frozen=True)
class Sleep(Command):
    seconds: float


@dataclass(frozen=True)
class ExitOnFailure(Command):
    on: bool = True  # HPE: a bare EXIT ON FAILURE turns it on


@dataclass(frozen=True)
class Exit(Command):
    pass


@dataclass(frozen=True)
class Help(Command):
    topic: tuple[str, ...] = ()


@dataclass(frozen=True)
class Cd(Command):
    path: str


@dataclass(frozen=True)
class Pwd(Command):
    pass

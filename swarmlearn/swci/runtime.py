"""Running SWCI commands: the session state and the table of handlers.

A :class:`Session` holds what outlives one command: the contexts (reloaded from disk on each
use, so two SWCI sessions see each other's changes), one API client per context, EXIT ON
FAILURE, the current directory for relative task paths, and where progress goes. Each command
class has one handler (registered with :func:`handles`) that returns a :class:`Result`: a
JSON document for scripts and text for people. A handler fails with :class:`CommandFailed`
(exit status 1) or, for the user's own mistake, ConfigError (exit status 2).
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from swarmlearn.p2p.identity import IdentityPaths, load_identity
from swarmlearn.swci.client import REQUEST_TIMEOUT_S, ApiClient
from swarmlearn.swci.commands import Command
from swarmlearn.swci.contexts import Context, Contexts, config_dir, load_contexts, save_contexts

WAIT_FOR_IP_INTERVAL_S = 5.0  # HPE: 360 tries 5 s apart
TASKRUNNER_WAIT_S = 120 * 60.0  # HPE's default limit for WAIT FOR TASKRUNNER: 120 minutes
TASKRUNNER_POLL_S = 2.0
HANDLER_MODULES = ("local_commands", "ledger_commands", "task_commands")


@dataclass(frozen=True)
class Result:
    """What a command produced: ``doc`` for --json, ``text`` for people."""

    doc: Any
    text: str
    exit: bool = False  # the session should end (EXIT)


@dataclass
class Session:
    """The state of one SWCI session."""

    directory: Path = field(default_factory=config_dir)
    identity: IdentityPaths | None = None  # --cert/--key/--cacert or SWARM_ID_*: new contexts
    context: str | None = None  # --context: use this one instead of the active one
    cwd: Path = field(default_factory=Path.cwd)
    progress: Callable[[str], None] = field(default=lambda text: _write_progress(text))
    timeout_s: float = REQUEST_TIMEOUT_S
    wait_for_ip_interval_s: float = WAIT_FOR_IP_INTERVAL_S
    taskrunner_wait_s: float = TASKRUNNER_WAIT_S
    taskrunner_poll_s: float = TASKRUNNER_POLL_S
    exit_on_failure: bool = False
    _clients: dict[tuple[object, ...], ApiClient] = field(default_factory=dict)

    def contexts(self) -> Contexts:
        return load_contexts(self.directory)

    def save(self, contexts: Contexts) -> None:
        save_contexts(contexts, self.directory)

    def active(self) -> Context:
        return self.contexts().get(self.context)

    def client(self) -> ApiClient:
        """A client of the active context's node API, as the context's identity (or, for a
        context made without one, --cert etc.); kept while neither changes."""
        context = self.active()
        if context.cert is None and self.identity is not None:
            paths = self.identity
        else:
            paths = context.identity_paths()
        key = (context.url, paths)
        found = self._clients.get(key)
        if found is None:
            identity = load_identity(paths)
            found = self._clients[key] = ApiClient(context.url, identity, self.timeout_s)
        return found

    def path(self, text: str) -> Path:
        """A path as typed, relative to the session's current directory (CD)."""
        return self.cwd / os.path.expanduser(text)

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()


def _write_progress(text: str) -> None:
    sys.stderr.write(text)
    sys.stderr.flush()


C = TypeVar("C", bound=Command)
Handler = Callable[[Session, Any], Result]
HANDLERS: dict[type[Command], Handler] = {}


def handles(kind: type[C]) -> Callable[[Callable[[Session, C], Result]], Handler]:
    """Register the handler of one command class."""

    def register(function: Callable[[Session, C], Result]) -> Handler:
        HANDLERS[kind] = function
        return function

    return register


def execute(session: Session, command: Command) -> Result:
    """Run one command; CommandFailed or ConfigError if it does not succeed."""
    if not HANDLERS:
        for name in HANDLER_MODULES:
            importlib.import_module(f"swarmlearn.swci.{name}")
    return HANDLERS[type(command)](session, command)

"""SWCI commands that need no node: contexts, WAIT FOR IP, SLEEP, EXIT ON FAILURE, HELP, CD."""

from __future__ import annotations

import socket
import time
from dataclasses import replace

from swarmlearn.errors import ConfigError
from swarmlearn.swci import commands as c
from swarmlearn.swci import render
from swarmlearn.swci.client import CommandFailed
from swarmlearn.swci.contexts import Context
from swarmlearn.swci.grammar import help_text
from swarmlearn.swci.runtime import Result, Session, handles

CONNECT_TIMEOUT_S = 5.0


def _context_doc(context: Context, active: bool) -> dict[str, object]:
    return {"name": context.name, "active": active, "url": context.url, **context.to_json()}


@handles(c.CreateContext)
def create_context(session: Session, command: c.CreateContext) -> Result:
    identity = session.identity
    context = Context(
        command.name,
        command.host,
        command.port,
        {},
        None if identity is None else identity.cert.absolute(),
        None if identity is None else identity.key.absolute(),
        None if identity is None else identity.ca.absolute(),
    )
    contexts = session.contexts()
    existed = command.name in contexts.contexts
    if existed:  # re-creating keeps the variables: init scripts run again and again
        context = replace(context, env=contexts.get(command.name).env)
    contexts = contexts.with_context(context)
    session.save(contexts)
    doc = _context_doc(context, contexts.active == context.name)
    verb = "updated" if existed else "created"
    note = "" if identity else " (no identity: set --cert/--key/--cacert or SWARM_ID_*)"
    return Result(doc, f"context {command.name} {verb}: {context.url}{note}")


@handles(c.SwitchContext)
def switch_context(session: Session, command: c.SwitchContext) -> Result:
    contexts = session.contexts().switched(command.name)
    session.save(contexts)
    context = contexts.get(command.name)
    return Result(_context_doc(context, True), f"active context: {command.name} ({context.url})")


@handles(c.ListContexts)
def list_contexts(session: Session, command: c.ListContexts) -> Result:
    contexts = session.contexts()
    docs = [_context_doc(x, x.name == contexts.active) for x in contexts.contexts.values()]
    rows = [("*" if d["active"] else "", d["name"], d["url"], d["cert"]) for d in docs]
    text = render.table(("", "NAME", "API", "CERTIFICATE"), rows, "(no contexts)")
    return Result(docs, text)


@handles(c.GetContextInfo)
def get_context_info(session: Session, command: c.GetContextInfo) -> Result:
    contexts = session.contexts()
    context = contexts.get(command.name if command.name is not None else session.context)
    doc = _context_doc(context, context.name == contexts.active)
    pairs = [(k, v) for k, v in doc.items() if k != "env"]
    pairs.append(("env", ", ".join(f"{k}={v}" for k, v in sorted(context.env.items())) or None))
    return Result(doc, render.fields(pairs))


@handles(c.SetContextEnv)
def set_context_env(session: Session, command: c.SetContextEnv) -> Result:
    contexts = session.contexts().with_env(command.name, command.variable, command.value)
    session.save(contexts)
    doc = {"context": command.name, "variable": command.variable, "value": command.value}
    return Result(doc, f"{command.name}: {command.variable}={command.value}")


@handles(c.GetContextEnv)
def get_context_env(session: Session, command: c.GetContextEnv) -> Result:
    context = session.contexts().get(command.name)
    if command.variable not in context.env:
        known = ", ".join(sorted(context.env)) or "none"
        raise ConfigError(
            f"context {command.name!r} has no variable {command.variable!r} (set: {known})"
        )
    value = context.env[command.variable]
    return Result({"context": command.name, "variable": command.variable, "value": value}, value)


@handles(c.ListContextEnv)
def list_context_env(session: Session, command: c.ListContextEnv) -> Result:
    env = dict(sorted(session.contexts().get(command.name).env.items()))
    return Result(env, render.table(("VARIABLE", "VALUE"), list(env.items()), "(no variables)"))


@handles(c.WaitForIp)
def wait_for_ip(session: Session, command: c.WaitForIp) -> Result:
    """Try to connect, ``retries`` times at most, ``wait_for_ip_interval_s`` apart."""
    address = f"{command.host}:{command.port}"
    problem = ""
    for attempt in range(1, command.retries + 1):
        try:
            with socket.create_connection((command.host, command.port), CONNECT_TIMEOUT_S):
                pass
        except OSError as error:
            problem = error.strerror or str(error)
        else:
            if attempt > 1:
                session.progress("\n")
            doc = {"host": command.host, "port": command.port, "tries": attempt}
            return Result(doc, f"{address} answers (try {attempt})")
        if attempt < command.retries:
            session.progress("#")
            time.sleep(session.wait_for_ip_interval_s)
    if command.retries > 1:
        session.progress("\n")
    tries = command.retries
    plural = "try" if tries == 1 else "tries"
    raise CommandFailed(f"WAIT FOR IP {address}: no answer after {tries} {plural}: {problem}")


@handles(c.Sleep)
def sleep(session: Session, command: c.Sleep) -> Result:
    time.sleep(command.seconds)
    return Result({"slept_s": command.seconds}, "")


@handles(c.ExitOnFailure)
def exit_on_failure(session: Session, command: c.ExitOnFailure) -> Result:
    session.exit_on_failure = command.on
    state = "ON" if command.on else "OFF"
    return Result({"exit_on_failure": command.on}, f"exit on failure: {state}")


@handles(c.Exit)
def exit_(session: Session, command: c.Exit) -> Result:
    return Result({"exit": True}, "", exit=True)


@handles(c.Help)
def help_(session: Session, command: c.Help) -> Result:
    text = help_text(command.topic)
    return Result({"help": text.splitlines()}, text)


@handles(c.Cd)
def cd(session: Session, command: c.Cd) -> Result:
    target = session.path(command.path).resolve()
    if not target.is_dir():
        raise ConfigError(f"CD {command.path}: {target} is not a directory")
    session.cwd = target
    return Result({"cwd": str(target)}, str(target))


@handles(c.Pwd)
def pwd(session: Session, command: c.Pwd) -> Result:
    return Result({"cwd": str(session.cwd)}, str(session.cwd))

"""What a SWOP does for each task type, on this host, with real processes and files.

Everything lives under the SWOP's workspace (``<data-dir>/swop``): ``envs/<outcome>`` (the
virtual environments of MAKE_USER_ENV), ``content/<outcome>`` (the directories of
MAKE_SWARM_USER_CONTENT; SWARMCONTENT has one subdirectory per profile node, ``<idx>``) and
``logs/`` (one log per task run and node). A RUN_SWARM task finds its environment and its
content by walking its prerequisite chain (HPE's build-then-run workflows): the nearest
MAKE_USER_ENV and MAKE_SWARM_USER_CONTENT before it.

- MAKE_USER_ENV: ``python -m venv``, then ``pip install`` the requirements (the SWOP's own
  pip with ``--python``, so no second pip is bootstrapped). A hash of the
  requirements, pip options, ``Inherit`` and the interpreter is kept in the environment; an
  unchanged task reuses it. ``Inherit`` adds the SWOP's own site-packages (swarmlearn, torch)
  behind the environment's own through a ``.pth`` file.
- MAKE_SWARM_USER_CONTENT: copies local files and directories (DOWNLOAD of a file:// URI is a
  copy) and extracts archives (tar with the ``data`` filter, zip) into a fresh directory.
- RUN_SWARM: one subprocess per profile node, paired with that node's SL endpoint through
  ``SWARM_NODE_SOCKET``, its private data in ``SWARM_PRIVATE_DATA``, its output in a log file.
  All must exit 0; otherwise the reason names the node, the exit status and the log's last
  line. A cancelled run (RESET TASKRUNNER) terminates the processes (SIGTERM, then SIGKILL).

Every wait is bounded (the task's ``TimeoutS`` or ``MaxRunTimeS``); a failure is
:class:`TaskFailed` with a one-line reason for the ledger.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import signal
import site
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import trio

from swarmlearn.consensus.ledger.tasks import CreateTask
from swarmlearn.roles.swop.profile import (
    NodeDef,
    Profile,
    RunSwarmBody,
    UserContentBody,
    UserEnvBody,
    parse_body,
)

log = logging.getLogger("swarmlearn.swop")

STOP_GRACE_S = 10.0
ENV_STAMP = ".swarmlearn-env.json"
REASON_CHARS = 400


class TaskFailed(Exception):
    """A task ended in ERROR; ``str()`` is the reason recorded on the ledger."""


@dataclass(frozen=True)
class Workspace:
    root: Path
    node_socket: Path  # this node's own SL endpoint

    def env_dir(self, outcome: str) -> Path:
        return self.root / "envs" / outcome

    def content_dir(self, outcome: str) -> Path:
        return self.root / "content" / outcome

    def log_path(self, task: str, run: int, idx: int) -> Path:
        return self.root / "logs" / f"{task}.{run}.node{idx}.log"


async def execute(
    task: CreateTask, chain: Sequence[CreateTask], profile: Profile, ws: Workspace, run: int
) -> str:
    """Run ``task`` (``chain``: its prerequisites, nearest first); a summary line, or raise."""
    body = parse_body(task.task_type, json.loads(task.body))
    if isinstance(body, UserEnvBody):
        return await make_user_env(body, ws.env_dir(task.outcome))
    if isinstance(body, UserContentBody):
        return await trio.to_thread.run_sync(
            make_user_content, body, ws.content_dir(task.outcome), profile
        )
    return await run_swarm(task.name, body, chain, profile, ws, run)


# ---------------------------------------------------------------- MAKE_USER_ENV


def env_digest(body: UserEnvBody) -> str:
    recipe = {
        "requirements": list(body.requirements),
        "pip_options": list(body.pip_options),
        "inherit": body.inherit,
        "python": sys.version,
        "executable": sys.executable,
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


async def make_user_env(body: UserEnvBody, target: Path) -> str:
    digest = env_digest(body)
    stamp = target / ENV_STAMP
    python = target / "bin" / "python"
    if python.exists() and stamp.exists() and json.loads(stamp.read_text()) == {"sha256": digest}:
        return f"environment {target.name} reused (requirements unchanged)"
    with trio.move_on_after(body.timeout_s) as scope:
        await trio.to_thread.run_sync(shutil.rmtree, target, True)
        # pip of the SWOP's own interpreter installs into the new environment (--python):
        # no second pip to bootstrap; without one here, the environment gets its own
        own_pip = importlib.util.find_spec("pip") is not None
        venv = [sys.executable, "-m", "venv", str(target)]
        with_pip = bool(body.requirements) and not own_pip
        await _checked_run([*venv, *([] if with_pip else ["--without-pip"])], "venv")
        if body.inherit:
            _inherit(target)
        if body.requirements:
            requirements = target / "requirements.txt"
            requirements.write_text("".join(f"{line}\n" for line in body.requirements))
            pip = [sys.executable, "-m", "pip", "--python", str(python)] if own_pip else [
                str(python), "-m", "pip"
            ]  # fmt: skip
            install = [*pip, "install", "--disable-pip-version-check", *body.pip_options]
            await _checked_run([*install, "-r", str(requirements)], "pip install")
    if scope.cancelled_caught:
        raise TaskFailed(f"environment {target.name}: not built within {body.timeout_s:g} s")
    stamp.write_text(json.dumps({"sha256": digest}))
    return f"environment {target.name} built with {len(body.requirements)} requirements"


def _inherit(target: Path) -> None:
    """Let the new environment import what the SWOP's interpreter can (behind its own)."""
    own = sorted((target / "lib").glob("python*/site-packages"))
    lines = [f"import site; site.addsitedir({path!r})\n" for path in site.getsitepackages()]
    (own[0] / "_swarmlearn_inherit.pth").write_text("".join(lines))


async def _checked_run(argv: list[str], what: str) -> None:
    done = await trio.run_process(
        argv, check=False, capture_stdout=True, capture_stderr=True, stdin=subprocess.DEVNULL
    )
    if done.returncode != 0:
        output = (done.stderr or done.stdout).decode(errors="replace").strip().splitlines()
        last = output[-1] if output else "no output"
        raise TaskFailed(f"{what}: exit status {done.returncode}: {last}"[:REASON_CHARS])


# ---------------------------------------------------------------- MAKE_SWARM_USER_CONTENT


def make_user_content(body: UserContentBody, target: Path, profile: Profile) -> str:
    shutil.rmtree(target, ignore_errors=True)
    copies = (
        [target / str(node.idx) for node in profile.nodes]
        if body.content_type == "SWARMCONTENT"
        else [target]
    )
    base = profile.path.parent
    for place in copies:
        place.mkdir(parents=True)
        for i, op in enumerate(body.ops):
            source = op.source if op.source.is_absolute() else base / op.source
            if not source.exists():
                raise TaskFailed(f"OpsList[{i}]: {source} does not exist")
            try:
                _apply(op.operation, source, place / op.out if op.out else place)
            except (OSError, shutil.ReadError, ValueError) as error:
                raise TaskFailed(f"OpsList[{i}] {op.operation} {source}: {error}") from None
    return f"content {target.name}: {len(body.ops)} operations, {len(copies)} copies"


def _apply(operation: str, source: Path, out: Path) -> None:
    if operation == "EXTRACT":
        out.mkdir(parents=True, exist_ok=True)
        shutil.unpack_archive(source, out, filter="data")
    elif source.is_dir():
        shutil.copytree(source, out / source.name if out.exists() else out, dirs_exist_ok=True)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, out / source.name if out.is_dir() else out)


# ---------------------------------------------------------------- RUN_SWARM


def nearest(chain: Sequence[CreateTask], task_type: str) -> CreateTask | None:
    return next((t for t in chain if t.task_type == task_type), None)


def working_dir(
    body: RunSwarmBody, chain: Sequence[CreateTask], profile: Profile, ws: Workspace, node: NodeDef
) -> Path:
    if Path(body.working_dir).is_absolute():
        return Path(body.working_dir)
    content = nearest(chain, "MAKE_SWARM_USER_CONTENT")
    if content is None:
        base = profile.path.parent
    else:
        base = ws.content_dir(content.outcome)
        if (base / str(node.idx)).is_dir() and json.loads(content.body).get(
            "ContentType"
        ) == "SWARMCONTENT":
            base = base / str(node.idx)
    return base / body.working_dir


def program_env(
    name: str,
    body: RunSwarmBody,
    env_dir: Path | None,
    profile: Profile,
    ws: Workspace,
    node: NodeDef,
) -> dict[str, str]:
    env = {**os.environ, **profile.env, **body.env, **node.env}
    env.update(
        SWARM_NODE_SOCKET=str(node.socket or ws.node_socket),
        SWARM_PRIVATE_DATA=str(node.private_data),
        SWARM_NODE_INDEX=str(node.idx),
        SWARM_TASK=name,
        PYTHONUNBUFFERED="1",
    )
    if env_dir is not None:
        env["VIRTUAL_ENV"] = str(env_dir)
        env["PATH"] = f"{env_dir / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


def program_argv(body: RunSwarmBody, env_dir: Path | None) -> list[str]:
    argv = list(body.argv)
    if argv[0] in ("python", "python3"):  # the task's environment, or the SWOP's interpreter
        argv[0] = str(env_dir / "bin" / "python") if env_dir else sys.executable
    return argv


async def run_swarm(
    name: str,
    body: RunSwarmBody,
    chain: Sequence[CreateTask],
    profile: Profile,
    ws: Workspace,
    run: int,
) -> str:
    user_env = nearest(chain, "MAKE_USER_ENV")
    env_dir = ws.env_dir(user_env.outcome) if user_env else None
    if env_dir is not None and not (env_dir / "bin" / "python").exists():
        raise TaskFailed(f"environment {env_dir.name} is not on this host: run its task here first")
    failures: list[str] = []
    with trio.move_on_after(body.max_run_s) as scope:
        async with trio.open_nursery() as nursery:
            for node in profile.nodes:
                cwd = working_dir(body, chain, profile, ws, node)
                if not cwd.is_dir():
                    raise TaskFailed(f"node {node.idx}: working dir {cwd} does not exist")
                env = program_env(name, body, env_dir, profile, ws, node)
                log_path = ws.log_path(name, run, node.idx)
                argv = program_argv(body, env_dir)
                nursery.start_soon(_run_node, node.idx, argv, cwd, env, log_path, failures)
    if scope.cancelled_caught:
        raise TaskFailed(f"still running after MaxRunTimeS {body.max_run_s:g} s: stopped")
    if failures:
        raise TaskFailed("; ".join(sorted(failures))[:REASON_CHARS])
    return f"{len(profile.nodes)} node(s) exited 0"


async def _run_node(
    idx: int, argv: list[str], cwd: Path, env: dict[str, str], log_path: Path, failures: list[str]
) -> None:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as output:
        try:
            process = await trio.lowlevel.open_process(
                argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=output, stderr=output
            )
        except OSError as error:
            failures.append(f"node {idx}: cannot start {argv[0]!r}: {error.strerror}")
            return
        log.info("node %d: started %s (pid %d), log %s", idx, argv, process.pid, log_path)
        try:
            status = await process.wait()
        finally:
            if process.returncode is None:  # cancelled: RESET TASKRUNNER or MaxRunTimeS
                with trio.CancelScope(shield=True):
                    await _stop(process)
    if status != 0:
        failures.append(f"node {idx}: exit status {status}: {last_line(log_path)}")


async def _stop(process: trio.Process) -> None:
    process.send_signal(signal.SIGTERM)
    with trio.move_on_after(STOP_GRACE_S):
        await process.wait()
        return
    process.kill()
    await process.wait()


def last_line(path: Path) -> str:
    with path.open("rb") as file:
        file.seek(max(0, path.stat().st_size - 4096))
        lines = file.read().decode(errors="replace").strip().splitlines()
    return lines[-1].strip() if lines else "no output"

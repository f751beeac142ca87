"""Helpers for the benches that drive other frameworks' peers (bench/hivemind.py, bench/flower.py).

Those frameworks live in their own virtualenv, ``.venv-peers`` (``make bench-peers``), so the
project's ``.venv`` stays light: the benches run in ``.venv`` and start the peers with
``.venv-peers/bin/python`` as child processes. :class:`Peer` is one such child speaking JSON
lines on stdin/stdout (a reader thread feeds a queue, so every read has a deadline), started
in its own session so that killing it kills its helpers too (hivemind's averager process and
its p2pd daemon).

Running it prints the peers' interpreter and versions.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import threading
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve().parent.parent  # bench/
PEERS_PYTHON = HERE.parent / ".venv-peers" / "bin" / "python"
MISSING = "skipped: make bench-peers first"


def peers_python() -> Path | None:
    """The peers' interpreter, or None when ``make bench-peers`` has not been run."""
    return PEERS_PYTHON if PEERS_PYTHON.exists() else None


def peers_versions(names: tuple[str, ...]) -> dict[str, str]:
    """Installed versions of ``names`` in .venv-peers (``{}`` when it is missing)."""
    python = peers_python()
    if python is None:
        return {}
    code = (
        "import json, sys; from importlib import metadata as m\n"
        "out = {}\n"
        "for n in sys.argv[1:]:\n"
        "    try: out[n] = m.version(n)\n"
        "    except m.PackageNotFoundError: pass\n"
        "print(json.dumps(out))"
    )
    done = subprocess.run(
        [str(python), "-c", code, *names], capture_output=True, text=True, timeout=60, check=False
    )
    if done.returncode != 0:
        return {}
    versions: dict[str, str] = json.loads(done.stdout)
    return versions


class PeerError(RuntimeError):
    """A peer process died, said something unexpected, or missed a deadline."""


class Peer:
    """A child process that answers JSON lines; its stderr goes to ``log``."""

    def __init__(self, command: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        self._log_file = log.open("w")
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log_file,
            text=True,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        assert self.process.stdout is not None
        threading.Thread(target=self._pump, args=(self.process.stdout,), daemon=True).start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self._lines.put(line)
        self._lines.put(None)

    def send(self, **message: Any) -> None:
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(json.dumps(message) + "\n")
            self.process.stdin.flush()
        except (BrokenPipeError, ValueError) as exc:
            raise PeerError(f"peer exited: {self.tail()}") from exc

    def expect(self, event: str, timeout_s: float) -> dict[str, Any]:
        """The next JSON line whose ``event`` is ``event``; other stdout lines are skipped."""
        while True:
            try:
                line = self._lines.get(timeout=timeout_s)
            except queue.Empty as exc:
                raise PeerError(f"no {event!r} within {timeout_s} s: {self.tail()}") from exc
            if line is None:
                raise PeerError(f"peer exited before {event!r}: {self.tail()}")
            if not line.startswith("{"):
                continue
            message: dict[str, Any] = json.loads(line)
            if message.get("event") == event:
                return message

    def tail(self, lines: int = 5) -> str:
        self._log_file.flush()
        text = self.log.read_text(errors="replace").strip().splitlines()
        return " / ".join(text[-lines:])

    def kill(self) -> None:
        """SIGKILL the peer's whole session (its helper processes die with it)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        try:
            self.process.wait(timeout=30)
        finally:
            self._log_file.close()

    def stop(self, timeout_s: float = 30) -> None:
        """Ask it to quit; kill what is left of its session after ``timeout_s`` at most."""
        if self.process.poll() is None:
            with contextlib.suppress(PeerError, subprocess.TimeoutExpired):
                self.send(cmd="quit")
                self.process.wait(timeout=timeout_s)
        self.kill()


if __name__ == "__main__":
    print(PEERS_PYTHON, peers_versions(("flwr", "ray", "hivemind", "torch")))

"""A swarm of real ``swarm-node`` processes on this machine, for the demo and benchmarks.

:class:`LocalSwarm` makes a CA and one certificate per node (SN + SL) plus an operator's
(SWCI) in ``workdir/pki``, starts the sentinel, then the other nodes bootstrapping from it,
each with its own data directory, on free loopback ports, and waits — within a deadline —
until every node sees every validator. Each node's output goes to ``workdir/nI/node.log``;
``workdir/pids`` lists the processes. Stopping sends SIGTERM and waits; a node that does not
stop in time is killed.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import trio

from swarmlearn.errors import ConfigError
from swarmlearn.p2p.certs import create_ca, issue_certificate
from swarmlearn.p2p.identity import Identity, IdentityPaths, Role, load_identity
from swarmlearn.roles.api.messages import NodeStatus, StatusRequest
from swarmlearn.roles.node.node import NETWORK_ERRORS, ask

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
POLL_S = 0.2


@dataclass
class Node:
    name: str
    data_dir: Path
    process: subprocess.Popen[bytes]
    p2p_port: int = 0
    api_port: int = 0
    lines: queue.Queue[str] = field(default_factory=queue.Queue)
    pump: threading.Thread | None = None  # copies its output to the log, closes the pipe

    @property
    def socket(self) -> Path:
        return self.data_dir / "sl.sock"


class LocalSwarm:
    def __init__(
        self, workdir: Path, nodes: int, *, start_timeout_s: float = START_TIMEOUT_S
    ) -> None:
        if nodes < 1:
            raise ConfigError(f"--nodes must be at least 1, got {nodes}")
        self.workdir = workdir
        self.pki = workdir / "pki"
        self.count = nodes
        self.start_timeout_s = start_timeout_s
        self.nodes: list[Node] = []

    # ------------------------------------------------------------ lifecycle

    def __enter__(self) -> LocalSwarm:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        self._issue_certificates()
        deadline = time.monotonic() + self.start_timeout_s
        sentinel = self._start_node(0, ["--sentinel"], deadline)
        for index in range(1, self.count):
            self._start_node(index, ["--bootstrap", f"127.0.0.1:{sentinel.p2p_port}"], deadline)
        trio.run(self._wait_for_validators, deadline)

    def stop(self) -> None:
        for node in self.nodes:
            if node.process.poll() is None:
                node.process.send_signal(signal.SIGTERM)
        for node in self.nodes:
            try:
                node.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                node.process.kill()
                node.process.wait()
            if node.pump is not None:
                node.pump.join(STOP_TIMEOUT_S)  # the pipe is at its end: the pump closes it

    # ------------------------------------------------------------ pieces

    def identity_paths(self, name: str) -> IdentityPaths:
        return IdentityPaths(
            self.pki / f"{name}.pem", self.pki / f"{name}-key.pem", self.pki / "ca.pem"
        )

    def operator(self) -> Identity:
        return load_identity(self.identity_paths("operator"))

    def _issue_certificates(self) -> None:
        if (self.pki / "ca.pem").exists():
            return  # a workspace made earlier: keep its CA and certificates
        ca = create_ca(self.pki, name="swarmlearn demo CA")
        for index in range(self.count):
            issue_certificate(
                ca, f"n{index}", self.pki, hosts=["127.0.0.1"], roles=[Role.SN, Role.SL]
            )
        issue_certificate(ca, "operator", self.pki, hosts=[], roles=[Role.SWCI])

    def _start_node(self, index: int, flags: list[str], deadline: float) -> Node:
        name = f"n{index}"
        paths = self.identity_paths(name)
        data = self.workdir / name
        data.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable,
            "-m",
            "swarmlearn.roles.node.daemon",
            "--data-dir",
            str(data),
            "--cert",
            str(paths.cert),
            "--key",
            str(paths.key),
            "--cacert",
            str(paths.ca),
            "--listen",
            "127.0.0.1:0",
            "--api",
            "127.0.0.1:0",
            *flags,
        ]
        log = (data / "node.log").open("ab")
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=log,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,  # Ctrl-C in the terminal reaches the demo, which stops us
        )
        log.close()
        node = Node(name, data, process)
        self.nodes.append(node)
        record_pid(self.workdir, name, process.pid)
        node.pump = threading.Thread(target=_pump, args=(process, node.lines, data), daemon=True)
        node.pump.start()
        banner = self._banner(node, deadline)
        node.p2p_port = int(banner.split("/tcp/")[1].split("/")[0])
        node.api_port = int(banner.rsplit(":", 1)[1])
        return node

    def _banner(self, node: Node, deadline: float) -> str:
        while True:
            try:
                line = node.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(
                    f"{node.name} did not start within {self.start_timeout_s:g} s"
                    f" (see {node.data_dir / 'node.log'})"
                ) from None
            if "listening on" in line:
                return line
            if line == "":  # the process ended
                raise RuntimeError(
                    f"{node.name} exited with status {node.process.wait()}"
                    f" (see {node.data_dir / 'node.log'})"
                )

    async def _wait_for_validators(self, deadline: float) -> None:
        operator = self.operator()
        seen: list[int] = []
        while time.monotonic() < deadline:
            seen = [await _validators(operator, node.p2p_port) for node in self.nodes]
            if all(count == self.count for count in seen):
                return
            await trio.sleep(POLL_S)
        raise TimeoutError(
            f"the swarm did not form within {self.start_timeout_s:g} s: validators seen per node"
            f" {seen}, expected {self.count} (see {self.workdir}/n*/node.log)"
        )


async def _validators(operator: Identity, port: int) -> int:
    try:
        status = await ask(operator, "127.0.0.1", port, StatusRequest(), NodeStatus)
    except (*NETWORK_ERRORS, trio.TooSlowError):
        return 0
    return len(status.validators)


def record_pid(workdir: Path, name: str, pid: int) -> None:
    """``workdir/pids``: every process started for the swarm, one ``name pid`` a line."""
    with (workdir / "pids").open("a") as pids:
        pids.write(f"{name} {pid}\n")


def _pump(process: subprocess.Popen[bytes], lines: queue.Queue[str], data: Path) -> None:
    """A node's stdout: each line to the queue (for the banner) and to its log; "" at the end."""
    assert process.stdout is not None
    with process.stdout, (data / "node.log").open("a") as log:
        for raw in process.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            log.write(line + "\n")
            log.flush()
            lines.put(line)
    lines.put("")

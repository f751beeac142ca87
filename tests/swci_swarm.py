"""A real two-daemon swarm on loopback for the SWCI tests, and the identities that use it.

Two ``swarm-node`` processes (a sentinel and one node bootstrapped from it, both SN + SL, each
serving the node API on a free port), an operator certificate (swci), two SWOP certificates
(the tests play the SWOPs' part of the task framework with their signed transactions) and a
certificate from another CA that the swarm must reject.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from swarmlearn.p2p.certs import create_ca, issue_certificate
from swarmlearn.p2p.identity import Identity, IdentityPaths, Role, load_identity
from swarmlearn.p2p.tls import client_context

START_WAIT_S = 60.0
POLL_S = 0.1


@dataclass(frozen=True)
class Swarm:
    root: Path
    api_ports: tuple[int, ...]
    data: tuple[Path, ...]

    def paths(self, name: str, ca: str = "pki") -> IdentityPaths:
        pki = self.root / ca
        return IdentityPaths(pki / f"{name}.pem", pki / f"{name}-key.pem", pki / "ca.pem")

    def identity(self, name: str, ca: str = "pki") -> Identity:
        return load_identity(self.paths(name, ca))

    def url(self, index: int = 0) -> str:
        return f"https://127.0.0.1:{self.api_ports[index]}"


def make_pki(root: Path) -> None:
    ca = create_ca(root / "pki")
    for name in ("sn0", "sn1"):
        issue_certificate(ca, name, root / "pki", hosts=["127.0.0.1"], roles=[Role.SN, Role.SL])
    issue_certificate(ca, "operator", root / "pki", hosts=[], roles=[Role.SWCI])
    for name in ("swop1", "swop2"):
        issue_certificate(ca, name, root / "pki", hosts=[], roles=[Role.SWOP])
    other = create_ca(root / "other", name="another swarm")
    issue_certificate(other, "stranger", root / "other", hosts=[], roles=[Role.SWCI])


@contextmanager
def daemon(root: Path, name: str, data: Path, *flags: str) -> Iterator[tuple[int, int]]:
    """A swarm-node process; yields its (p2p port, API port) once it listens."""
    pki = root / "pki"
    identity = ["--cert", str(pki / f"{name}.pem"), "--key", str(pki / f"{name}-key.pem")]
    command = [sys.executable, "-m", "swarmlearn.roles.daemon", "--data", str(data), *identity]
    command += ["--cacert", str(pki / "ca.pem"), "--listen", "127.0.0.1:0"]
    command += ["--api", "127.0.0.1:0", *flags]
    data.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with (
        (data / "stderr.log").open("a") as errors,
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, text=True, env=env) as p,
    ):
        try:
            assert p.stdout is not None
            banner = p.stdout.readline()  # blocks until the node listens (or dies)
            assert ", api https://" in banner, (data / "stderr.log").read_text()
            p2p = int(banner.split("/tcp/")[1].split("/")[0])
            yield p2p, int(banner.rsplit(":", 1)[1])
        finally:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait(timeout=30)


def wait_for_validators(swarm: Swarm, count: int) -> None:
    """Poll every node's /v1/status (real processes) until each sees ``count`` validators."""
    verify = client_context(swarm.identity("operator"))
    deadline = time.monotonic() + START_WAIT_S
    seen: list[int] = []
    with httpx.Client(verify=verify, timeout=5) as http:
        while time.monotonic() < deadline:
            try:
                seen = [
                    len(http.get(f"{swarm.url(i)}/v1/status").json()["validators"])
                    for i in range(len(swarm.api_ports))
                ]
            except httpx.HTTPError:
                seen = []
            if seen and all(n == count for n in seen):
                return
            time.sleep(POLL_S)
    raise AssertionError(f"timed out waiting for {count} validators: saw {seen}")


@contextmanager
def two_node_swarm(root: Path) -> Iterator[Swarm]:
    make_pki(root)
    data = (root / "n0", root / "n1")
    with ExitStack() as stack:
        p2p0, api0 = stack.enter_context(daemon(root, "sn0", data[0], "--sentinel"))
        _, api1 = stack.enter_context(
            daemon(root, "sn1", data[1], "--bootstrap", f"127.0.0.1:{p2p0}")
        )
        swarm = Swarm(root, (api0, api1), data)
        wait_for_validators(swarm, 2)
        yield swarm

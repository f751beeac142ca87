"""A real two-daemon swarm on loopback for the SWCI tests, and the identities that use it.

Two ``swarm-node`` processes (``LocalSwarm``: a sentinel and one node bootstrapped from it,
both SN + SL, each serving the node API on a free port), an operator certificate (swci), two
SWOP certificates (the tests play the SWOPs' part of the task framework with their signed
transactions) and a certificate from another CA that the swarm must reject.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from swarmlearn.demo.swarm import LocalSwarm
from swarmlearn.p2p.certs import CertificateAuthority, create_ca, issue_certificate
from swarmlearn.p2p.identity import Identity, IdentityPaths, Role, load_identity


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


def issue_extra_certificates(root: Path) -> None:
    """Beside the swarm's own (node and operator) certificates: two SWOPs and a stranger."""
    ca = CertificateAuthority.load(root / "pki")
    for name in ("swop1", "swop2"):
        issue_certificate(ca, name, root / "pki", hosts=[], roles=[Role.SWOP])
    other = create_ca(root / "other", name="another swarm")
    issue_certificate(other, "stranger", root / "other", hosts=[], roles=[Role.SWCI])


@contextmanager
def two_node_swarm(root: Path) -> Iterator[Swarm]:
    """The demo's LocalSwarm of two daemons (it waits until both see both validators)."""
    with LocalSwarm(root, 2) as swarm:
        issue_extra_certificates(root)
        yield Swarm(
            root,
            tuple(node.api_port for node in swarm.nodes),
            tuple(node.data_dir for node in swarm.nodes),
        )

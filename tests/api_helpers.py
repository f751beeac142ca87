"""A sentinel node with its HTTP API, in-process on free loopback ports, for the API tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from swarmlearn.p2p.certs import create_ca, issue_certificate
from swarmlearn.p2p.identity import Identity, IdentityPaths, Role, load_identity
from swarmlearn.roles.node.node import ValidatorNode, ValidatorOptions


def api_pki(root: Path, *node_roles: Role) -> Path:
    """A CA in ``root`` with a node ``sn`` (``node_roles``) and an operator ``op`` (swci)."""
    ca = create_ca(root)
    issue_certificate(ca, "sn", root, hosts=["127.0.0.1"], roles=list(node_roles))
    issue_certificate(ca, "op", root, hosts=[], roles=[Role.SWCI])
    return root


def identity(pki: Path, name: str, ca: Path | None = None) -> Identity:
    """``name``'s identity in ``pki`` (``NAME.pem``, ``NAME-key.pem``), trusting ``ca``."""
    return load_identity(
        IdentityPaths(pki / f"{name}.pem", pki / f"{name}-key.pem", ca or pki / "ca.pem")
    )


@asynccontextmanager
async def sentinel_api(
    pki: Path, data: Path, name: str = "sn"
) -> AsyncIterator[tuple[ValidatorNode, str]]:
    """The node ``name`` starting a swarm, and its API's URL (``https://127.0.0.1:PORT``)."""
    options = ValidatorOptions(data, ("127.0.0.1", 0), sentinel=True, api=("127.0.0.1", 0))
    lines: list[str] = []
    node = await ValidatorNode.open(identity(pki, name), options, on_ready=lines.append)
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        yield node, lines[0].split(", api ")[1]
        nursery.cancel_scope.cancel()


@pytest.fixture
async def api(pki: Path, tmp_path: Path) -> AsyncIterator[tuple[ValidatorNode, str]]:
    """The sentinel ``sn`` of the test's ``pki`` fixture with its API: (node, URL)."""
    async with sentinel_api(pki, tmp_path / "data") as found:
        yield found

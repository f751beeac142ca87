"""The SN node in-process over real loopback sockets: genesis from the sentinel, refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from swarmlearn.errors import ConfigError
from swarmlearn.p2p.certs import create_ca, issue_certificate
from swarmlearn.p2p.identity import Identity, IdentityPaths, Role, load_identity
from swarmlearn.roles.node.node import (
    ValidatorNode,
    ValidatorOptions,
    ca_fingerprint,
    obtain_genesis,
)


def identity(pki: Path, name: str, ca_dir: str, trust: Path) -> Identity:
    issued = pki / ca_dir / f"{name}.pem"
    return load_identity(IdentityPaths(issued, pki / ca_dir / f"{name}-key.pem", trust))


@pytest.fixture
def two_cas(tmp_path: Path) -> Path:
    """Two CAs; every node trusts both (a capath), but each node's own CA differs."""
    swarm, other = create_ca(tmp_path / "swarm"), create_ca(tmp_path / "other", name="other CA")
    issue_certificate(swarm, "sentinel", tmp_path / "swarm", hosts=["127.0.0.1"], roles=[Role.SN])
    issue_certificate(swarm, "member", tmp_path / "swarm", hosts=["127.0.0.1"], roles=[Role.SN])
    issue_certificate(other, "stranger", tmp_path / "other", hosts=["127.0.0.1"], roles=[Role.SN])
    capath = tmp_path / "capath"
    capath.mkdir()
    (capath / "swarm.pem").write_bytes((tmp_path / "swarm" / "ca.pem").read_bytes())
    (capath / "other.pem").write_bytes((tmp_path / "other" / "ca.pem").read_bytes())
    return tmp_path


@pytest.mark.process
async def test_a_joiner_takes_the_sentinels_genesis_only_under_its_own_ca(two_cas: Path) -> None:
    capath = two_cas / "capath"
    sentinel = identity(two_cas, "sentinel", "swarm", capath)
    options = ValidatorOptions(two_cas / "s-data", ("127.0.0.1", 0), sentinel=True, chain_id="lab")
    node = await ValidatorNode.open(sentinel, options, on_ready=lambda line: None)
    assert node.core.genesis.ca_fingerprint == ca_fingerprint(sentinel)
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(node.run)
        member = identity(two_cas, "member", "swarm", capath)
        joined = ValidatorOptions(two_cas / "m-data", ("127.0.0.1", 0), bootstrap=(host, port))
        genesis = await obtain_genesis(member, joined)
        assert genesis == node.core.genesis
        assert (two_cas / "m-data" / "genesis.cbor").exists()
        stranger = identity(two_cas, "stranger", "other", capath)
        refused = ValidatorOptions(two_cas / "x-data", ("127.0.0.1", 0), bootstrap=(host, port))
        with pytest.raises(
            ConfigError, match="refused its genesis: chain 'lab' was made under another CA"
        ):
            await obtain_genesis(stranger, refused)
        assert not (two_cas / "x-data" / "genesis.cbor").exists()
        nursery.cancel_scope.cancel()


async def test_without_a_ledger_a_node_says_how_to_start(tmp_path: Path, two_cas: Path) -> None:
    member = identity(two_cas, "member", "swarm", two_cas / "swarm" / "ca.pem")
    with pytest.raises(ConfigError, match="no ledger here; start the first node with --sentinel"):
        await obtain_genesis(member, ValidatorOptions(tmp_path / "empty", ("127.0.0.1", 0)))


@pytest.mark.process
async def test_an_unreachable_bootstrap_is_one_clear_line(tmp_path: Path, two_cas: Path) -> None:
    member = identity(two_cas, "member", "swarm", two_cas / "swarm" / "ca.pem")
    options = ValidatorOptions(tmp_path / "d", ("127.0.0.1", 0), bootstrap=("127.0.0.1", 1))
    with pytest.raises(ConfigError, match=r"--bootstrap 127.0.0.1:1: cannot fetch the genesis"):
        await obtain_genesis(member, options)

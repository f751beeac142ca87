"""Shared fixtures: a throwaway swarm CA with node identities, and deterministic Hypothesis."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from swarmlearn.p2p.certs import create_ca, issue_certificate
from swarmlearn.p2p.identity import Identity, IdentityPaths, Role, load_identity

# tests.api_helpers: the `api` fixture (a sentinel with its API) of the API tests.
pytest_plugins = ["swarmlearn.sim.testing", "tests.tiers", "tests.api_helpers"]

settings.register_profile(
    "deterministic",
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("deterministic")


@dataclass(frozen=True)
class Pki:
    """Two CAs and identities issued by them, made once per test session."""

    root: Path
    sn: Identity  # sentinel-ish node: sn + sl
    sl: Identity
    p256: Identity  # ECDSA P-256 key, same CA
    other_ca: Identity  # issued by a different CA (and trusting only that one)
    expired: Identity  # issued by the swarm CA, expired (loaded as of its validity window)

    @property
    def ca_file(self) -> Path:
        return self.root / "ca" / "ca.pem"


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ca = create_ca(root / "ca")
    other = create_ca(root / "other", name="another swarm")

    def make(
        issuer: str,
        name: str,
        roles: list[Role],
        *,
        key_type: str = "ed25519",
        not_before: dt.datetime | None = None,
        days: int = 365,
    ) -> Identity:
        issued = issue_certificate(
            ca if issuer == "ca" else other,
            name,
            root / issuer,
            hosts=["127.0.0.1", "localhost"],
            roles=roles,
            key_type=key_type,
            not_before=not_before,
            days=days,
        )
        paths = IdentityPaths(issued.cert_path, issued.key_path, root / issuer / "ca.pem")
        # An expired certificate is loaded as of a moment inside its validity window.
        now = not_before + dt.timedelta(hours=1) if not_before is not None else None
        return load_identity(paths, now=now)

    long_ago = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    return Pki(
        root=root,
        sn=make("ca", "sn-1", [Role.SN, Role.SL]),
        sl=make("ca", "sl-1", [Role.SL]),
        p256=make("ca", "sl-p256", [Role.SL], key_type="p256"),
        other_ca=make("other", "intruder", [Role.SN]),
        expired=make("ca", "old", [Role.SL], not_before=long_ago, days=1),
    )


@pytest.fixture
def loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    """A SwarmCallback made in this test trains alone (HPE's SWARM_LOOPBACK): no node."""
    monkeypatch.setenv("SWARM_LOOPBACK", "True")

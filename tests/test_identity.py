"""Identity: CA and node certificates, peer ids, roles, and every way loading can fail."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from swarmlearn.errors import ConfigError
from swarmlearn.p2p.certs import CertificateAuthority, create_ca, issue_certificate
from swarmlearn.p2p.identity import (
    IdentityPaths,
    PeerId,
    Role,
    identity_paths_from_env,
    load_identity,
    verify_signature,
)
from tests.conftest import Pki


def test_issued_identity_carries_name_roles_and_a_stable_peer_id(pki: Pki) -> None:
    assert pki.sn.info.name == "sn-1"
    assert pki.sn.roles == {Role.SN, Role.SL}
    assert pki.sl.roles == {Role.SL}
    public = pki.sn.certificate.public_key()
    assert isinstance(public, ed25519.Ed25519PublicKey)
    assert pki.sn.peer_id == PeerId.from_public_key(public)
    assert PeerId.parse(str(pki.sn.peer_id)) == pki.sn.peer_id
    assert len(str(pki.sn.peer_id)) == 52
    assert str(pki.sn.peer_id).islower()
    assert pki.sn.peer_id != pki.sl.peer_id


def test_certificate_has_host_names_and_tls_usages(pki: Pki) -> None:
    cert = pki.sn.certificate
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    usages = set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    assert x509.oid.ExtendedKeyUsageOID.SERVER_AUTH in usages
    assert x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH in usages


def test_the_key_signs_and_the_certificate_verifies(pki: Pki) -> None:
    for identity in (pki.sn, pki.p256):
        signature = identity.sign(b"vote")
        public = identity.certificate.public_key()
        assert isinstance(
            public, ed25519.Ed25519PublicKey | type(pki.p256.certificate.public_key())
        )
        assert verify_signature(public, signature, b"vote")  # type: ignore[arg-type]
        assert not verify_signature(public, signature, b"another vote")  # type: ignore[arg-type]


def test_peer_id_parse_refuses_other_text() -> None:
    for text in ("", "abc", "A" * 52, "1" * 52):
        with pytest.raises(ValueError, match="not a peer id"):
            PeerId.parse(text)


def test_spiffe_id_is_written_and_read_back(tmp_path: Path) -> None:
    ca = create_ca(tmp_path)
    issued = issue_certificate(
        ca, "w", tmp_path, hosts=[], roles=[Role.SL], spiffe_id="spiffe://example.org/sl"
    )
    assert issued.info.spiffe_id == "spiffe://example.org/sl"


def test_key_files_are_private_and_nothing_is_overwritten_by_accident(tmp_path: Path) -> None:
    ca = create_ca(tmp_path)
    assert (tmp_path / "ca-key.pem").stat().st_mode & 0o777 == 0o600
    issued = issue_certificate(ca, "n", tmp_path, hosts=["n.local"], roles=[Role.SN])
    assert issued.key_path.stat().st_mode & 0o777 == 0o600
    with pytest.raises(ConfigError, match=r"n-key.pem: already exists \(pass --force"):
        issue_certificate(ca, "n", tmp_path, hosts=[], roles=[Role.SN])
    issue_certificate(ca, "n", tmp_path, hosts=[], roles=[Role.SN], overwrite=True)
    assert CertificateAuthority.load(tmp_path).certificate == ca.certificate


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"roles": []}, "give at least one of sn, sl, swop, swci"),
        ({"hosts": ["bad host"]}, "--host 'bad host' is not a host name"),
        ({"spiffe_id": "http://x"}, "must look like spiffe://"),
        ({"key_type": "rsa"}, "key type 'rsa' is not valid; valid: ed25519, p256"),
        ({"days": 0}, "--days must be at least 1"),
    ],
)
def test_bad_issue_arguments_are_one_clear_line(
    tmp_path: Path, kwargs: dict[str, object], message: str
) -> None:
    ca = create_ca(tmp_path)
    arguments: dict[str, object] = {"hosts": [], "roles": [Role.SL], **kwargs}
    with pytest.raises(ConfigError, match=message):
        issue_certificate(ca, "n", tmp_path, **arguments)  # type: ignore[arg-type]


def paths_of(pki: Pki, name: str, issuer: str = "ca") -> IdentityPaths:
    folder = pki.root / issuer
    return IdentityPaths(folder / f"{name}.pem", folder / f"{name}-key.pem", folder / "ca.pem")


def test_load_accepts_a_ca_directory_with_several_cas(pki: Pki, tmp_path: Path) -> None:
    capath = tmp_path / "capath"
    capath.mkdir()
    (capath / "other.pem").write_bytes((pki.root / "other" / "ca.pem").read_bytes())
    (capath / "swarm.crt").write_bytes(pki.ca_file.read_bytes())
    paths = paths_of(pki, "sl-1")
    identity = load_identity(IdentityPaths(paths.cert, paths.key, capath))
    assert len(identity.ca_certificates) == 2
    assert identity.peer_id == pki.sl.peer_id


def test_load_accepts_an_intermediate_ca_in_the_cert_file(tmp_path: Path) -> None:
    root = create_ca(tmp_path / "root")
    # An intermediate CA signed by the root, then a leaf signed by the intermediate.
    intermediate_key = ed25519.Ed25519PrivateKey.generate()
    now = dt.datetime.now(dt.UTC)
    intermediate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "issuing")]))
        .issuer_name(root.certificate.subject)
        .public_key(intermediate_key.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(root.key, None)
    )
    issued = issue_certificate(
        CertificateAuthority(intermediate, intermediate_key),
        "leaf",
        tmp_path,
        hosts=[],
        roles=[Role.SL],
    )
    with issued.cert_path.open("ab") as chain:
        chain.write(intermediate.public_bytes(serialization.Encoding.PEM))
    identity = load_identity(
        IdentityPaths(issued.cert_path, issued.key_path, tmp_path / "root" / "ca.pem")
    )
    assert identity.chain == (intermediate,)


def test_identity_paths_come_from_hpe_environment_names(tmp_path: Path) -> None:
    env = {
        "SWARM_ID_CERT": "/c.pem",
        "SWARM_ID_KEY": "/k.pem",
        "SWARM_ID_CAPATH": "/cas",
    }
    assert identity_paths_from_env(env) == IdentityPaths(
        Path("/c.pem"), Path("/k.pem"), Path("/cas")
    )
    env["SWARM_ID_CACERT"] = "/ca.pem"
    assert identity_paths_from_env(env).ca == Path("/ca.pem")
    assert identity_paths_from_env(env, cert=Path("x")).cert == Path("x")
    with pytest.raises(ConfigError, match=r"no identity: set --key \(or SWARM_ID_KEY\)"):
        identity_paths_from_env({"SWARM_ID_CERT": "/c", "SWARM_ID_CACERT": "/ca"})


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_every_loading_failure_names_the_file_and_the_reason(pki: Pki, tmp_path: Path) -> None:
    good = paths_of(pki, "sl-1")
    other = paths_of(pki, "intruder", "other")
    expired = paths_of(pki, "old")
    garbage = write(tmp_path / "garbage.pem", b"hello")
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_file = write(
        tmp_path / "rsa-key.pem",
        rsa_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    sealed = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    encrypted = write(tmp_path / "sealed-key.pem", sealed)
    cases = [
        (
            IdentityPaths(tmp_path / "nope.pem", good.key, good.ca),
            r"certificate .*nope.pem: file does not exist",
        ),
        (
            IdentityPaths(good.cert, tmp_path / "nokey.pem", good.ca),
            r"key .*nokey.pem: file does not exist",
        ),
        (
            IdentityPaths(good.cert, good.key, tmp_path / "noca.pem"),
            r"CA certificate .*noca.pem: file does not exist",
        ),
        (IdentityPaths(tmp_path, good.key, good.ca), r"certificate .*: is a directory"),
        (
            IdentityPaths(garbage, good.key, good.ca),
            r"certificate .*garbage.pem: not a PEM certificate",
        ),
        (IdentityPaths(good.cert, garbage, good.ca), r"key .*garbage.pem: not a PEM private key"),
        (
            IdentityPaths(good.cert, rsa_file, good.ca),
            r"rsa-key.pem: unsupported key type; valid: Ed25519",
        ),
        (IdentityPaths(good.cert, encrypted, good.ca), r"sealed-key.pem: is encrypted"),
        (
            IdentityPaths(good.cert, other.key, good.ca),
            r"intruder-key.pem: does not match certificate .*sl-1.pem",
        ),
        (
            IdentityPaths(other.cert, other.key, good.ca),
            r"intruder.pem: not issued by the CA in .*ca/ca.pem",
        ),
        (
            IdentityPaths(good.cert, good.key, good.cert),
            r"sl-1.pem: CN=sl-1 is not a CA certificate",
        ),
        (expired, r"old.pem: expired on 2020-01-02"),
    ]
    for paths, message in cases:
        with pytest.raises(ConfigError, match=message):
            load_identity(paths)


def test_a_certificate_that_is_not_valid_yet_is_refused(pki: Pki) -> None:
    with pytest.raises(ConfigError, match=r"sl-1.pem: not valid yet \(valid from"):
        load_identity(paths_of(pki, "sl-1"), now=dt.datetime(2001, 1, 1, tzinfo=dt.UTC))

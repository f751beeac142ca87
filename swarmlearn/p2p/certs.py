"""Certificates for trying swarmlearn out: a swarm CA and node certificates (``swarmlearn certs``).

Production users bring their own PKI (or SPIRE); what a node *accepts* is decided by
:mod:`swarmlearn.p2p.identity`, not here. A node certificate carries:

- an Ed25519 key by default (``key_type="p256"`` for ECDSA P-256);
- the node's name as common name, its host names and IPs as subject alternative names, and
  optionally a SPIFFE id (a URI SAN);
- ``serverAuth`` and ``clientAuth`` (mutual TLS) and the roles it may play as extended key
  usages, so the CA's signature covers the roles.

Files are written durably (temporary file, fsync, rename), keys with mode 0600, and nothing is
replaced without ``overwrite=True`` (``--force``).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from swarmlearn.errors import ConfigError
from swarmlearn.p2p.identity import (
    CertificateInfo,
    PrivateKey,
    Role,
    certificate_pem,
    describe_certificate,
    key_matches,
    read_certificates,
    read_private_key,
)

CA_CERT_FILE: Final = "ca.pem"
CA_KEY_FILE: Final = "ca-key.pem"
KEY_TYPES: Final = ("ed25519", "p256")


def _key_usage(**allowed: bool) -> x509.KeyUsage:
    """A KeyUsage with only the ``allowed`` bits set."""
    bits = (
        "digital_signature",
        "content_commitment",
        "key_encipherment",
        "data_encipherment",
        "key_agreement",
        "key_cert_sign",
        "crl_sign",
        "encipher_only",
        "decipher_only",
    )
    return x509.KeyUsage(**{bit: allowed.get(bit, False) for bit in bits})


def _now(now: dt.datetime | None) -> dt.datetime:
    return now if now is not None else dt.datetime.now(dt.UTC)


def write_atomically(
    path: Path, data: bytes, *, mode: int = 0o644, overwrite: bool = False
) -> None:
    """Write a whole file durably: a temporary file, fsync, rename, fsync of the directory."""
    if path.exists() and not overwrite:
        raise ConfigError(f"{path}: already exists (pass --force to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _private_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _new_key(key_type: str) -> PrivateKey:
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if key_type == "p256":
        return ec.generate_private_key(ec.SECP256R1())
    raise ConfigError(f"key type {key_type!r} is not valid; valid: {', '.join(KEY_TYPES)}")


def _sign_algorithm(key: PrivateKey) -> hashes.SHA256 | None:
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


# ---------------------------------------------------------------- the CA


@dataclass(frozen=True)
class CertificateAuthority:
    certificate: x509.Certificate
    key: PrivateKey

    @classmethod
    def load(cls, directory: Path) -> CertificateAuthority:
        certs = read_certificates(directory / CA_CERT_FILE, "CA certificate")
        key = read_private_key(directory / CA_KEY_FILE)
        if not key_matches(certs[0].public_key(), key):
            raise ConfigError(f"key {directory / CA_KEY_FILE}: does not match {CA_CERT_FILE}")
        return cls(certs[0], key)


def create_ca(
    directory: Path,
    *,
    name: str = "swarmlearn CA",
    days: int = 3650,
    key_type: str = "ed25519",
    now: dt.datetime | None = None,
    overwrite: bool = False,
) -> CertificateAuthority:
    """Make a CA key and self-signed certificate in ``directory`` (``ca.pem``, ``ca-key.pem``)."""
    if days < 1:
        raise ConfigError(f"--days must be at least 1, got {days}")
    key = _new_key(key_type)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    start = _now(now) - dt.timedelta(minutes=5)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, _sign_algorithm(key))
    )
    write_atomically(directory / CA_KEY_FILE, _private_pem(key), mode=0o600, overwrite=overwrite)
    write_atomically(directory / CA_CERT_FILE, certificate_pem(cert), overwrite=overwrite)
    return CertificateAuthority(cert, key)


@dataclass(frozen=True)
class IssuedFiles:
    cert_path: Path
    key_path: Path
    info: CertificateInfo


def issue_certificate(
    ca: CertificateAuthority,
    name: str,
    out_dir: Path,
    *,
    hosts: Sequence[str],
    roles: Iterable[Role],
    spiffe_id: str | None = None,
    days: int = 365,
    key_type: str = "ed25519",
    not_before: dt.datetime | None = None,
    now: dt.datetime | None = None,
    overwrite: bool = False,
) -> IssuedFiles:
    """Make a node key and a certificate signed by ``ca``: ``NAME.pem`` and ``NAME-key.pem``."""
    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"certificate name {name!r} is not valid; use letters, digits, - and _")
    role_set = sorted(set(roles), key=list(Role).index)
    if not role_set:
        raise ConfigError("--role: give at least one of " + ", ".join(role.value for role in Role))
    if days < 1:
        raise ConfigError(f"--days must be at least 1, got {days}")
    key = _new_key(key_type)
    start = not_before if not_before is not None else _now(now) - dt.timedelta(minutes=5)
    public = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.certificate.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            _key_usage(
                digital_signature=True, key_agreement=isinstance(key, ec.EllipticCurvePrivateKey)
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                + [role.oid for role in role_set]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.certificate.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
    )
    sans = _subject_alt_names(hosts, spiffe_id)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca.key, _sign_algorithm(ca.key))
    cert_path = out_dir / f"{name}.pem"
    key_path = out_dir / f"{name}-key.pem"
    write_atomically(key_path, _private_pem(key), mode=0o600, overwrite=overwrite)
    write_atomically(cert_path, certificate_pem(cert), overwrite=overwrite)
    return IssuedFiles(cert_path, key_path, describe_certificate(cert))


def _subject_alt_names(hosts: Sequence[str], spiffe_id: str | None) -> list[x509.GeneralName]:
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            if not host or any(ch in host for ch in " /:@"):
                raise ConfigError(f"--host {host!r} is not a host name or IP address") from None
            sans.append(x509.DNSName(host))
    if spiffe_id is not None:
        if not spiffe_id.startswith("spiffe://") or len(spiffe_id) <= len("spiffe://"):
            raise ConfigError(f"--spiffe-id {spiffe_id!r} must look like spiffe://domain/path")
        sans.append(x509.UniformResourceIdentifier(spiffe_id))
    return sans

"""Identity: peer ids, roles, and loading a node's certificate, key and trusted CAs.

Theory of operation
-------------------
Every node holds an X.509 certificate issued by the swarm's CA and the private
key that goes with it. The key is Ed25519 by default (ECDSA P-256 from a user's
own PKI or a SPIRE SVID is accepted too); the same key will sign consensus
votes and ledger transactions, so the *peer id* is the SHA-256 of the
certificate's SubjectPublicKeyInfo: stable across re-issued certificates for
the same key, printable as lowercase base32.

The roles a holder may play (SN, SL, SWOP, SWCI) are written into the
certificate as extended-key-usage purposes under our own OID arc, beside
``serverAuth`` and ``clientAuth`` (which mutual TLS needs), so the CA's
signature covers them and standard tools show them.

Loading (:func:`load_identity`) checks everything a node needs before it
starts: each file exists and parses, the certificate chains to a configured
CA, the validity window holds, and the key matches the certificate. Each
failure is one :class:`ConfigError` line naming the file and the reason.
HPE Swarm Learning's environment names (``SWARM_ID_CERT``, ``SWARM_ID_KEY``,
``SWARM_ID_CACERT``, ``SWARM_ID_CAPATH``) are read by
:func:`identity_paths_from_env`. Making certificates is :mod:`swarmlearn.p2p.certs`.
"""

from __future__ import annotations

import base64
import datetime as dt
import enum
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from swarmlearn.errors import ConfigError
from swarmlearn.p2p.signatures import PublicKey as PublicKey
from swarmlearn.p2p.signatures import verify_signature as verify_signature

PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey
#: Our OID arc (a UUID arc, ITU-T X.667: needs no registration).
SWARMLEARN_OID: Final = "2.25.272872296007734937468409686770217483434"


class Role(enum.StrEnum):
    """What a certificate's holder may do in the swarm (HPE's node kinds)."""

    SN = "sn"
    SL = "sl"
    SWOP = "swop"
    SWCI = "swci"

    @property
    def oid(self) -> x509.ObjectIdentifier:
        return x509.ObjectIdentifier(f"{SWARMLEARN_OID}.1.{list(Role).index(self) + 1}")


#: The roles of a certificate that runs a swarm-node (a swci certificate is an operator's).
NODE_ROLES: frozenset[Role] = frozenset({Role.SN, Role.SL, Role.SWOP})


@dataclass(frozen=True, order=True)
class PeerId:
    """SHA-256 of a certificate's SubjectPublicKeyInfo; ``str()`` is lowercase base32."""

    digest: bytes

    def __post_init__(self) -> None:
        if type(self.digest) is not bytes or len(self.digest) != 32:
            raise ValueError("a peer id is 32 bytes")

    @classmethod
    def from_public_key(cls, key: PublicKey) -> PeerId:
        spki = key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return cls(hashlib.sha256(spki).digest())

    @classmethod
    def parse(cls, text: str) -> PeerId:
        """Parse the printed form; ``ValueError`` if it is not one."""
        if len(text) != 52 or text != text.lower():
            raise ValueError(f"not a peer id: {text!r}")
        try:
            return cls(base64.b32decode(text.upper() + "====", casefold=False))
        except (ValueError, TypeError):
            raise ValueError(f"not a peer id: {text!r}") from None

    def __str__(self) -> str:
        return base64.b32encode(self.digest).decode().rstrip("=").lower()

    @property
    def short(self) -> str:
        """The first 8 characters, for logs."""
        return str(self)[:8]


@dataclass(frozen=True)
class CertificateInfo:
    """What a verified certificate says about its holder."""

    peer_id: PeerId
    name: str
    roles: frozenset[Role]
    spiffe_id: str | None
    not_valid_after: dt.datetime


def describe_certificate(cert: x509.Certificate) -> CertificateInfo:
    """Peer id, common name, roles and SPIFFE id of a certificate (no chain checks here)."""
    public_key = cert.public_key()
    if not isinstance(public_key, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey):
        raise ValueError(f"unsupported key type {type(public_key).__name__}")
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    name = str(names[0].value) if names else ""
    try:
        usages = set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        usages = set()
    roles = frozenset(role for role in Role if role.oid in usages)
    spiffe_id = None
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = [uri for uri in sans.get_values_for_type(x509.UniformResourceIdentifier)]
        spiffe_id = next((uri for uri in uris if uri.startswith("spiffe://")), None)
    except x509.ExtensionNotFound:
        pass
    return CertificateInfo(
        PeerId.from_public_key(public_key), name, roles, spiffe_id, cert.not_valid_after_utc
    )


# ---------------------------------------------------------------- files


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{what} {path}: file does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"{what} {path}: is a directory, expected a PEM file") from None
    except PermissionError:
        raise ConfigError(f"{what} {path}: not readable (permission denied)") from None
    except OSError as error:
        raise ConfigError(f"{what} {path}: cannot be read ({error.strerror})") from None


def read_certificates(path: Path, what: str) -> list[x509.Certificate]:
    data = _read(path, what)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ConfigError(f"{what} {path}: not a PEM certificate") from None
    return certs


def read_private_key(path: Path) -> PrivateKey:
    data = _read(path, "key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ConfigError(f"key {path}: is encrypted; give an unencrypted PEM key") from None
    except ValueError:
        raise ConfigError(f"key {path}: not a PEM private key") from None
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    raise ConfigError(f"key {path}: unsupported key type; valid: Ed25519, ECDSA P-256")


def certificate_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _now(now: dt.datetime | None) -> dt.datetime:
    return now if now is not None else dt.datetime.now(dt.UTC)


# ---------------------------------------------------------------- loading an identity


@dataclass(frozen=True)
class IdentityPaths:
    cert: Path
    key: Path
    ca: Path  # a PEM file of CA certificates, or a directory of them (HPE's SWARM_ID_CAPATH)


def identity_paths_from_env(
    environ: Mapping[str, str],
    *,
    cert: Path | None = None,
    key: Path | None = None,
    cacert: Path | None = None,
    capath: Path | None = None,
) -> IdentityPaths:
    """Paths given explicitly, else from HPE's ``SWARM_ID_*`` variables; one clear line if unset.

    ``cacert`` is a PEM file of CA certificates, ``capath`` a directory of them; the file wins
    when both are set, as with HPE's ``--cacert`` and ``--capath``.
    """
    cert = cert or _env_path(environ, "SWARM_ID_CERT")
    key = key or _env_path(environ, "SWARM_ID_KEY")
    ca = (
        cacert
        or capath
        or _env_path(environ, "SWARM_ID_CACERT")
        or _env_path(environ, "SWARM_ID_CAPATH")
    )
    missing = [
        what
        for what, value in (
            ("--cert (or SWARM_ID_CERT)", cert),
            ("--key (or SWARM_ID_KEY)", key),
            ("--cacert or --capath (or SWARM_ID_CACERT / SWARM_ID_CAPATH)", ca),
        )
        if value is None
    ]
    if missing:
        raise ConfigError("no identity: set " + ", ".join(missing))
    assert cert is not None
    assert key is not None
    assert ca is not None
    return IdentityPaths(cert, key, ca)


def _env_path(environ: Mapping[str, str], name: str) -> Path | None:
    value = environ.get(name, "").strip()
    return Path(value) if value else None


@dataclass(frozen=True)
class Identity:
    """A node's verified certificate, its key and the CA certificates it trusts."""

    paths: IdentityPaths
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]  # intermediates after the leaf, as in the cert file
    key: PrivateKey
    ca_certificates: tuple[x509.Certificate, ...]
    info: CertificateInfo

    @property
    def peer_id(self) -> PeerId:
        return self.info.peer_id

    @property
    def roles(self) -> frozenset[Role]:
        return self.info.roles

    def issuing_ca(self) -> x509.Certificate:
        """The trusted CA certificate that this node's certificate chains to."""
        for ca in self.ca_certificates:
            if _chains_to(self.certificate, self.chain, [ca]):
                return ca
        raise AssertionError("load_identity checked that the certificate chains to a CA")

    def ca_pem(self) -> str:
        return "".join(certificate_pem(cert).decode() for cert in self.ca_certificates)

    def sign(self, data: bytes) -> bytes:
        if isinstance(self.key, ed25519.Ed25519PrivateKey):
            return self.key.sign(data)
        return self.key.sign(data, ec.ECDSA(hashes.SHA256()))


def load_ca_certificates(path: Path) -> tuple[x509.Certificate, ...]:
    """CA certificates from a PEM file (each must be a CA) or a directory (non-CA files skipped)."""
    if not path.is_dir():
        certs = read_certificates(path, "CA certificate")
        for cert in certs:
            if not _is_ca(cert):
                subject = cert.subject.rfc4514_string()
                raise ConfigError(f"CA certificate {path}: {subject} is not a CA certificate")
        return tuple(certs)
    found: list[x509.Certificate] = []
    for file in sorted(p for p in path.iterdir() if p.suffix in (".pem", ".crt")):
        if b"-----BEGIN CERTIFICATE-----" in _read(file, "CA certificate"):
            found.extend(cert for cert in read_certificates(file, "CA certificate") if _is_ca(cert))
    if not found:
        raise ConfigError(f"CA directory {path}: holds no CA certificate (.pem or .crt)")
    return tuple(found)


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def load_identity(paths: IdentityPaths, *, now: dt.datetime | None = None) -> Identity:
    """Load and check a node identity; every failure is one :class:`ConfigError` line."""
    cas = load_ca_certificates(paths.ca)
    leaf, *chain = read_certificates(paths.cert, "certificate")
    key = read_private_key(paths.key)
    try:
        info = describe_certificate(leaf)
    except ValueError as error:
        raise ConfigError(
            f"certificate {paths.cert}: {error}; valid: Ed25519, ECDSA P-256"
        ) from None
    if not key_matches(leaf.public_key(), key):
        raise ConfigError(f"key {paths.key}: does not match certificate {paths.cert}")
    moment = _now(now)
    for cert in (leaf, *chain):
        _check_validity(cert, paths.cert, moment)
    if not _chains_to(leaf, chain, cas):
        raise ConfigError(f"certificate {paths.cert}: not issued by the CA in {paths.ca}")
    return Identity(paths, leaf, tuple(chain), key, cas, info)


def _check_validity(cert: x509.Certificate, path: Path, moment: dt.datetime) -> None:
    if moment < cert.not_valid_before_utc:
        start = cert.not_valid_before_utc.isoformat(timespec="seconds")
        raise ConfigError(f"certificate {path}: not valid yet (valid from {start})")
    if moment > cert.not_valid_after_utc:
        end = cert.not_valid_after_utc.isoformat(timespec="seconds")
        raise ConfigError(f"certificate {path}: expired on {end}")


def _chains_to(
    leaf: x509.Certificate, chain: Sequence[x509.Certificate], anchors: Sequence[x509.Certificate]
) -> bool:
    current = leaf
    pending = list(chain)
    for _ in range(len(chain) + 1):
        if any(_issued_by(current, anchor) for anchor in anchors):
            return True
        issuer = next((cert for cert in pending if _issued_by(current, cert)), None)
        if issuer is None:
            return False
        pending.remove(issuer)
        current = issuer
    return False


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def key_matches(public_key: object, key: PrivateKey) -> bool:
    if not isinstance(public_key, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey):
        return False
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return public_key.public_bytes(*fmt) == key.public_key().public_bytes(*fmt)

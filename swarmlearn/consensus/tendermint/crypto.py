"""Signing votes and proposals: the node's certificate key, or a fast stand-in for simulation.

:class:`KeySigner` signs with the node's own key (Ed25519, or ECDSA P-256 from an imported
PKI) and :class:`KeyVerifier` checks signatures against a validator's public key (DER
SubjectPublicKeyInfo). Ed25519 costs tens of microseconds per signature, which a simulated
100-validator swarm pays tens of thousands of times per height, so the simulator may use
:class:`SimSigner`/:class:`SimVerifier`: a keyed hash that catches every protocol mistake a
real signature catches (wrong signer, wrong bytes) but is *not* secure. Never use it outside
the simulator.

A message is checked once: :class:`VerifiedCache` wraps a verifier and remembers, in a
bounded first-in-first-out table, the digests of the (key, signature, signed bytes) triples
it found valid. The ledger over gossip checks each vote and proposal in gossip's validation
hook, and the consensus core (its vote keeper, the proposal check, a decided block's commit)
checks the same triple again: that second check is a lookup. Only successes are kept, and a
hit needs the exact key, signature and bytes, so a forged signature is verified (and
refused) every time.
"""

from __future__ import annotations

import hashlib
from collections import deque
from typing import TYPE_CHECKING, Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from swarmlearn.p2p.signatures import PublicKey, verify_signature

if TYPE_CHECKING:  # the node's identity (X.509) is the driver's: the cores load no x509
    from swarmlearn.p2p.identity import Identity


class Signer(Protocol):
    node_id: str
    public_key: bytes

    def sign(self, data: bytes) -> bytes: ...


class Verifier(Protocol):
    def verify(self, public_key: bytes, signature: bytes, data: bytes) -> bool: ...


class KeySigner:
    def __init__(self, identity: Identity) -> None:
        self.node_id = str(identity.peer_id)
        self.public_key = identity.certificate.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self._identity = identity

    def sign(self, data: bytes) -> bytes:
        return self._identity.sign(data)


class KeyVerifier:
    def __init__(self) -> None:
        self._keys: dict[bytes, PublicKey | None] = {}

    def _key(self, public_key: bytes) -> PublicKey | None:
        if public_key not in self._keys:
            try:
                loaded = serialization.load_der_public_key(public_key)
            except ValueError:
                loaded = None
            ok = isinstance(loaded, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey)
            self._keys[public_key] = loaded if ok else None  # type: ignore[assignment]
        return self._keys[public_key]

    def verify(self, public_key: bytes, signature: bytes, data: bytes) -> bool:
        key = self._key(public_key)
        return key is not None and verify_signature(key, signature, data)


VERIFIED_MAX = 8192  # remembered valid signatures: a few heights of 200 validators' votes


class VerifiedCache:
    """A verifier that checks each valid (key, signature, bytes) triple once."""

    def __init__(self, inner: Verifier, size: int = VERIFIED_MAX) -> None:
        if size < 1:
            raise ValueError("need size >= 1")
        self.inner = inner
        self.size = size
        self._valid: set[bytes] = set()
        self._order: deque[bytes] = deque()
        self.hits = 0  # verifications answered from the table
        self.checks = 0  # verifications done by the inner verifier

    def verify(self, public_key: bytes, signature: bytes, data: bytes) -> bool:
        key = _triple_digest(public_key, signature, data)
        if key in self._valid:
            self.hits += 1
            return True
        self.checks += 1
        if not self.inner.verify(public_key, signature, data):
            return False
        if len(self._order) >= self.size:
            self._valid.discard(self._order.popleft())
        self._valid.add(key)
        self._order.append(key)
        return True


def _triple_digest(public_key: bytes, signature: bytes, data: bytes) -> bytes:
    """One digest of the three, each length-prefixed (no two triples share an encoding)."""
    hasher = hashlib.sha256()
    for part in (public_key, signature, data):
        hasher.update(len(part).to_bytes(4, "big"))
        hasher.update(part)
    return hasher.digest()


SIM_KEY_PREFIX = b"sim-key:"


class SimSigner:
    """Simulation only: the 'signature' is a hash of the node's key and the data."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.public_key = SIM_KEY_PREFIX + node_id.encode()

    def sign(self, data: bytes) -> bytes:
        return hashlib.sha256(self.public_key + data).digest()


class SimVerifier:
    def verify(self, public_key: bytes, signature: bytes, data: bytes) -> bool:
        if not public_key.startswith(SIM_KEY_PREFIX):
            return False
        return hashlib.sha256(public_key + data).digest() == signature

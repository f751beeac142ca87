"""Signature checks over the keys identities carry, without X.509 (sans-IO cores import this:
``cryptography.x509`` reaches the standard library's socket module)."""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey


def verify_signature(public_key: PublicKey, signature: bytes, data: bytes) -> bool:
    """True when ``signature`` is ``public_key``'s over ``data``."""
    try:
        if isinstance(public_key, ed25519.Ed25519PublicKey):
            public_key.verify(signature, data)
        else:
            public_key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True

"""Certificates whose keys come from a seed, for simulator swarms: a node's id is the hash of
its public key, and the ids' order decides proposers and range owners, so a swarm made with
fresh random keys would run differently on every run of the suite."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from unittest import mock

from cryptography.hazmat.primitives.asymmetric import ed25519

from swarmlearn.p2p import certs
from swarmlearn.p2p.identity import PrivateKey


@contextmanager
def seeded_keys(seed: str) -> Iterator[None]:
    """Inside, every Ed25519 key that :mod:`swarmlearn.p2p.certs` makes is the next of a
    sequence drawn from ``seed`` (the same seed, the same keys, in the same order)."""
    drawn = 0
    make = certs._new_key

    def next_key(key_type: str) -> PrivateKey:
        nonlocal drawn
        if key_type != "ed25519":
            return make(key_type)
        drawn += 1
        secret = hashlib.sha256(f"{seed}/{drawn}".encode()).digest()
        return ed25519.Ed25519PrivateKey.from_private_bytes(secret)

    with mock.patch.object(certs, "_new_key", next_key):
        yield

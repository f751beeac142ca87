"""The application interface of the ledger, and a key-value application for tests.

The ledger orders transactions; the application gives them meaning. It must be
deterministic: the same blocks in the same order give the same state and the same app hash
on every node (no clocks, no randomness, no iteration over unordered sets).

``check_tx`` is a stateless admission check (the mempool and block validation call it);
``execute_block`` applies a committed block and returns the new app hash and any validator
changes, which take effect two heights later (at ``height + 2``), as in CometBFT.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from swarmlearn.consensus.tendermint.types import Block, Validator


@dataclass(frozen=True)
class Executed:
    app_hash: bytes
    validator_updates: tuple[Validator, ...] = ()  # power 0 removes a validator


class Application(Protocol):
    def check_tx(self, tx: bytes) -> str:
        """'' if the transaction may enter a block, else why not."""
        ...

    def execute_block(self, block: Block) -> Executed: ...

    def app_hash(self) -> bytes:
        """The hash of the state after the last executed block (genesis: of the initial state)."""
        ...


class KeyValueApp:
    """Test application: ``key=value`` sets a key; ``validator:<node>:<key hex>:<power>``
    changes a validator. The app hash covers the sorted state."""

    def __init__(self) -> None:
        self.state: dict[str, str] = {}
        self.executed_heights: list[int] = []
        self._hash = self._compute_hash(self.state)

    def check_tx(self, tx: bytes) -> str:
        try:
            text = tx.decode()
        except UnicodeDecodeError:
            return "not UTF-8"
        if text.startswith("validator:"):
            parts = text.split(":")
            if len(parts) != 4 or not parts[3].isdigit():
                return "expected validator:<node>:<key hex>:<power>"
            try:
                bytes.fromhex(parts[2])
            except ValueError:
                return "the key is not hex"
            return ""
        if "=" not in text:
            return "expected key=value"
        return ""

    def execute_block(self, block: Block) -> Executed:
        updates = []
        for tx in block.txs:
            text = tx.decode()
            if text.startswith("validator:"):
                _, node, key_hex, power = text.split(":")
                updates.append(Validator(node, bytes.fromhex(key_hex), int(power)))
                self.state[f"validator/{node}"] = power  # the set is part of the state
            else:
                key, _, value = text.partition("=")
                self.state[key] = value
        self.executed_heights.append(block.header.height)
        self._hash = self._compute_hash(self.state)
        return Executed(self._hash, tuple(updates))

    def app_hash(self) -> bytes:
        return self._hash

    @staticmethod
    def _compute_hash(state: Mapping[str, str]) -> bytes:
        digest = hashlib.sha256()
        for key in sorted(state):
            digest.update(f"{len(key)}:{key}{len(state[key])}:{state[key]}".encode())
        return digest.digest()

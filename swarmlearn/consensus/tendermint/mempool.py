"""The mempool: transactions waiting for a block, deduplicated, bounded, evicted once committed.

Order is arrival order (first come, first proposed). A transaction is refused when it is
already waiting, was committed recently, fails the application's ``check_tx``, or would push
the pool over ``txs_max`` or ``bytes_max`` (the caller learns why and may retry later).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class MempoolConfig:
    txs_max: int = 10_000
    bytes_max: int = 64 * 1024 * 1024
    tx_bytes_max: int = 1024 * 1024
    committed_remembered: int = 100_000


class Mempool:
    def __init__(
        self, check_tx: Callable[[bytes], str], config: MempoolConfig | None = None
    ) -> None:
        self.config = config or MempoolConfig()
        self._check_tx = check_tx
        self._txs: OrderedDict[bytes, bytes] = OrderedDict()
        self._bytes = 0
        self._committed: OrderedDict[bytes, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._txs)

    @staticmethod
    def key(tx: bytes) -> bytes:
        return hashlib.sha256(tx).digest()

    def add(self, tx: bytes) -> str:
        """'' when admitted, else the reason it was refused."""
        key = self.key(tx)
        if key in self._txs:
            return "already in the mempool"
        if key in self._committed:
            return "already committed"
        if len(tx) > self.config.tx_bytes_max:
            return f"transaction of {len(tx)} bytes over the {self.config.tx_bytes_max}-byte limit"
        if len(self._txs) >= self.config.txs_max or self._bytes + len(tx) > self.config.bytes_max:
            return "mempool full"
        reason = self._check_tx(tx)
        if reason:
            return reason
        self._txs[key] = tx
        self._bytes += len(tx)
        return ""

    def reap(self, txs_max: int, bytes_max: int) -> list[bytes]:
        """The oldest transactions that fit in a block (they stay until committed)."""
        chosen: list[bytes] = []
        size = 0
        for tx in self._txs.values():
            if len(chosen) >= txs_max or size + len(tx) > bytes_max:
                break
            chosen.append(tx)
            size += len(tx)
        return chosen

    def remove_committed(self, txs: Iterable[bytes]) -> None:
        for tx in txs:
            key = self.key(tx)
            found = self._txs.pop(key, None)
            if found is not None:
                self._bytes -= len(found)
            self._committed[key] = None
            self._committed.move_to_end(key)
        while len(self._committed) > self.config.committed_remembered:
            self._committed.popitem(last=False)

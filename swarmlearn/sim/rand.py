"""Randomness for the simulator: one root seed, an independent stream per subsystem.

``SeedTree(seed).rng("network")`` and ``.rng("node", "n3")`` are derived by hashing the root
seed with the path, so a new draw in one subsystem changes nothing in another, and adding a
node does not reorder the others' streams (FoundationDB's and TigerBeetle's rule).
"""

from __future__ import annotations

import hashlib
import random


class SeedTree:
    def __init__(self, seed: int) -> None:
        if type(seed) is not int or seed < 0:
            raise ValueError(f"a seed is a non-negative int, got {seed!r}")
        self.seed = seed

    def subseed(self, *path: str | int) -> int:
        text = "/".join([str(self.seed), *map(str, path)])
        return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")

    def rng(self, *path: str | int) -> random.Random:
        return random.Random(self.subseed(*path))

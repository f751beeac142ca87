"""Policing the peers (sans-IO): a peer that keeps gossiping forged transactions is banned.

Theory of operation
-------------------
Honest nodes check every transaction before they send it (the consensus core's ``_submit``
runs the application's ``check_tx`` before its ``Broadcast``; a transaction received from
a peer is never relayed), so a transaction a peer sends that fails a check that does not
depend on the ledger's state is provably the sender's doing. Those are *forgeries*
(:func:`swarmlearn.consensus.ledger.app.is_forgery`, next to the checks that say so):
undecodable bytes, bytes that are not a signed swarm transaction, a bad signature (another
sender's name, another chain's id, tampered bytes: peer ids are public-key hashes, so a
signature check never depends on the state), a ``Join`` with a
certificate of another swarm or of another node. Refusals for state reasons ("not a
member", "round closed", "mempool full", duplicates) are never counted: an honest peer
sends those when it is ahead of or behind this node.

:class:`Police` counts each peer's forgeries in a sliding window; at ``forged_max`` within
``window_s`` it bans the peer for ``ban_s``, doubled at every later ban of the same peer (up
to ``ban_max_s``). The peer network closes a banned peer's connections, refuses its
connections until the ban ends and does not dial it meanwhile. Each ban is logged once, with
the reason, and counted; the counts are in the node status and ``/metrics``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass(frozen=True)
class PolicingConfig:
    forged_max: int = 20  # forgeries within window_s that get a peer banned
    window_s: float = 60.0
    ban_s: float = 60.0  # the first ban; every later ban of the same peer doubles it
    ban_max_s: float = 3600.0


@dataclass(frozen=True)
class Ban:
    """A peer banned until ``until`` (on the police's clock), and why."""

    peer: str
    until: float
    duration_s: float
    reason: str


@dataclass
class _Record:
    recent: deque[float] = field(default_factory=deque)  # times of forgeries in the window
    forged: int = 0  # all forgeries ever
    last_reason: str = ""
    bans: int = 0
    banned_until: float = 0.0


class Police:
    def __init__(self, config: PolicingConfig | None = None) -> None:
        self.config = config or PolicingConfig()
        self._records: dict[str, _Record] = {}
        self.forged_total = 0
        self.bans_total = 0
        self.refused_total = 0  # connections refused because their peer was banned

    def forged(self, peer: str, reason: str, now: float) -> Ban | None:
        """Count one forged transaction from ``peer``; the ban it earns, if this one does."""
        record = self._records.setdefault(peer, _Record())
        record.forged += 1
        record.last_reason = reason
        self.forged_total += 1
        if self.banned_s(peer, now) > 0:
            return None  # already banned (what was queued before the ban arrives late)
        record.recent.append(now)
        while record.recent and record.recent[0] <= now - self.config.window_s:
            record.recent.popleft()
        if len(record.recent) < self.config.forged_max:
            return None
        record.recent.clear()
        duration_s = min(self.config.ban_s * 2**record.bans, self.config.ban_max_s)
        record.bans += 1
        record.banned_until = now + duration_s
        self.bans_total += 1
        why = (
            f"{self.config.forged_max} forged transactions within {self.config.window_s:g} s"
            f" (last: {reason})"
        )
        return Ban(peer, record.banned_until, duration_s, why)

    def banned_s(self, peer: str, now: float) -> float:
        """How long ``peer`` stays banned (0: it is not)."""
        record = self._records.get(peer)
        return max(0.0, record.banned_until - now) if record is not None else 0.0

    def banned(self, now: float) -> list[str]:
        """The peers banned now."""
        return sorted(peer for peer in self._records if self.banned_s(peer, now) > 0)

    def refuse(self, peer: str, now: float) -> bool:
        """Whether a connection of ``peer`` is to be refused now (counted when it is)."""
        if self.banned_s(peer, now) <= 0:
            return False
        self.refused_total += 1
        return True

    def snapshot(self, now: float) -> dict[str, object]:
        """The counts, per peer and in all, for the node status (JSON-ready)."""
        peers = {
            peer: {
                "forged": record.forged,
                "last_reason": record.last_reason,
                "bans": record.bans,
                "banned_for_s": round(self.banned_s(peer, now), 3),
            }
            for peer, record in sorted(self._records.items())
        }
        return {
            "forged_transactions": self.forged_total,
            "bans": self.bans_total,
            "refused_connections": self.refused_total,
            "banned": self.banned(now),
            "peers": peers,
        }

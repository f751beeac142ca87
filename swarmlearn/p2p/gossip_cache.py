"""Gossip bookkeeping with bounded memory: the seen cache, the message cache, peer scores.

- :class:`SeenCache`: message ids with an expiry (``ttl_s`` after first sight), oldest first,
  at most ``size_max`` (the oldest are forgotten early when full). Because the TTL is one
  constant, insertion order is expiry order and expiring is popping from the front.
- :class:`MessageCache`: gossipsub's ``mcache``: the full messages of the last
  ``history_length`` heartbeat windows, answerable to IWANT, of which the ids of the last
  ``history_gossip`` windows are announced in IHAVE. :meth:`MessageCache.shift` opens a new
  window at every heartbeat and drops the oldest.
- :class:`PeerScore`: a much reduced gossipsub v1.1 score: invalid messages (P4) and
  protocol misbehaviour (P7, e.g. a GRAFT during backoff) count, each squared and weighted
  negative, and decay geometrically every heartbeat. Mesh delivery (P3) and IP colocation
  (P6) terms are not modelled.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass

MessageId = bytes


class SeenCache:
    def __init__(self, ttl_s: float, size_max: int) -> None:
        self.ttl_s = ttl_s
        self.size_max = size_max
        self._expiry: OrderedDict[MessageId, float] = OrderedDict()

    def __contains__(self, message_id: MessageId) -> bool:
        return message_id in self._expiry

    def __len__(self) -> int:
        return len(self._expiry)

    def add(self, message_id: MessageId, now: float) -> bool:
        """Remember ``message_id``; False if it was already there."""
        if message_id in self._expiry:
            return False
        self._expiry[message_id] = now + self.ttl_s
        while len(self._expiry) > self.size_max:
            self._expiry.popitem(last=False)
        return True

    def expire(self, now: float) -> int:
        expired = 0
        while self._expiry:
            message_id, expiry = next(iter(self._expiry.items()))
            if expiry > now:
                break
            del self._expiry[message_id]
            expired += 1
        return expired


class MessageCache:
    def __init__(self, history_length: int, history_gossip: int) -> None:
        if not 1 <= history_gossip <= history_length:
            raise ValueError("need 1 <= history_gossip <= history_length")
        self.history_gossip = history_gossip
        self._windows: deque[list[tuple[MessageId, str]]] = deque([[]], maxlen=history_length)
        self._messages: dict[MessageId, tuple[str, bytes]] = {}

    def __len__(self) -> int:
        return len(self._messages)

    def put(self, message_id: MessageId, topic: str, data: bytes) -> None:
        if message_id not in self._messages:
            self._messages[message_id] = (topic, data)
            self._windows[0].append((message_id, topic))

    def get(self, message_id: MessageId) -> tuple[str, bytes] | None:
        return self._messages.get(message_id)

    def gossip_ids(self, topic: str) -> list[MessageId]:
        """Ids of ``topic`` in the last ``history_gossip`` windows, newest first."""
        ids = []
        for window in list(self._windows)[: self.history_gossip]:
            ids += [message_id for message_id, t in reversed(window) if t == topic]
        return ids

    def shift(self) -> None:
        if len(self._windows) == self._windows.maxlen:
            for message_id, _ in self._windows[-1]:
                self._messages.pop(message_id, None)
        self._windows.appendleft([])


@dataclass
class PeerScore:
    invalid: float = 0.0  # invalid messages delivered (P4)
    misbehaviour: float = 0.0  # protocol violations (P7)

    def value(self, invalid_weight: float, misbehaviour_weight: float) -> float:
        return invalid_weight * self.invalid**2 + misbehaviour_weight * self.misbehaviour**2

    def decay(self, factor: float) -> None:
        self.invalid = self.invalid * factor if self.invalid * factor >= 0.01 else 0.0
        self.misbehaviour = (
            self.misbehaviour * factor if self.misbehaviour * factor >= 0.01 else 0.0
        )

"""The simulated network: directed links with latency, bandwidth, loss, duplication, reordering,
partitions and clogging, and per-node ports (a node's access link, shared by all its links).

Theory of operation
-------------------
Each directed link ``(src, dst)`` behaves like a TCP connection through a modelled wire:

- **bandwidth**: a message occupies the link's sender for ``size * 8 / bandwidth_bps``
  seconds after the previous one finished, so a 10 MB weight chunk over 100 Mbit/s costs
  0.8 s however it is cut;
- **ports** (optional, per node, :meth:`Network.set_port`): a node's access link to the
  rest of the network, as a NIC behind a shaped veth. Every message a node sends first
  serialises on its egress port (shared by all its outgoing links, FIFO), and every message
  it receives serialises on its ingress port. Stages are cut-through (a fluid pipeline): a
  message's last bit leaves a stage no earlier than it left the stage before, and the
  slowest stage sets the pace, so sending 10 MB to each of 15 peers through a 100 Mbit/s
  egress port takes 12 s, not 0.8 s. The ingress port serves messages in the order they
  reach it (:meth:`Network.ingress`, called by the simulator when a message's last bit
  would be through with no one else on the port): a message over a 20 ms link is not held
  behind one sent just before over an 80 ms link;
- **latency**: then it travels ``latency_min_s`` plus a random exponential tail with mean
  ``latency_tail_s``;
- **order**: delivery is FIFO per link (a message never overtakes an earlier one), except
  with probability ``reorder`` a message skips that rule;
- **loss / duplication**: with probability ``loss`` a message is dropped; with probability
  ``duplicate`` it is delivered twice;
- **partitions**: a blocked link drops what is sent on it, and what was in flight on it when
  it is delivered (a broken connection loses its buffers);
- **clogging**: a clogged link delivers nothing until the clog ends, then everything it held
  (FoundationDB's "clogging": delay, not loss). Messages sent during the clog keep their
  order; those already in flight when it began arrive at its end after them.

Links are created on first use with ``default``, or with what ``link_factory(src, dst)``
returns (a scenario with per-pair latencies). The network only decides *when* (and whether)
a message arrives; the simulator schedules the delivery. All randomness comes from the
``rng`` handed in (the network's own sub-seed).
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from swarmlearn.sansio import NodeId


class Transit(NamedTuple):
    """One copy of a sent message on its way: when its last bit reaches the receiver's port
    (before the port's own queue), the link's epoch, and when its first bit did."""

    at: float
    epoch: int
    first_bit: float


class Arrival(enum.Enum):
    DELIVER = "deliver"
    DROP = "drop"
    HOLD = "hold"


@dataclass(frozen=True)
class LinkConfig:
    latency_min_s: float = 0.001
    latency_tail_s: float = 0.001
    bandwidth_bps: float = 1e9
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0

    def __post_init__(self) -> None:
        if self.latency_min_s < 0 or self.latency_tail_s < 0:
            raise ValueError("latencies must be >= 0")
        if not self.bandwidth_bps > 0:
            raise ValueError("bandwidth_bps must be > 0")
        for name in ("loss", "duplicate", "reorder"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1]")

    def describe(self) -> str:
        return (
            f"latency {self.latency_min_s * 1e3:.2f}+exp({self.latency_tail_s * 1e3:.2f}) ms, "
            f"{self.bandwidth_bps / 1e6:g} Mbit/s, loss {self.loss:g}, "
            f"dup {self.duplicate:g}, reorder {self.reorder:g}"
        )


@dataclass(frozen=True)
class PortConfig:
    """A node's access link: the rates all its outgoing and incoming links share."""

    egress_bps: float
    ingress_bps: float

    def __post_init__(self) -> None:
        if not (self.egress_bps > 0 and self.ingress_bps > 0):
            raise ValueError("a port's egress_bps and ingress_bps must be > 0")


@dataclass
class _Port:
    config: PortConfig
    egress_busy_until: float = 0.0
    ingress_busy_until: float = 0.0
    bytes_out: int = 0
    bytes_in: int = 0


LinkFactory = Callable[[NodeId, NodeId], LinkConfig]


@dataclass
class LinkStats:
    messages_sent: int = 0
    bytes_sent: int = 0
    messages_delivered: int = 0
    bytes_delivered: int = 0
    messages_dropped: int = 0
    in_flight: int = 0
    in_flight_max: int = 0


@dataclass
class _Link:
    config: LinkConfig
    stats: LinkStats = field(default_factory=LinkStats)
    busy_until: float = 0.0  # the sender's side of the wire is busy until then
    last_arrival: float = 0.0  # FIFO: nothing arrives before this
    clogged_until: float = 0.0
    epoch: int = 0  # bumped by drop_all: deliveries of older epochs are lost


class Network:
    def __init__(
        self,
        rng: random.Random,
        default: LinkConfig | None = None,
        link_factory: LinkFactory | None = None,
    ) -> None:
        self.rng = rng
        self.default = default or LinkConfig()
        #: Builds a new link's config (per-pair latencies); None: every link gets ``default``.
        self.link_factory = link_factory
        self._links: dict[tuple[NodeId, NodeId], _Link] = {}
        self._ports: dict[NodeId, _Port] = {}
        self._blocked: set[tuple[NodeId, NodeId]] = set()

    # ------------------------------------------------------------ configuration

    def link(self, src: NodeId, dst: NodeId) -> _Link:
        key = (src, dst)
        found = self._links.get(key)
        if found is None:
            config = self.default if self.link_factory is None else self.link_factory(src, dst)
            found = self._links[key] = _Link(config)
        return found

    def configure(self, src: NodeId, dst: NodeId, config: LinkConfig) -> None:
        self.link(src, dst).config = config

    def set_port(self, node: NodeId, config: PortConfig | None) -> None:
        """Give ``node`` an access link shared by all its links (None: no port, links only)."""
        if config is None:
            self._ports.pop(node, None)
        else:
            self._ports[node] = _Port(config)

    def port_bytes(self, node: NodeId) -> tuple[int, int]:
        """Bytes through ``node``'s port so far: (sent, received); (0, 0) without a port."""
        port = self._ports.get(node)
        return (0, 0) if port is None else (port.bytes_out, port.bytes_in)

    # ------------------------------------------------------------ the manual fault API

    def partition(
        self, side_a: Iterable[NodeId], side_b: Iterable[NodeId], *, one_way: bool = False
    ) -> None:
        """Block traffic from ``side_a`` to ``side_b`` (and back, unless ``one_way``)."""
        a, b = sorted(set(side_a)), sorted(set(side_b))
        for src in a:
            for dst in b:
                self._blocked.add((src, dst))
                if not one_way:
                    self._blocked.add((dst, src))

    def isolate(self, node: NodeId, everyone: Iterable[NodeId]) -> None:
        self.partition([node], [other for other in everyone if other != node])

    def random_split(self, nodes: Iterable[NodeId]) -> tuple[list[NodeId], list[NodeId]]:
        """Split ``nodes`` into two random non-empty sides and partition them."""
        ordered = sorted(nodes)
        self.rng.shuffle(ordered)
        cut = self.rng.randint(1, len(ordered) - 1)
        side_a, side_b = sorted(ordered[:cut]), sorted(ordered[cut:])
        self.partition(side_a, side_b)
        return side_a, side_b

    def heal(self) -> None:
        """Remove every partition (clogs end on their own)."""
        self._blocked.clear()

    def clog(self, src: NodeId, dst: NodeId, until: float) -> None:
        link = self.link(src, dst)
        link.clogged_until = max(link.clogged_until, until)

    def drop_all(self, node: NodeId | None = None) -> None:
        """Lose everything in flight (to or from ``node`` when given)."""
        for (src, dst), link in self._links.items():
            if node is None or node in (src, dst):
                link.epoch += 1

    def blocked(self, src: NodeId, dst: NodeId) -> bool:
        return (src, dst) in self._blocked

    # ------------------------------------------------------------ sending

    def transmit(self, src: NodeId, dst: NodeId, size: int, now: float) -> list[Transit]:
        """When a message sent now reaches ``dst``'s port: empty if lost, two if doubled.
        Its wait in that port's queue is :meth:`ingress`'s, when it gets there."""
        link = self.link(src, dst)
        stats = link.stats
        stats.messages_sent += 1
        stats.bytes_sent += size
        config = link.config
        if self.blocked(src, dst) or (config.loss and self.rng.random() < config.loss):
            stats.messages_dropped += 1
            return []
        bits = size * 8
        egress = self._ports.get(src)
        start = now  # the first bit leaves the sender
        finish = now  # ... and the last
        if egress is not None:
            start = max(now, egress.egress_busy_until)
            finish = egress.egress_busy_until = start + bits / egress.config.egress_bps
            egress.bytes_out += size
        start = max(start, link.busy_until)
        finish = link.busy_until = max(start + bits / config.bandwidth_bps, finish)
        arrivals = []
        copies = 2 if config.duplicate and self.rng.random() < config.duplicate else 1
        for _ in range(copies):
            latency_s = config.latency_min_s
            if config.latency_tail_s:
                latency_s += self.rng.expovariate(1 / config.latency_tail_s)
            arrival = finish + latency_s
            reordered = config.reorder and self.rng.random() < config.reorder
            if not reordered:
                arrival = max(arrival, link.last_arrival)
                link.last_arrival = arrival
            arrival = max(arrival, link.clogged_until)
            arrivals.append(Transit(arrival, link.epoch, start + latency_s))
        stats.in_flight += len(arrivals)
        stats.in_flight_max = max(stats.in_flight_max, stats.in_flight)
        return arrivals

    def ingress(self, dst: NodeId, size: int, first_bit: float, now: float) -> float:
        """A message whose last bit reaches ``dst``'s port now (its first bit at
        ``first_bit``): when its last bit is through the port's queue. Called in the order
        messages reach the port, so the port serves them first come, first served."""
        port = self._ports.get(dst)
        if port is None:
            return now
        bits = size * 8
        start = max(first_bit, port.ingress_busy_until)
        done = max(start + bits / port.config.ingress_bps, now)
        port.ingress_busy_until = done
        port.bytes_in += size
        return done

    def arrive(self, src: NodeId, dst: NodeId, size: int, epoch: int, now: float) -> Arrival:
        """At delivery time: deliver, drop (partition or drop_all since), or hold (clogged)."""
        link = self.link(src, dst)
        if link.epoch == epoch and not self.blocked(src, dst) and now < link.clogged_until:
            return Arrival.HOLD  # clogged after it was sent: it waits for the clog to end
        link.stats.in_flight -= 1
        if link.epoch != epoch or self.blocked(src, dst):
            link.stats.messages_dropped += 1
            return Arrival.DROP
        link.stats.messages_delivered += 1
        link.stats.bytes_delivered += size
        return Arrival.DELIVER

    def held_until(self, src: NodeId, dst: NodeId) -> float:
        return self.link(src, dst).clogged_until

    # ------------------------------------------------------------ counters

    def stats(self) -> dict[tuple[NodeId, NodeId], LinkStats]:
        return {key: self._links[key].stats for key in sorted(self._links)}

    def totals(self) -> LinkStats:
        total = LinkStats()
        for link in self._links.values():
            for name in ("messages_sent", "bytes_sent", "messages_delivered", "bytes_delivered"):
                setattr(total, name, getattr(total, name) + getattr(link.stats, name))
            total.messages_dropped += link.stats.messages_dropped
            total.in_flight += link.stats.in_flight
            total.in_flight_max = max(total.in_flight_max, link.stats.in_flight_max)
        return total

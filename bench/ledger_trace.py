"""Where a commit's time goes in the simulated ledger over gossip (virtual time).

Runs the ``ledger-gossip`` scenario with probes (the same run, seed for seed: the probes
only record) and prints where each transaction's commit latency goes:

- **tx -> proposer**: the transaction's trip over ``ledger/txs`` to the proposer of the
  block that holds it; **wait**: from there to that block's proposal (the height before
  still running, or empty blocks first);
- per height, medians over the validators, from the proposal: **proposal** (the proposal
  reached the validator: its prevote), **prevotes** (a prevote quorum: its precommit),
  **precommits** (a precommit quorum: its commit);
- per topic: messages published, full copies received per message per subscriber, and the
  queueing each copy met at the 100 Mbit/s ports (arrival minus link latency minus one
  serialisation);
- blocks: how many held transactions, how many were empty (and why).

    python bench/ledger_trace.py [--nodes 300] [--seed 0] [--scenario ledger-gossip-long]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import swarmlearn.consensus.tendermint.gossip_simulation as gs
from swarmlearn.consensus.tendermint.core import ConsensusCore
from swarmlearn.consensus.tendermint.over_gossip import decode
from swarmlearn.consensus.tendermint.types import Vote, VoteType
from swarmlearn.p2p.gossip import Gossip, GossipMessage, message_id
from swarmlearn.p2p.wire import encode_body
from swarmlearn.sim.cluster import FRAME_OVERHEAD_BYTES, Simulator
from swarmlearn.sim.network import Network
from swarmlearn.sim.scenarios import run_scenario


class Trace:
    def __init__(self) -> None:
        self.proposed: dict[int, tuple[str, float, int, bool]] = {}  # h -> (who, t, txs, clock)
        self.cast: dict[tuple[str, int, str], float] = {}  # (node, height, kind) -> first cast
        self.committed: dict[tuple[str, int], float] = {}
        self.block_txs: dict[int, tuple[bytes, ...]] = {}
        self.copies: dict[str, int] = defaultdict(int)
        self.firsts: dict[str, int] = defaultdict(int)
        self.published: dict[str, int] = defaultdict(int)
        self.queue: dict[str, list[float]] = defaultdict(list)
        self.sends: dict[str, int] = defaultdict(int)
        self.send_bytes: dict[str, int] = defaultdict(int)
        self.ingress: list[float] = []


TRACE = Trace()
VOTE_KINDS: dict[bytes, str] = {}


def kind_of(message: Any) -> str:
    if isinstance(message, GossipMessage):
        if message.topic.endswith("votes"):
            found = VOTE_KINDS.get(message.data)
            if found is None:
                if len(VOTE_KINDS) > 200_000:
                    VOTE_KINDS.clear()
                vote = decode(message.data)
                kind = vote.kind.name.lower() if isinstance(vote, Vote) else "?"
                found = VOTE_KINDS[message.data] = f"votes/{kind}"
            return found
        return message.topic.split("/")[-1]
    return type(message).__name__


PATCHED = (
    (ConsensusCore, "_cast"),
    (ConsensusCore, "_propose"),
    (ConsensusCore, "commit_block"),
    (Gossip, "_on_message"),
    (Gossip, "_publish"),
    (Simulator, "_send"),
    (Network, "ingress"),
    (gs.LedgerChecker, "submit"),
)


def install() -> Callable[[], None]:
    """Put the probes in (with a fresh record); returns what takes them out again."""
    global TRACE
    TRACE = Trace()
    CHECKERS.clear()
    saved = [(owner, name, owner.__dict__[name]) for owner, name in PATCHED]

    def uninstall() -> None:
        for owner, name, original in saved:
            setattr(owner, name, original)

    original_cast = ConsensusCore._cast
    original_propose = ConsensusCore._propose
    original_commit = ConsensusCore.commit_block
    original_on_message = Gossip._on_message
    original_publish = Gossip._publish
    original_ingress = Network.ingress

    def _cast(self: ConsensusCore, kind: VoteType, round_: int, value: Any, pending: Any) -> Any:
        if self.me in self.validators and value is not None:
            TRACE.cast.setdefault((self.me, self.height, kind.name), self.now)
        return original_cast(self, kind, round_, value, pending)

    def _propose(self: ConsensusCore, round_: int, block: Any, valid_round: int, p: Any) -> Any:
        fresh = (self.height, round_, "proposal") not in self.signed
        effects = original_propose(self, round_, block, valid_round, p)
        proposal = self.signed.get((self.height, round_, "proposal"))
        if fresh and proposal is not None and self.height not in TRACE.proposed:
            txs = proposal.block.txs  # type: ignore[union-attr]
            clock = not txs and len(self.mempool) > 0
            TRACE.proposed[self.height] = (self.me, self.now, len(txs), clock)
            TRACE.block_txs[self.height] = tuple(txs)
        return effects

    def commit_block(self: ConsensusCore, block: Any, commit: Any) -> Any:
        TRACE.committed.setdefault((self.me, self.height), self.now)
        TRACE.block_txs.setdefault(self.height, tuple(block.txs))
        return original_commit(self, block, commit)

    def _on_message(
        self: Gossip, sender: str, topic: str, data: bytes, now: float, **kw: Any
    ) -> Any:
        key = kind_of(GossipMessage(topic, data))
        TRACE.copies[key] += 1
        if message_id(topic, data) not in self.seen:
            TRACE.firsts[key] += 1
        return original_on_message(self, sender, topic, data, now, **kw)

    def _publish(self: Gossip, topic: str, data: bytes, now: float, *, forward: bool) -> Any:
        TRACE.published[kind_of(GossipMessage(topic, data))] += 1
        return original_publish(self, topic, data, now, forward=forward)

    def _send(self: Simulator, src: str, targets: Any, message: Any) -> None:
        head, payload = encode_body(message)
        data = head + bytes(payload)
        size = len(data) + FRAME_OVERHEAD_BYTES
        key = kind_of(message)
        network = self.network
        for dst in targets:
            link = network.link(src, dst)
            transits = network.transmit(src, dst, size, self.now)
            TRACE.sends[key] += 1
            TRACE.send_bytes[key] += size
            self.counters.messages_sent += 1
            self.counters.bytes_sent += size
            for transit in transits:
                TRACE.queue[key].append(transit.first_bit - link.config.latency_min_s - self.now)
                self._schedule_arrival(src, dst, data, size, transit.epoch, transit.at, transit)

    def ingress(self: Network, dst: str, size: int, first_bit: float, now: float) -> float:
        through = original_ingress(self, dst, size, first_bit, now)
        TRACE.ingress.append(through - now)
        return through

    ConsensusCore._cast = _cast  # type: ignore[method-assign]
    ConsensusCore._propose = _propose  # type: ignore[method-assign,assignment]
    ConsensusCore.commit_block = commit_block  # type: ignore[method-assign]
    Gossip._on_message = _on_message  # type: ignore[method-assign]
    Gossip._publish = _publish  # type: ignore[method-assign]
    Simulator._send = _send  # type: ignore[method-assign]
    Network.ingress = ingress  # type: ignore[method-assign]

    original_add = gs.LedgerChecker.submit

    def submit(self: Any, sim: Simulator, node: str, tx: bytes, at: float) -> None:
        original_add(self, sim, node, tx, at)
        CHECKERS.append(self)

    gs.LedgerChecker.submit = submit  # type: ignore[method-assign]
    return uninstall


CHECKERS: list[Any] = []


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def pct(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


def report() -> None:
    checker = CHECKERS[-1]
    validators = sorted({node for (node, _h, _k) in TRACE.cast})
    print("\nper height (medians over validators, from the proposal; ms):")
    print("  h  txs clock  gap  proposal prevotes precommits commit@p90")
    steps: dict[str, list[float]] = defaultdict(list)
    last_commit = None
    for height in sorted(TRACE.proposed):
        who, t0, txs, clock = TRACE.proposed[height]
        pv = [TRACE.cast.get((v, height, "PREVOTE"), float("nan")) - t0 for v in validators]
        pc = [TRACE.cast.get((v, height, "PRECOMMIT"), float("nan")) - t0 for v in validators]
        cm = [TRACE.committed.get((v, height), float("nan")) - t0 for v in validators]
        pv, pc, cm = (
            [x for x in pv if x == x],
            [x for x in pc if x == x],
            [x for x in cm if x == x],
        )
        gap = t0 - last_commit if last_commit is not None else float("nan")
        last_commit = TRACE.committed.get((who, height))
        steps["proposal"].append(median(pv))
        steps["prevotes"].append(median(pc) - median(pv))
        steps["precommits"].append(median(cm) - median(pc))
        steps["gap"].append(gap)
        print(
            f"{height:3d} {txs:4d} {'y' if clock else ' ':>5s} {gap * 1e3:5.0f} "
            f"{median(pv) * 1e3:8.0f} {(median(pc) - median(pv)) * 1e3:8.0f} "
            f"{(median(cm) - median(pc)) * 1e3:10.0f} {pct(cm, 0.9) * 1e3:8.0f}"
        )
    print(
        "medians over heights (ms): "
        + ", ".join(f"{k} {median(v) * 1e3:.0f}" for k, v in steps.items())
    )
    where: dict[bytes, int] = {}
    for at_height, held in TRACE.block_txs.items():
        for tx in held:
            where.setdefault(tx, at_height)
    parts: dict[str, list[float]] = defaultdict(list)
    for tx, (node, at) in checker.submitted.items():
        found = where.get(tx)
        if found is None or found not in TRACE.proposed:
            continue
        height = found
        t0 = TRACE.proposed[height][1]
        done = TRACE.committed.get((node, height), float("nan"))
        parts["total"].append(done - at)
        parts["submit->proposal"].append(t0 - at)
        parts["proposal->commit@submitter"].append(done - t0)
        parts["heights waited"].append(
            sum(1 for h in TRACE.proposed if TRACE.proposed[h][1] > at and h < height) * 1.0
        )
    print(f"\nper transaction ({len(parts['total'])}), p50 / p90:")
    for name, values in parts.items():
        scale = 1.0 if name == "heights waited" else 1e3
        print(f"  {name:28s} {pct(values, 0.5) * scale:7.0f} {pct(values, 0.9) * scale:7.0f}")
    empty = sum(1 for h in TRACE.proposed.values() if h[2] == 0)
    clocked = sum(1 for h in TRACE.proposed.values() if h[3])
    print(f"blocks {len(TRACE.proposed)}: empty {empty} (with txs waiting: {clocked})")
    q = TRACE.ingress
    print(
        f"\ningress queue (ms): p50 {pct(q, 0.5) * 1e3:.1f}, p90 {pct(q, 0.9) * 1e3:.1f}, "
        f"p99 {pct(q, 0.99) * 1e3:.1f}, max {max(q, default=0) * 1e3:.1f}"
    )
    print("per kind: published, copies per first copy, sends, MB, egress queue p50/p90/max ms")
    for key in sorted(TRACE.sends):
        q = TRACE.queue.get(key, [])
        firsts = TRACE.firsts.get(key, 0)
        ratio = TRACE.copies.get(key, 0) / firsts if firsts else 0.0
        print(
            f"  {key:22s} {TRACE.published.get(key, 0):6d} {ratio:5.2f} {TRACE.sends[key]:9d} "
            f"{TRACE.send_bytes[key] / 1e6:8.1f} {pct(q, 0.5) * 1e3:6.1f} {pct(q, 0.9) * 1e3:6.1f} "
            f"{max(q, default=0) * 1e3:6.1f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scenario", default="ledger-gossip", help="or ledger-gossip-long")
    args = parser.parse_args()
    install()
    start = time.perf_counter()
    result = run_scenario(args.scenario, args.seed, args.nodes)
    wall = time.perf_counter() - start
    for line in (*result.header, *result.summary()):
        print(line)
    print(f"wall {wall:.0f} s")
    report()


if __name__ == "__main__":
    main()

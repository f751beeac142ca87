"""Simulator speed: a big swarm gossiping, and a seed sweep of a small faulty one.

- 1,000 nodes run echo gossip for 60 virtual seconds (a rumor a second at a random node,
  anti-entropy every second at every node), every message through the wire codec;
- 100 seeds of the 10-node ``gossip`` scenario (every fault kind, then a healed phase that
  must converge).

Targets (the simulator issue): each under 30 s of wall time on this 2-core machine. Events/s
is also reported against a bare ``heapq`` loop of no-op events measured in the same run (the
ceiling for any pure-Python discrete-event loop).

With ``--ledger`` also the ledger over gossip (issue 17): the ``ledger-gossip`` scenario at
full size, 200 validators and 1,000 followers, 20-80 ms links, 1% loss, 100 Mbit/s ports
(``--quick``: 120 nodes). Targets: commit p50 <= 1 s virtual, every follower holds every
block. It takes long: at 1,200 nodes about 25 minutes of one core (9.9 million events: every
vote reaches 200 validators over gossip, each message through the wire codec). Measured
2026-12-07, seed 0, 12 links per node: commit p50 0.607 s, p99 0.806 s virtual, 1,000/1,000
followers with every block, 27 min wall on this shared 2-core machine (``python -m
swarmlearn.sim --scenario ledger-gossip --nodes 1200``). Where the time goes:
``python bench/ledger_trace.py --nodes 300``.

    python bench/sim.py [--quick] [--ledger]
"""

from __future__ import annotations

import argparse
import heapq
import json
import re
import statistics
import time
from typing import Any

import swarmlearn.consensus.tendermint.gossip_simulation  # noqa: F401  (registers ledger-gossip)
from swarmlearn.sim import Simulator, run_scenario
from swarmlearn.sim.echo import EchoChecker, EchoGossip
from swarmlearn.sim.scenarios import node_names

TARGET_WALL_S = 30.0


def bare_heap_events_per_s(count: int = 300_000) -> float:
    def noop() -> None:
        pass

    heap: list[tuple[float, int, object]] = []
    start = time.perf_counter()
    for seq in range(count):
        heapq.heappush(heap, (seq * 0.001, seq, noop))
    while heap:
        _, _, action = heapq.heappop(heap)
        action()  # type: ignore[operator]
    return count / (time.perf_counter() - start)


def big_swarm(nodes: int, virtual_s: float) -> dict[str, float]:
    checker = EchoChecker()
    sim = Simulator(1, node_names(nodes), EchoGossip.factory(), checkers=[checker])
    sim.start()
    workload = sim.seeds.rng("workload")
    rumors = int(virtual_s)
    for index in range(rumors):
        sim.request(workload.choice(sim.node_ids), b"rumor %d" % index, at=index + 0.5)
    start = time.perf_counter()
    outcome = sim.run(time_limit=virtual_s)
    wall = time.perf_counter() - start
    made = len(checker.bodies)  # every rumor a node made (the last ones are still spreading)
    held = sum(len(keys) for keys in checker.held.values())
    return {
        "wall_s": wall,
        "events": outcome.events,
        "events_per_s": outcome.events / wall,
        "messages": sim.counters.messages_sent,
        "delivered_fraction": held / (made * nodes) if made else 0.0,
    }


def seed_sweep(seeds: int) -> dict[str, float]:
    start = time.perf_counter()
    events = 0
    failures = 0
    for seed in range(seeds):
        result = run_scenario("gossip", seed)
        events += result.events
        failures += not result.ok
    wall = time.perf_counter() - start
    return {"wall_s": wall, "events": events, "events_per_s": events / wall, "failures": failures}


def ledger_gossip(nodes: int) -> dict[str, Any]:
    start = time.perf_counter()
    result = run_scenario("ledger-gossip", 0, nodes)
    text = "\n".join(result.checker_lines)
    p50, p99 = re.search(r"p50 ([0-9.]+) s, p99 ([0-9.]+) s", text).groups()  # type: ignore[union-attr]
    full, followers = re.search(r"every block: (\d+)/(\d+)", text).groups()  # type: ignore[union-attr]
    return {
        "ledger_nodes": nodes,
        "ledger_ok": result.ok,
        "ledger_commit_p50_s": float(p50),
        "ledger_commit_p99_s": float(p99),
        "ledger_followers_with_every_block": f"{full}/{followers}",
        "ledger_events": result.events,
        "ledger_wall_s": round(time.perf_counter() - start, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 nodes for 30 s, 20 seeds")
    parser.add_argument("--ledger", action="store_true", help="also the ledger over gossip")
    args = parser.parse_args()
    nodes, virtual_s, seeds = (200, 30.0, 20) if args.quick else (1000, 60.0, 100)
    ceiling = statistics.median(bare_heap_events_per_s() for _ in range(3))
    big = big_swarm(nodes, virtual_s)
    print(
        f"{nodes} nodes x {virtual_s:g} virtual s: {big['wall_s']:.1f} s wall, "
        f"{big['events_per_s']:.0f} events/s",
        flush=True,
    )
    sweep = seed_sweep(seeds)
    print(
        f"{seeds} seeds of gossip (10 nodes): {sweep['wall_s']:.1f} s wall, "
        f"{sweep['failures']} failures",
        flush=True,
    )
    figures: dict[str, Any] = {
        "swarm_nodes": nodes,
        "swarm_virtual_s": virtual_s,
        "swarm_wall_s": round(big["wall_s"], 2),
        "swarm_events": big["events"],
        "swarm_events_per_s": round(big["events_per_s"]),
        "swarm_messages": big["messages"],
        "swarm_delivered_fraction": round(big["delivered_fraction"], 4),
        "sweep_seeds": seeds,
        "sweep_wall_s": round(sweep["wall_s"], 2),
        "sweep_events_per_s": round(sweep["events_per_s"]),
        "sweep_failures": sweep["failures"],
        "bare_heap_events_per_s": round(ceiling),
        "swarm_events_vs_bare_heap": round(big["events_per_s"] / ceiling, 4),
    }
    targets: dict[str, str] = {
        "swarm_wall_s": f"< {TARGET_WALL_S:g}",
        "sweep_wall_s": f"< {TARGET_WALL_S:g}",
        "sweep_failures": "0",
    }
    met = (
        big["wall_s"] < TARGET_WALL_S and sweep["wall_s"] < TARGET_WALL_S and sweep["failures"] == 0
    )
    if args.ledger:
        ledger = ledger_gossip(120 if args.quick else 1200)
        print(f"ledger over gossip: {ledger}", flush=True)
        figures.update(ledger)
        targets["ledger_commit_p50_s"] = "<= 1.0 (virtual)"
        targets["ledger_followers_with_every_block"] = "all"
        full, followers = ledger["ledger_followers_with_every_block"].split("/")
        met = met and ledger["ledger_ok"] and ledger["ledger_commit_p50_s"] <= 1.0
        met = met and full == followers
    print(json.dumps({"figures": figures, "targets": targets, "met": met}))


if __name__ == "__main__":
    main()

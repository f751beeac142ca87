"""Ledger speed: commit latency and throughput, on loopback and in the simulator.

Loopback: four ``swarm-node`` validator processes (a sentinel and three that join it) over
mutual TLS, running the swarm ledger application: every transaction is signed (Ed25519) and
checked by each node when it enters the mempool and again when the block executes.
*Latency*: 200-byte transactions submitted one at a time on open connections,
each answered when committed (p50, p99 of submit -> committed). *Throughput*: a burst of
200-byte transactions spread over the four nodes without waiting; rate = count / time until
every node has committed them all. The mutual-TLS ping round trip on the same loopback is
reported as the floor a commit (several message delays) is measured against.

Simulator: N validators (4, 16, 100) with 1 ms links, the real consensus core with the
simulator's stand-in signatures; the same two figures in virtual time.

    python bench/consensus.py [--quick]

Targets (the consensus issue): loopback p50 <= 50 ms and >= 1,000 tx/s at 4 validators;
100 simulated validators commit with p50 <= 1 s of virtual time.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import trio
from cryptography.hazmat.primitives.serialization import Encoding

import swarmlearn.consensus.tendermint.simulation as bft
from swarmlearn.consensus.ledger.app import sign_transaction
from swarmlearn.consensus.ledger.txs import Heartbeat, Join
from swarmlearn.consensus.tendermint.events import Committed, SubmitTx
from swarmlearn.p2p.certs import create_ca, issue_certificate
from swarmlearn.p2p.identity import Identity, IdentityPaths, Role, load_identity
from swarmlearn.p2p.messages import Ping, Pong
from swarmlearn.p2p.transport import Connection, dial
from swarmlearn.roles.api.messages import NodeStatus, StatusRequest, SubmitReply, SubmitRequest
from swarmlearn.roles.node.node import ask
from swarmlearn.sim import Checker, LinkConfig, Simulator
from swarmlearn.sim.scenarios import node_names

TX_BYTES = 200
NODES = 4


def tx(tag: str, index: int) -> bytes:
    """A 200-byte transaction for the simulator's key-value test application."""
    head = f"{tag}{index}=".encode()
    return head + b"x" * (TX_BYTES - len(head))


def signed_tx(identity: Identity, chain_id: str, tag: str, index: int) -> bytes:
    """A signed swarm transaction of about 200 bytes (a heartbeat, padded) for the real nodes."""
    name = f"{tag}{index}-"
    probe = sign_transaction(identity, chain_id, Heartbeat(name))
    name += "x" * max(0, TX_BYTES - len(probe))
    return sign_transaction(identity, chain_id, Heartbeat(name))


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


# ---------------------------------------------------------------- loopback


@contextmanager
def validator(pki: Path, name: str, data: Path, *flags: str) -> Iterator[int]:
    ident = ["--cert", str(pki / f"{name}.pem"), "--key", str(pki / f"{name}-key.pem")]
    command = [sys.executable, "-m", "swarmlearn.roles.node.daemon", "--data", str(data), *ident]
    command += [
        "--cacert",
        str(pki / "ca.pem"),
        "--listen",
        "127.0.0.1:0",
        "--log-level",
        "error",
        "--api",
        "none",
        *flags,
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env) as process:
        try:
            assert process.stdout is not None
            banner = process.stdout.readline()
            if "/tcp/" not in banner:
                raise RuntimeError(f"{name} did not start: {banner!r}")
            yield int(banner.split("/tcp/")[1].split("/")[0])
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)


async def poll_status(
    operator: Identity, ports: list[int], predicate: Any, timeout_s: float
) -> list[NodeStatus]:
    with trio.fail_after(timeout_s):
        while True:
            found = [
                await ask(operator, "127.0.0.1", port, StatusRequest(), NodeStatus)
                for port in ports
            ]
            if predicate(found):
                return found
            await trio.sleep(0.02)


async def request(connection: Connection, message: Any, reply_type: type) -> Any:
    await connection.send(message)
    while True:
        reply = await connection.receive()
        if isinstance(reply, reply_type):
            return reply


async def loopback_figures(
    operator: Identity, ports: list[int], latency_txs: int, burst_txs: int
) -> dict[str, float]:
    found = await poll_status(
        operator, ports, lambda s: all(len(x.validators) == NODES for x in s), 120
    )
    chain_id = found[0].chain_id
    join = Join("", operator.certificate.public_bytes(Encoding.DER))
    joined = await ask(
        operator,
        "127.0.0.1",
        ports[0],
        SubmitRequest(sign_transaction(operator, chain_id, join), 30),
        SubmitReply,
    )
    if not joined.accepted:
        raise RuntimeError(f"the operator could not join: {joined.reason}")
    connections = [await dial(operator, "127.0.0.1", port) for port in ports]
    try:
        pings = []
        for nonce in range(200):
            start = time.perf_counter()
            await request(connections[0], Ping(nonce), Pong)
            pings.append(time.perf_counter() - start)
        latencies = []
        for index in range(latency_txs):
            start = time.perf_counter()
            data = signed_tx(operator, chain_id, "lat", index)
            reply = await request(
                connections[index % NODES], SubmitRequest(data, 30.0), SubmitReply
            )
            if not reply.accepted:
                raise RuntimeError(f"transaction refused: {reply.reason}")
            latencies.append(time.perf_counter() - start)
        base = min(x.txs for x in await poll_status(operator, ports, lambda s: True, 30))
        burst = [signed_tx(operator, chain_id, "tput", index) for index in range(burst_txs)]
        start = time.perf_counter()
        for index, data in enumerate(burst):
            await connections[index % NODES].send(SubmitRequest(data))
        for index in range(burst_txs):
            await connections[index % NODES].receive()
        await poll_status(operator, ports, lambda s: min(x.txs for x in s) >= base + burst_txs, 300)
        elapsed = time.perf_counter() - start
    finally:
        for connection in connections:
            await connection.aclose()
    return {
        "loopback_commit_p50_ms": statistics.median(latencies) * 1000,
        "loopback_commit_p99_ms": percentile(latencies, 0.99) * 1000,
        "loopback_txs_per_s": burst_txs / elapsed,
        "loopback_mtls_ping_p50_ms": statistics.median(pings) * 1000,
    }


def run_loopback(latency_txs: int, burst_txs: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        root = Path(tmp)
        ca = create_ca(root / "pki")
        for index in range(NODES):
            issue_certificate(ca, f"sn{index}", root / "pki", hosts=["127.0.0.1"], roles=[Role.SN])
        issue_certificate(ca, "operator", root / "pki", hosts=[], roles=[Role.SWCI])
        pki = root / "pki"
        sentinel = stack.enter_context(validator(pki, "sn0", root / "n0", "--sentinel"))
        ports = [sentinel]
        for index in range(1, NODES):
            bootstrap = ("--bootstrap", f"127.0.0.1:{sentinel}")
            ports.append(
                stack.enter_context(validator(pki, f"sn{index}", root / f"n{index}", *bootstrap))
            )
        operator = load_identity(
            IdentityPaths(pki / "operator.pem", pki / "operator-key.pem", pki / "ca.pem")
        )
        return trio.run(loopback_figures, operator, ports, latency_txs, burst_txs)


# ---------------------------------------------------------------- simulator


class CommitTimes(Checker):
    name = "commit-times"

    def __init__(self) -> None:
        self.first: dict[tuple[str, bytes], float] = {}

    def on_deliver(self, node: str, incarnation: int, value: Any, time: float) -> None:
        if isinstance(value, Committed):
            for data in value.txs:
                self.first.setdefault((node, data), time)


def run_simulated(validators: int, latency_txs: int, burst_txs: int) -> dict[str, float]:
    nodes = tuple(node_names(validators))
    times = CommitTimes()
    link = LinkConfig(latency_min_s=0.001, latency_tail_s=0.0, bandwidth_bps=1e9)
    sim = Simulator(1, nodes, bft.validator_factory(nodes), link=link, checkers=[times])
    sim.start()
    submitted: dict[bytes, tuple[str, float]] = {}
    for index in range(latency_txs):  # one at a time, 0.2 virtual s apart
        data, node, at = tx("lat", index), nodes[index % validators], 1.0 + 0.2 * index
        submitted[data] = (node, at)
        sim.request(node, SubmitTx(data), at=at)
    burst_at = 2.0 + 0.2 * latency_txs
    burst = [tx("tput", index) for index in range(burst_txs)]
    for index, data in enumerate(burst):
        sim.request(nodes[index % validators], SubmitTx(data), at=burst_at)

    def burst_done() -> bool:
        return all((nodes[0], data) in times.first for data in burst)

    started = time.perf_counter()
    sim.run(until=burst_done, time_limit=burst_at + 600)
    wall = time.perf_counter() - started
    latencies = [
        times.first[(node, data)] - at
        for data, (node, at) in submitted.items()
        if (node, data) in times.first
    ]
    last = max(times.first[(nodes[0], data)] for data in burst)  # all committed, as n0 sees it
    return {
        f"sim{validators}_commit_p50_s": statistics.median(latencies),
        f"sim{validators}_commit_p99_s": percentile(latencies, 0.99),
        f"sim{validators}_txs_per_virtual_s": burst_txs / (last - burst_at),
        f"sim{validators}_wall_s": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer transactions (under 30 s)")
    args = parser.parse_args()
    figures: dict[str, float] = {}
    if args.quick:
        # The burst stays at the full run's 5,000 (about 5 s): a shorter one is mostly the
        # first block's commit, so its rate could not meet the 1,000 tx/s target that a
        # sustained burst meets (1,500 gave 695-782 tx/s on a quiet machine).
        figures.update(run_loopback(latency_txs=40, burst_txs=5000))
        sizes = ((4, 20, 500), (16, 10, 300), (100, 3, 40))
    else:
        figures.update(run_loopback(latency_txs=200, burst_txs=5000))
        sizes = ((4, 50, 2000), (16, 30, 1000), (100, 10, 300))
    for validators, latency_txs, burst_txs in sizes:
        figures.update(run_simulated(validators, latency_txs, burst_txs))
    figures["loopback_p50_vs_mtls_ping"] = (
        figures["loopback_commit_p50_ms"] / figures["loopback_mtls_ping_p50_ms"]
    )
    rounded = {k: round(v, 4) for k, v in figures.items()}
    targets = {
        "loopback_commit_p50_ms": "<= 50",
        "loopback_txs_per_s": ">= 1000",
        "sim100_commit_p50_s": "<= 1",
    }
    met = (
        figures["loopback_commit_p50_ms"] <= 50
        and figures["loopback_txs_per_s"] >= 1000
        and figures["sim100_commit_p50_s"] <= 1
    )
    print(json.dumps({"figures": rounded, "targets": targets, "met": met}))


if __name__ == "__main__":
    main()

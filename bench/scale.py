"""Scale on real processes: N ``swarm-node`` daemons, each in its own network namespace.

Every daemon runs in a network namespace of its own with its own address, joined to the
others through a veth pair on a bridge (the bridge lives in a hub namespace, and the bench
talks to the nodes from a client namespace: nothing is added to the host's own network).
Each node's link is shaped with ``tc``'s ``tbf`` qdisc at 100 Mbit/s both ways (egress on
the node's side of the veth, ingress on the hub's side); ``netem`` does not work on these
machines, ``tbf`` does. Figures:

- **connections per node**: distinct node peers with an established TCP connection, read
  from each daemon's ``/proc/PID/net/tcp`` (target: at most the peer table's 12 links, which
  hold gossip's mesh (``d_hi`` 6), plus the round's participants, not N-1);
- **ledger commit latency** p50/p99 with N validators: signed transactions submitted one at
  a time, each answered when committed (target: p50 <= 0.5 s);
- **a 10 MB round among 16** (all nodes with ``--quick``) against the bandwidth bound
  ``2(N-1)/N x size / link rate`` (target: <= 1.3x the bound). The round's 16 are SN + SL
  nodes, the other 16 SN only (validators, as HPE deploys SN and SL apart): a round closes as
  soon as every active learner has checked in, while a learner that never checks in would hold
  every round for the contract's ``grace_ms`` (2 s) by design. ``round_attempts`` says how
  many attempts the round took: when the first passes its deadline (at 32 daemons on 2 cores
  it did, with the ledger taking most of the CPU), the phase ``closed`` holds that whole
  first attempt and ``exchanged`` (``exchange_vs_bound``) is the second attempt's exchange;
- **the same exchange funnelled through one merger**, as HPE's leader does: every
  participant sends its contribution to one node, which sends the merged model back to each.
  Today's node has no such mode, so this is plain TCP streams between the same namespaces
  (no TLS, no ledger, no merge: a lower bound on the funnel's time); the ratio to the
  sharded round is reported.

Each node is one p2p host (issue 17): its links are the peer table's (``links_max`` 12: 4
dialed, 8 accepted), plus the links and round lanes among a round's participants. A swarm of
at most 13 nodes is a full mesh, so ``--quick`` (8) cannot show fewer than N-1; 32 can.

    python bench/scale.py [--quick] [--nodes N] [--round-nodes R] [--size-mb MB]

Needs root, ``ip`` and ``tc`` (iproute2: ``apt-get install iproute2``). ``--quick``: 8
daemons, a 4 MB round among all 8, under 60 s. Everything the bench makes (namespaces, and
with them their veths and the bridge) is removed at the end, on failure and on Ctrl-C;
``--cleanup`` removes what a killed run left (namespaces named ``swlscale-*``). Addresses are
in 10.213.0.0/24, only inside the namespaces the bench makes. The last line is the JSON object
``{"figures": ..., "targets": ..., "met": ...}``.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.util
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

PREFIX = "swlscale-"
SUBNET = "10.213.0"
CLIENT_IP = f"{SUBNET}.250"
PORT = 30303
FUNNEL_PORT = 30399
OVERLOADED = "node overloaded"  # a submit refused at a full input queue: retried
OVERLOADED_WAIT_S = 0.2
OVERLOADED_RETRIES = [0]  # how many times (a figure: the latency includes them)
#: Flags every daemon gets (``--lane-port none``: the round lanes on 30303 too).
DAEMON_FLAGS: list[str] = []
RATE = "100mbit"
RATE_BPS = 100e6
#: The peer table's ordinary links (``links_max``): gossip's mesh (d_hi 6) is drawn from them.
LINKS_MAX = 12
MB = 1_000_000
CLONE_NEWNET = 0x40000000


def _load(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", HERE / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def node_ip(index: int) -> str:
    return f"{SUBNET}.{index + 1}"


# ---------------------------------------------------------------- the testbed


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, text=True)


class Testbed:
    """Namespaces: a hub with the bridge, a client, one per node; shaped veths to the hub."""

    def __init__(self, nodes: int) -> None:
        self.tag = f"{PREFIX}{os.getpid()}"
        self.hub = f"{self.tag}-hub"
        self.client = f"{self.tag}-client"
        self.nodes = [f"{self.tag}-n{i}" for i in range(nodes)]
        self.made: list[str] = []

    def __enter__(self) -> Testbed:
        try:
            self._build()
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def _netns(self, name: str) -> None:
        sh("ip", "netns", "add", name)
        self.made.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")

    def _build(self) -> None:
        self._netns(self.hub)
        sh("ip", "-n", self.hub, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", self.hub, "link", "set", "br0", "up")
        self._attach(self.client, "vc", CLIENT_IP, shaped=False)
        for index, name in enumerate(self.nodes):
            self._attach(name, f"v{index}", node_ip(index), shaped=True)

    def _attach(self, name: str, hub_end: str, ip: str, *, shaped: bool) -> None:
        self._netns(name)
        sh("ip", "-n", self.hub, "link", "add", hub_end, "type", "veth", "peer", "eth0",
           "netns", name)  # fmt: skip
        sh("ip", "-n", self.hub, "link", "set", hub_end, "master", "br0", "up")
        sh("ip", "-n", name, "addr", "add", f"{ip}/24", "dev", "eth0")
        sh("ip", "-n", name, "link", "set", "eth0", "up")
        if shaped:
            for namespace, device in ((name, "eth0"), (self.hub, hub_end)):
                sh("ip", "netns", "exec", namespace, "tc", "qdisc", "add", "dev", device,
                   "root", "tbf", "rate", RATE, "burst", "128kb", "latency", "100ms")  # fmt: skip

    def remove(self) -> None:
        """Delete every namespace made (their veths, and the hub's bridge, go with them)."""
        for name in reversed(self.made):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
        self.made.clear()

    def enter_client(self) -> None:
        """Move this process's network (its main thread, before any other) to the client."""
        libc = ctypes.CDLL(None, use_errno=True)
        with open(f"/run/netns/{self.client}") as handle:
            if libc.setns(handle.fileno(), CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns into the client namespace failed")


def cleanup_leftovers() -> list[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    names = [line.split()[0] for line in listed.stdout.splitlines() if line.startswith(PREFIX)]
    for name in names:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
    return names


# ---------------------------------------------------------------- daemons


@contextmanager
def daemon(
    namespace: str, pki: Path, name: str, ip: str, data: Path, *flags: str
) -> Iterator[subprocess.Popen[str]]:
    ident = ["--cert", str(pki / f"{name}.pem"), "--key", str(pki / f"{name}-key.pem")]
    command = [
        "ip",
        "netns",
        "exec",
        namespace,
        sys.executable,
        "-m",
        "swarmlearn.roles.node.daemon",
    ]
    command += ["--data", str(data), *ident, "--cacert", str(pki / "ca.pem")]
    command += ["--listen", f"{ip}:{PORT}", "--log-level", "error", "--api", "none", *flags]
    command += DAEMON_FLAGS
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(HERE.parent)}
    data.mkdir(parents=True, exist_ok=True)
    with (
        (data / "stderr.log").open("a") as errors,
        subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=errors, text=True, env=env
        ) as process,
    ):
        try:
            yield process
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()


def wait_banner(process: subprocess.Popen[str], data: Path) -> None:
    assert process.stdout is not None
    banner = process.stdout.readline()
    if "/tcp/" not in banner:
        raise RuntimeError(f"a node did not start: {(data / 'stderr.log').read_text()[-2000:]}")


def node_peers(pid: int, own_ip: str) -> int:
    """Distinct node addresses this daemon holds an established TCP connection with."""
    peers = set()
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] != "01":  # ESTABLISHED
            continue
        remote = fields[2].split(":")[0]
        address = socket.inet_ntoa(bytes.fromhex(remote)[::-1])
        if address.startswith(SUBNET + ".") and address not in (own_ip, CLIENT_IP):
            peers.add(address)
    return len(peers)


# ---------------------------------------------------------------- the ledger


async def ledger_latency(operator: Any, ips: list[str], count: int) -> list[float]:
    import trio
    from cryptography.hazmat.primitives.serialization import Encoding

    from swarmlearn.consensus.ledger.app import sign_transaction
    from swarmlearn.consensus.ledger.txs import Join
    from swarmlearn.p2p.transport import dial
    from swarmlearn.roles.api.messages import NodeStatus, StatusRequest, SubmitReply, SubmitRequest
    from swarmlearn.roles.node.node import ask

    consensus = _load("consensus")
    status = await ask(operator, ips[0], PORT, StatusRequest(), NodeStatus)
    chain_id = status.chain_id
    join = Join("", operator.certificate.public_bytes(Encoding.DER))
    joined = await ask(
        operator, ips[0], PORT, SubmitRequest(sign_transaction(operator, chain_id, join), 30),
        SubmitReply,
    )  # fmt: skip
    if not joined.accepted:
        raise RuntimeError(f"the operator could not join: {joined.reason}")
    connections = [await dial(operator, ip, PORT) for ip in ips]
    latencies = []
    try:
        for index in range(count):
            data = consensus.signed_tx(operator, chain_id, "scale", index)
            start = time.perf_counter()
            with trio.fail_after(60):
                while True:
                    slot = index % len(ips)
                    try:
                        reply = await consensus.request(
                            connections[slot], SubmitRequest(data, 30.0), SubmitReply
                        )
                    except (trio.EndOfChannel, trio.BrokenResourceError) as error:
                        # The node closed a client connection idle past its REQUEST_IDLE_S
                        # (a slow swarm: 32 transactions take longer than that): dial again.
                        await connections[slot].aclose()
                        connections[slot] = await dial(operator, ips[slot], PORT)
                        start = time.perf_counter()  # the dial is not the ledger's time
                        print(f"redialed {ips[slot]}: {error!r}", file=sys.stderr, flush=True)
                        continue
                    if reply.reason != OVERLOADED:
                        break
                    OVERLOADED_RETRIES[0] += 1  # its input queue was full: again, timed
                    await trio.sleep(OVERLOADED_WAIT_S)
            if not reply.accepted:
                raise RuntimeError(f"transaction refused: {reply.reason}")
            latencies.append(time.perf_counter() - start)
    finally:
        for connection in connections:
            await connection.aclose()
    return latencies


async def wait_validators(operator: Any, ips: list[str], timeout_s: float) -> None:
    import trio

    from swarmlearn.errors import RemoteProtocolError
    from swarmlearn.roles.api.messages import NodeStatus, StatusRequest
    from swarmlearn.roles.node.node import ask

    seats = -1
    with trio.fail_after(timeout_s):
        while True:
            try:
                found = [await ask(operator, ip, PORT, StatusRequest(), NodeStatus) for ip in ips]
            except (OSError, RemoteProtocolError, trio.BrokenResourceError, trio.EndOfChannel,
                    trio.TooSlowError):  # fmt: skip
                found = []  # a busy node: ask again
            if found and min(len(s.validators) for s in found) != seats:
                seats = min(len(s.validators) for s in found)
                print(f"validators seen by every node: {seats}/{len(ips)}", file=sys.stderr)
            if found and all(len(s.validators) == len(ips) for s in found):
                return
            await trio.sleep(0.2)


# ---------------------------------------------------------------- the funnel (one merger)


def funnel_merger(ip: str, senders: int, size: int) -> None:
    """Accept ``senders`` streams, read ``size`` bytes from each, then send ``size`` back to
    each; print the seconds from the first connection to the last byte sent."""
    with socket.create_server((ip, FUNNEL_PORT), backlog=senders) as server:
        print("ready", flush=True)
        conns = [server.accept()[0] for _ in range(senders)]
        start = time.perf_counter()

        def take(conn: socket.socket) -> None:
            left = size
            while left:
                got = conn.recv(min(left, 1 << 20))
                if not got:
                    raise RuntimeError("a sender closed early")
                left -= len(got)

        _each(take, conns)
        merged = bytes(size)
        _each(lambda conn: conn.sendall(merged), conns)
        for conn in conns:
            conn.close()
        print(f"{time.perf_counter() - start:.4f}", flush=True)


def funnel_sender(ip: str, size: int) -> None:
    with socket.create_connection((ip, FUNNEL_PORT), timeout=300) as conn:
        conn.sendall(bytes(size))
        left = size
        while left:
            got = conn.recv(min(left, 1 << 20))
            if not got:
                raise RuntimeError("the merger closed early")
            left -= len(got)


def _each(action: Any, conns: list[socket.socket]) -> None:
    threads = [threading.Thread(target=action, args=(c,)) for c in conns]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def run_funnel(bed: Testbed, participants: int, size: int) -> float:
    """The merger is node 0; nodes 1..participants-1 send to it."""
    me = [sys.executable, str(Path(__file__).resolve())]
    merger = subprocess.Popen(
        ["ip", "netns", "exec", bed.nodes[0], *me, "--funnel-merger", node_ip(0),
         str(participants - 1), str(size)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert merger.stdout is not None
        if merger.stdout.readline().strip() != "ready":
            raise RuntimeError("the funnel's merger did not start")
        senders = [
            subprocess.Popen(
                ["ip", "netns", "exec", bed.nodes[i], *me, "--funnel-sender", node_ip(0), str(size)]
            )
            for i in range(1, participants)
        ]
        for sender in senders:
            if sender.wait(timeout=600) != 0:
                raise RuntimeError("a funnel sender failed")
        return float(merger.stdout.readline())
    finally:
        if merger.poll() is None:
            merger.kill()
        merger.wait()


# ---------------------------------------------------------------- the run


def measure(bed: Testbed, args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    import trio

    from swarmlearn.merge import ModelState, layout_of
    from swarmlearn.p2p.certs import create_ca, issue_certificate
    from swarmlearn.p2p.identity import IdentityPaths, Role, load_identity

    nodes, participants, size = args.nodes, args.round_nodes, args.size_mb * MB
    round_bench = _load("round")
    figures: dict[str, Any] = {"nodes": nodes, "round_nodes": participants, "size_MB": args.size_mb}
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        root = Path(tmp)
        ca = create_ca(root / "pki")
        for index in range(nodes):  # the round's nodes learn (SL); the rest are ledger only
            roles = [Role.SN, Role.SL] if index < participants else [Role.SN]
            issue_certificate(ca, f"sn{index}", root / "pki", hosts=[node_ip(index)],
                              roles=roles)  # fmt: skip
        issue_certificate(ca, "operator", root / "pki", hosts=[], roles=[Role.SWCI])
        pki = root / "pki"
        started = time.perf_counter()
        sentinel = stack.enter_context(
            daemon(bed.nodes[0], pki, "sn0", node_ip(0), root / "n0", "--sentinel")
        )
        wait_banner(sentinel, root / "n0")
        processes = [sentinel]
        join = ("--bootstrap", f"{node_ip(0)}:{PORT}")
        for index in range(1, nodes):
            data = root / f"n{index}"
            processes.append(stack.enter_context(
                daemon(bed.nodes[index], pki, f"sn{index}", node_ip(index), data, *join)
            ))  # fmt: skip
        for index, process in enumerate(processes[1:], 1):
            wait_banner(process, root / f"n{index}")
        operator = load_identity(
            IdentityPaths(pki / "operator.pem", pki / "operator-key.pem", pki / "ca.pem")
        )
        ips = [node_ip(i) for i in range(nodes)]
        trio.run(wait_validators, operator, ips, 600.0)
        figures["swarm_ready_s"] = round(time.perf_counter() - started, 1)
        latencies = trio.run(ledger_latency, operator, ips, args.txs)
        figures["ledger_commit_p50_s"] = round(statistics.median(latencies), 4)
        figures["ledger_commit_p99_s"] = round(round_bench_percentile(latencies, 0.99), 4)
        figures["ledger_submits_overloaded"] = OVERLOADED_RETRIES[0]
        print(f"so far: {figures}", file=sys.stderr, flush=True)
        layout = layout_of(ModelState({"w": np.zeros(size // 4, np.float32)}))
        bound_s = 2 * (participants - 1) / participants * size * 8 / RATE_BPS
        figures["round_bound_s"] = round(bound_s, 3)
        try:
            round_s, steps = round_bench._one_round(root, participants, layout, 1)
        except RuntimeError as error:  # the round gave up (a node's deadline): say so
            figures["round_error"] = str(error)
        else:
            figures["round_s"] = round(round_s, 3)
            figures["round_vs_bound"] = round(round_s / bound_s, 2)
            figures["round_attempts"] = int(steps.pop("attempts"))
            figures["round_phases_s"] = {phase: round(s, 3) for phase, s in steps.items()}
            # The exchange alone (weights moving and merging, no ledger step): the part of the
            # round the bandwidth bounds; the rest is check-ins and merged roots committed.
            figures["exchange_vs_bound"] = round(steps["exchanged"] / bound_s, 2)
        counts = [node_peers(p.pid, node_ip(i)) for i, p in enumerate(processes)]
        figures["connections_per_node_max"] = max(counts)
        figures["connections_per_node_mean"] = round(statistics.mean(counts), 1)
        print(f"so far: {figures}", file=sys.stderr, flush=True)
    funnel_s = run_funnel(bed, participants, size)
    figures["funnel_s"] = round(funnel_s, 3)
    figures["funnel_bound_s"] = round(2 * (participants - 1) * size * 8 / RATE_BPS, 3)
    if "round_s" in figures:
        figures["funnel_vs_round"] = round(funnel_s / figures["round_s"], 2)
    return figures


def round_bench_percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 daemons, 4 MB among all 8")
    parser.add_argument("--nodes", type=int, default=0, help="daemons (default 32; quick 8)")
    parser.add_argument("--round-nodes", type=int, default=0, help="round size (default 16)")
    parser.add_argument("--size-mb", type=int, default=0, help="model MB (default 10; quick 4)")
    parser.add_argument(
        "--txs", type=int, default=0, help="latency transactions (default 40; quick 10)"
    )
    parser.add_argument("--cleanup", action="store_true", help="remove what a killed run left")
    parser.add_argument(
        "--lane-port", help="the daemons' --lane-port (default: 30305; none: on 30303 too)"
    )
    parser.add_argument("--funnel-merger", nargs=3, metavar=("IP", "SENDERS", "BYTES"))
    parser.add_argument("--funnel-sender", nargs=2, metavar=("IP", "BYTES"))
    args = parser.parse_args()
    if args.lane_port is not None:
        DAEMON_FLAGS[:] = ["--lane-port", args.lane_port]
    if args.funnel_merger:
        ip, senders, size = args.funnel_merger
        return funnel_merger(ip, int(senders), int(size))
    if args.funnel_sender:
        return funnel_sender(args.funnel_sender[0], int(args.funnel_sender[1]))
    if args.cleanup:
        print(f"removed: {cleanup_leftovers()}")
        return None
    args.nodes = args.nodes or (8 if args.quick else 32)
    args.round_nodes = min(args.nodes, args.round_nodes or (8 if args.quick else 16))
    args.size_mb = args.size_mb or (4 if args.quick else 10)
    args.txs = args.txs or (10 if args.quick else 40)
    if not 2 <= args.nodes <= 240 or args.round_nodes < 2:
        parser.error("--nodes must be in 2..240 and --round-nodes >= 2")
    if os.geteuid() != 0:
        parser.error("needs root (network namespaces, tc)")
    signal.signal(signal.SIGTERM, _on_signal)
    started = time.perf_counter()
    with Testbed(args.nodes) as bed:
        bed.enter_client()
        figures = measure(bed, args)
    figures["wall_s"] = round(time.perf_counter() - started, 1)
    targets = {
        "connections_per_node_max": "<= links_max + round participants = "
        f"{LINKS_MAX + args.round_nodes}"
        f" (and not N-1 = {args.nodes - 1})",
        "ledger_commit_p50_s": "<= 0.5",
        "round_vs_bound": "<= 1.3",
    }
    met = (
        figures["connections_per_node_max"] < args.nodes - 1
        and figures["connections_per_node_max"] <= LINKS_MAX + args.round_nodes
        and figures["ledger_commit_p50_s"] <= 0.5
        and figures.get("round_vs_bound", float("inf")) <= 1.3
    )
    print(json.dumps({"figures": figures, "targets": targets, "met": met}))
    return None


if __name__ == "__main__":
    main()

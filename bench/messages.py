"""CPU per small message on a node's link: what a vote costs between two nodes.

A ledger's messages are small (a vote's gossip message is about 170 bytes) and many: at 32
validators a node receives about 250 copies per height and sends as many. This bench moves
N vote-sized gossip messages from one :class:`~swarmlearn.p2p.service_link.Link` to another
(mutual TLS on a socket pair, the mux, both framings, the codec), both ends in this one
process, and reports the process's CPU per message (send and receive together):

- ``link_alone_us``: each message queued on its own, the writer woken after each (as a node
  forwards a vote that arrived alone);
- ``link_burst_us``: ``BURST`` messages queued at once (a burst of votes handled before the
  writer runs: one write, one TLS record);
- the ceiling, ``tls_alone_us`` and ``tls_burst_us``: trio's ``SSLStream`` moving the same
  frames' bytes with the same writes, read back on the other side (no framing, mux or codec).

    python bench/messages.py [--quick] [--messages N]

Targets: the link costs at most ``RATIO_ALONE_MAX`` times the ceiling per message sent alone
and ``RATIO_BURST_MAX`` times in bursts. Session 9, 2-core machine, 20,000 messages: link 66 us
alone and 20 us in bursts of 8; the ceiling 49 us and 6.6 us (1.35x and 3.06x). A small
message's cost is its write: trio's TLS stream and the system call, not the mux or the codec.
The last line printed is the JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path

import trio

from swarmlearn.p2p.certs import create_ca, issue_certificate
from swarmlearn.p2p.framing import encode_frame
from swarmlearn.p2p.gossip_messages import GossipMessage
from swarmlearn.p2p.identity import Identity, IdentityPaths, Role, load_identity
from swarmlearn.p2p.mux import MuxConfig
from swarmlearn.p2p.service_link import Link
from swarmlearn.p2p.tls import client_context, server_context
from swarmlearn.p2p.transport import Connection, accept_stream, connect_stream
from swarmlearn.p2p.wire import Message

BURST = 8
PAYLOAD_BYTES = 150  # a signed vote's CBOR, about
RATIO_ALONE_MAX = 2.0  # TLS writes of one small message dominate: the layers add little
RATIO_BURST_MAX = 4.5  # in bursts the mux, framings and codec show (3.1-3.4x)
TOPIC = "ledger/votes"


def identities(root: Path) -> tuple[Identity, Identity]:
    ca = create_ca(root)
    for name in ("a", "b"):
        issue_certificate(ca, name, root, hosts=["127.0.0.1"], roles=[Role.SN, Role.SL])
    return tuple(  # type: ignore[return-value]
        load_identity(IdentityPaths(root / f"{n}.pem", root / f"{n}-key.pem", root / "ca.pem"))
        for n in ("a", "b")
    )


def socket_streams() -> tuple[trio.SocketStream, trio.SocketStream]:
    left, right = socket.socketpair()
    return (
        trio.SocketStream(trio.socket.from_stdlib_socket(left)),
        trio.SocketStream(trio.socket.from_stdlib_socket(right)),
    )


def votes(count: int) -> list[GossipMessage]:
    payload = os.urandom(PAYLOAD_BYTES)
    return [GossipMessage(TOPIC, payload + i.to_bytes(4, "big"), True) for i in range(count)]


async def connected(a: Identity, b: Identity) -> tuple[Connection, Connection]:
    left, right = socket_streams()
    accepted: list[Connection] = []

    async def accept() -> None:
        accepted.append(await accept_stream(b, right))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept)
        dialed = await connect_stream(a, left)
    return dialed, accepted[0]


def link(connection: Connection, outbound: bool) -> Link:
    return Link(
        1,
        "peer",
        connection,
        outbound=outbound,
        mux_config=MuxConfig(),
        queue_bytes_max=1 << 24,
        write_budget_bytes=1 << 18,
        frame_bytes_max=1 << 24,
    )


async def link_us(a: Identity, b: Identity, count: int, burst: int) -> float:
    """CPU microseconds per message over two Links."""
    sender_conn, receiver_conn = await connected(a, b)
    sender, receiver = link(sender_conn, True), link(receiver_conn, False)
    messages = votes(count)
    received = 0
    done = trio.Event()

    def deliver(message: Message) -> None:
        nonlocal received
        received += 1
        if received == count:
            done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender.run, lambda message: None)
        nursery.start_soon(receiver.run, deliver)
        started = time.process_time()
        for index in range(0, count, burst):
            for message in messages[index : index + burst]:
                if not sender.queue(message, 0):
                    raise RuntimeError("the link's queue refused a message")
            await trio.lowlevel.checkpoint()
        with trio.fail_after(120):
            await done.wait()
        spent = time.process_time() - started
        nursery.cancel_scope.cancel()
    return spent / count * 1e6


async def tls_us(a: Identity, b: Identity, count: int, burst: int) -> float:
    """The ceiling: the same bytes per write over trio's SSLStream, read back."""
    size = sum(len(part) for part in encode_frame(votes(1)[0], 1 << 24))  # one message's frame
    left, right = socket_streams()
    client = trio.SSLStream(left, client_context(a), server_hostname="127.0.0.1")
    server = trio.SSLStream(right, server_context(b), server_side=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.do_handshake)
        await client.do_handshake()
    writes = [os.urandom(size * burst) for _ in range(max(1, count // burst))]
    total = sum(len(w) for w in writes)

    async def read() -> None:
        got = 0
        while got < total:
            got += len(await server.receive_some(1 << 16))

    started = time.process_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        for data in writes:
            await client.send_all(data)
            await trio.lowlevel.checkpoint()
    spent = time.process_time() - started
    return spent / (len(writes) * burst) * 1e6


async def measure(count: int, repeat: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        a, b = identities(Path(tmp))
        runs: dict[str, list[float]] = {}
        for _ in range(repeat):
            for name, burst in (("alone", 1), ("burst", BURST)):
                runs.setdefault(f"link_{name}_us", []).append(await link_us(a, b, count, burst))
                runs.setdefault(f"tls_{name}_us", []).append(await tls_us(a, b, count, burst))
    figures = {name: round(statistics.median(values), 1) for name, values in runs.items()}
    for name in ("alone", "burst"):
        ratio = figures[f"link_{name}_us"] / max(figures[f"tls_{name}_us"], 1e-9)
        figures[f"link_over_tls_{name}"] = round(ratio, 2)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer messages, under 30 s")
    parser.add_argument("--messages", type=int, help="messages per measurement")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (the median)")
    args = parser.parse_args()
    count = args.messages or (4000 if args.quick else 20000)
    figures = trio.run(measure, count, args.repeat)
    targets = {"link_over_tls_alone": RATIO_ALONE_MAX, "link_over_tls_burst": RATIO_BURST_MAX}
    met = all(figures[name] <= limit for name, limit in targets.items())
    for name, value in figures.items():
        print(f"{name:24s} {value}", flush=True)
    print(json.dumps({"figures": figures, "targets": targets, "met": met}))


if __name__ == "__main__":
    main()

"""Transport throughput on loopback: the socket ceiling, trio's SSLStream, and our framed transport.

Each measurement runs the receiver in its own process (as two nodes would), so sender and
receiver each get a core. Three ways to move the same bytes over TLS 1.3 with the same
certificates and cipher:

- ``socket``: blocking ``ssl.SSLSocket`` pair, 1 MiB writes (the machine's ceiling);
- ``trio_ssl``: trio's ``SSLStream``, 1 MiB ``send_all`` calls (and ``trio_ssl_4mib``: 4 MiB
  calls, the write size of our frames, to show what the frame size alone is worth);
- ``framed``: our :class:`~swarmlearn.p2p.transport.Connection`, 4 MiB ``Chunk`` frames.

Plus mutual-TLS connections per second: dial, handshake, one ping-pong, close.

    python bench/transport.py [--quick] [--repeat N]

The last line printed is the JSON summary; ``met`` is ``framed / trio_ssl >= 0.9``.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

from swarmlearn.p2p.certs import create_ca, issue_certificate
from swarmlearn.p2p.identity import Identity, IdentityPaths, Role, load_identity
from swarmlearn.p2p.messages import Chunk, Ping, Pong
from swarmlearn.p2p.tls import client_context, server_context
from swarmlearn.p2p.transport import (
    Connection,
    Listener,
    TransportConfig,
    accept_stream,
    connect_stream,
    dial,
)

MiB = 1024 * 1024
WRITE_BYTES = 1 * MiB
CHUNK_BYTES = 4 * MiB
TARGET_FRAMED_VS_TRIO = 0.9
MODES = ("socket", "trio_ssl", "trio_ssl_4mib", "framed")
CONFIG = TransportConfig(frame_bytes_max=CHUNK_BYTES + 4096, handshake_timeout_s=30)


def make_pki(root: Path) -> tuple[IdentityPaths, IdentityPaths]:
    ca = create_ca(root)
    pair = []
    for name in ("receiver", "sender"):
        issued = issue_certificate(ca, name, root, hosts=["127.0.0.1"], roles=[Role.SL])
        pair.append(IdentityPaths(issued.cert_path, issued.key_path, root / "ca.pem"))
    return pair[0], pair[1]


# ---------------------------------------------------------------- receiver (a child process)


def receive_socket(identity: Identity, listener: socket.socket, total: int) -> None:
    raw, _ = listener.accept()
    with server_context(identity).wrap_socket(raw, server_side=True) as tls:
        buffer = bytearray(WRITE_BYTES)
        got = 0
        while got < total:
            count = tls.recv_into(buffer)
            if not count:
                raise RuntimeError("sender closed early")
            got += count
        tls.sendall(b"k")


async def receive_trio(identity: Identity, listener: socket.socket, total: int, mode: str) -> None:
    trio_listener = trio.SocketListener(trio.socket.from_stdlib_socket(listener))
    tcp = await trio_listener.accept()
    if mode.startswith("trio_ssl"):
        stream = trio.SSLStream(tcp, server_context(identity), server_side=True)
        got = 0
        while got < total:
            data = await stream.receive_some(WRITE_BYTES)
            if not data:
                raise RuntimeError("sender closed early")
            got += len(data)
        await stream.send_all(b"k")
        await stream.aclose()
        return
    async with await accept_stream(identity, tcp, config=CONFIG) as connection:
        got = 0
        while got < total:
            msg = await connection.receive()
            if isinstance(msg, Chunk):
                got += len(msg.data)
            elif isinstance(msg, Ping):
                await connection.send(Pong(msg.nonce))
        await connection.send(Pong(0))


async def serve_handshakes(identity: Identity, listener: socket.socket) -> None:
    server = Listener(identity, CONFIG)

    async def pong(connection: Connection) -> None:
        async for msg in connection:
            if isinstance(msg, Ping):
                await connection.send(Pong(msg.nonce))

    async def serve(tcp: trio.SocketStream) -> None:
        await server.serve_stream(tcp, pong)

    trio_listener = trio.SocketListener(trio.socket.from_stdlib_socket(listener))
    await trio.serve_listeners(serve, [trio_listener])


def run_receiver(args: argparse.Namespace) -> None:
    identity = load_identity(IdentityPaths(Path(args.cert), Path(args.key), Path(args.ca)))
    listener = socket.create_server(("127.0.0.1", 0))
    print(listener.getsockname()[1], flush=True)
    if args.receiver == "socket":
        receive_socket(identity, listener, args.bytes)
    elif args.receiver == "handshakes":
        trio.run(serve_handshakes, identity, listener)
    else:
        trio.run(receive_trio, identity, listener, args.bytes, args.receiver)


# ---------------------------------------------------------------- sender (this process)


def send_socket(identity: Identity, port: int, total: int) -> None:
    payload = bytes(WRITE_BYTES)
    raw = socket.create_connection(("127.0.0.1", port))
    with client_context(identity).wrap_socket(raw) as tls:
        for _ in range(total // WRITE_BYTES):
            tls.sendall(payload)
        if tls.recv(1) != b"k":
            raise RuntimeError("no acknowledgement")


async def send_trio(identity: Identity, port: int, total: int, mode: str) -> None:
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    if mode.startswith("trio_ssl"):
        stream = trio.SSLStream(tcp, client_context(identity), server_side=False)
        payload = bytes(CHUNK_BYTES if mode == "trio_ssl_4mib" else WRITE_BYTES)
        for _ in range(total // len(payload)):
            await stream.send_all(payload)
        if await stream.receive_some(1) != b"k":
            raise RuntimeError("no acknowledgement")
        await stream.aclose()
        return
    chunk = memoryview(bytes(CHUNK_BYTES))
    async with await connect_stream(identity, tcp, config=CONFIG) as connection:
        for index in range(total // CHUNK_BYTES):
            await connection.send(Chunk(b"m" * 32, index, chunk))
        if await connection.receive() != Pong(0):
            raise RuntimeError("no acknowledgement")


def spawn_receiver(
    mode: str, paths: IdentityPaths, total: int
) -> tuple[subprocess.Popen[str], int]:
    child = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--receiver",
            mode,
            "--bytes",
            str(total),
            "--cert",
            str(paths.cert),
            "--key",
            str(paths.key),
            "--ca",
            str(paths.ca),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    return child, int(child.stdout.readline())


def measure_throughput(mode: str, receiver: IdentityPaths, sender: Identity, total: int) -> float:
    """Bytes per second from the first write to the receiver's acknowledgement of the last."""
    child, port = spawn_receiver(mode, receiver, total)
    with child:
        start = time.perf_counter()
        if mode == "socket":
            send_socket(sender, port, total)
        else:
            trio.run(send_trio, sender, port, total, mode)
        elapsed = time.perf_counter() - start
        if child.wait(timeout=120) != 0:
            raise RuntimeError(f"{mode} receiver failed")
    return total / elapsed


async def dial_many(sender: Identity, port: int, count: int) -> None:
    for nonce in range(count):
        async with await dial(sender, "127.0.0.1", port, config=CONFIG) as connection:
            await connection.send(Ping(nonce))
            if await connection.receive() != Pong(nonce):
                raise RuntimeError("wrong pong")


def measure_handshakes(receiver: IdentityPaths, sender: Identity, count: int) -> float:
    child, port = spawn_receiver("handshakes", receiver, 0)
    with child:
        try:
            start = time.perf_counter()
            trio.run(dial_many, sender, port, count)
            return count / (time.perf_counter() - start)
        finally:
            child.terminate()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="256 MiB per run, 2 repeats")
    parser.add_argument("--repeat", type=int, help="runs per mode (median reported)")
    parser.add_argument("--receiver", choices=[*MODES, "handshakes"], help=argparse.SUPPRESS)
    parser.add_argument("--bytes", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cert", help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    parser.add_argument("--ca", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.receiver:
        run_receiver(args)
        return

    total = (256 if args.quick else 1024) * MiB
    repeat = args.repeat or (2 if args.quick else 5)
    handshakes = 200 if args.quick else 1000
    with tempfile.TemporaryDirectory() as tmp:
        receiver, sender_paths = make_pki(Path(tmp))
        sender = load_identity(sender_paths)
        runs: dict[str, list[float]] = {mode: [] for mode in MODES}
        for round_ in range(repeat):
            for mode in MODES:  # interleaved, so machine noise hits every mode alike
                rate = measure_throughput(mode, receiver, sender, total)
                runs[mode].append(rate)
                print(f"run {round_ + 1}/{repeat} {mode:9s} {rate / 1e9:.3f} GB/s", flush=True)
        handshake_rate = statistics.median(
            measure_handshakes(receiver, sender, handshakes) for _ in range(3)
        )
    gbps = {mode: statistics.median(rates) / 1e9 for mode, rates in runs.items()}
    figures = {
        "bytes_per_run": total,
        "runs_per_mode": repeat,
        "socket_GBps": round(gbps["socket"], 3),
        "trio_sslstream_GBps": round(gbps["trio_ssl"], 3),
        "trio_sslstream_4MiB_writes_GBps": round(gbps["trio_ssl_4mib"], 3),
        "framed_GBps": round(gbps["framed"], 3),
        "framed_vs_trio_sslstream": round(gbps["framed"] / gbps["trio_ssl"], 3),
        "framed_vs_trio_sslstream_4MiB_writes": round(gbps["framed"] / gbps["trio_ssl_4mib"], 3),
        "framed_vs_socket": round(gbps["framed"] / gbps["socket"], 3),
        "mtls_connections_per_s": round(handshake_rate, 1),
    }
    targets = {"framed_vs_trio_sslstream": f">= {TARGET_FRAMED_VS_TRIO}"}
    met = figures["framed_vs_trio_sslstream"] >= TARGET_FRAMED_VS_TRIO
    print(json.dumps({"figures": figures, "targets": targets, "met": met}))


if __name__ == "__main__":
    main()

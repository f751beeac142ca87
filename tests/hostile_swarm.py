"""A small real swarm, and the attacks of issue 19 on one of its nodes (for tests/test_hostile.py
and bench/hostile.py).

Every attacker is a thread with blocking sockets on 127.0.0.1, bounded in count and in time
(it stops at ``stop`` or its own limit, whichever is first), and says what the node did to it
(closed it, answered, sent what). The swarm's nodes are real ``swarm-node`` daemons; sync
rounds run through each node's local endpoint, as a trainer's would.
"""

from __future__ import annotations

import contextlib
import http.client
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import trio

from swarmlearn.consensus.ledger.app import DEFAULT_CONTRACT
from swarmlearn.merge import ModelState, flatten, layout_of
from swarmlearn.merge.manifest import Layout
from swarmlearn.p2p.bulk_push import LANE_ROUND, LanePort
from swarmlearn.p2p.certs import create_ca, issue_certificate
from swarmlearn.p2p.framing import FRAME_LEN, FrameReader, encode_frame
from swarmlearn.p2p.identity import Identity, IdentityPaths, Role, load_identity
from swarmlearn.p2p.messages import Chunk, Ping
from swarmlearn.p2p.mux import MuxData
from swarmlearn.p2p.service_blobs import LANE_MESSAGES
from swarmlearn.p2p.tls import client_context
from swarmlearn.p2p.wire import Message, decode_body
from swarmlearn.roles.api.messages import StatusRequest
from swarmlearn.roles.local.endpoint import LocalClient
from tests.test_real_swarm import wait_for

MIB = 1024 * 1024
HOST = "127.0.0.1"
START_S = 60.0


@dataclass
class Node:
    process: subprocess.Popen[str]
    port: int
    api_port: int
    data: Path


HOGS = 10  # certificates the memory attack spreads its connections over


def make_pki(root: Path, nodes: int) -> Path:
    """sn0.. (sn, sl); ``mallory``, ``crowd``, ``hog0``.. (an ordinary member's roles: sn,
    sl); and ``operator`` (swci)."""
    ca = create_ca(root / "pki")
    attackers = ["mallory", "crowd", *(f"hog{index}" for index in range(HOGS))]
    for name in [f"sn{index}" for index in range(nodes)] + attackers:
        issue_certificate(ca, name, root / "pki", hosts=[HOST], roles=[Role.SN, Role.SL])
    issue_certificate(ca, "operator", root / "pki", hosts=[], roles=[Role.SWCI])
    return root / "pki"


def identity(pki: Path, name: str) -> Identity:
    return load_identity(
        IdentityPaths(pki / f"{name}.pem", pki / f"{name}-key.pem", pki / "ca.pem")
    )


@contextmanager
def daemon(pki: Path, name: str, data: Path, *flags: str) -> Iterator[Node]:
    ident = ["--cert", str(pki / f"{name}.pem"), "--key", str(pki / f"{name}-key.pem")]
    command = [sys.executable, "-m", "swarmlearn.roles.node.daemon", "--data", str(data), *ident]
    command += ["--cacert", str(pki / "ca.pem"), *flags, "--api", f"{HOST}:0"]
    data.mkdir(parents=True, exist_ok=True)
    with (
        (data / "stderr.log").open("a") as errors,
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, text=True) as process,
    ):
        try:
            assert process.stdout is not None
            banner = process.stdout.readline()  # blocks until the node listens (or dies)
            assert "listening on /ip4/" in banner, (data / "stderr.log").read_text()
            port = int(banner.split("/tcp/")[1].split("/")[0])
            api_port = int(banner.rsplit(":", 1)[1])
            yield Node(process, port, api_port, data)
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


@dataclass
class Swarm:
    pki: Path
    nodes: list[Node]
    layout: Layout

    @property
    def victim(self) -> Node:
        return self.nodes[0]

    def rounds(self, first: int, count: int) -> list[float]:
        """Sync rounds ``first``.. on every node at once; the seconds each took."""
        times = []
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            for number in range(first, first + count):
                started = time.monotonic()
                indexes = range(len(self.nodes))
                outcomes = list(pool.map(self._one, indexes, [number] * len(indexes)))
                times.append(time.monotonic() - started)
                assert all(outcomes), f"round {number} did not merge on every node"
        return times

    def _one(self, index: int, number: int) -> bool:
        model = ModelState({"w": np.full(self.layout.tensors[0].shape, number + index, np.float32)})
        flat = bytes(flatten(model, self.layout))
        with LocalClient(self.nodes[index].data / "sl.sock", timeout_s=120) as client:
            outcome = client.sync_round(
                DEFAULT_CONTRACT, self.layout, flat, weight=1, min_peers=len(self.nodes)
            )
        return outcome.merged is not None


@contextmanager
def swarm(root: Path, nodes: int = 2, model_floats: int = 1_000_000) -> Iterator[Swarm]:
    pki = make_pki(root, nodes)
    with ExitStack() as stack:
        first = stack.enter_context(
            daemon(pki, "sn0", root / "n0", "--sentinel", "--listen", f"{HOST}:0")
        )
        running = [first]
        for index in range(1, nodes):
            join = ("--bootstrap", f"{HOST}:{first.port}", "--listen", f"{HOST}:0")
            running.append(
                stack.enter_context(daemon(pki, f"sn{index}", root / f"n{index}", *join))
            )
        trio.run(
            wait_for,
            identity(pki, "sn0"),
            [n.port for n in running],
            f"{nodes} validators",
            lambda s: all(len(x.validators) == nodes for x in s),
        )
        layout = layout_of(ModelState({"w": np.zeros(model_floats, np.float32)}), chunk_bytes=MIB)
        yield Swarm(pki, running, layout)


# ---------------------------------------------------------------- watching the victim


def proc_status(pid: int, field_name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field_name}:"):
            return int(line.split()[1])
    return 0


def rss_bytes(pid: int) -> int:
    return proc_status(pid, "VmRSS") * 1024


@dataclass
class Sampler:
    """Samples a process's RSS and thread count every ``every_s`` until stopped."""

    pid: int
    every_s: float = 0.05
    peak_rss_bytes: int = 0
    peak_threads: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Sampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError):
                self.peak_rss_bytes = max(self.peak_rss_bytes, rss_bytes(self.pid))
                self.peak_threads = max(self.peak_threads, proc_status(self.pid, "Threads"))
            self._stop.wait(self.every_s)


# ---------------------------------------------------------------- attacks


@dataclass
class Seen:
    """What the node did to one attack."""

    name: str
    attempts: int = 0
    closed: int = 0  # connections the node closed (or refused)
    notes: list[str] = field(default_factory=list)
    ready: threading.Event = field(default_factory=threading.Event)  # its connections are up


def tls(ident: Identity, port: int, timeout_s: float = 10.0, first: bytes = b"") -> ssl.SSLSocket:
    """A TLS connection to ``port``, after ``first`` (a lane's first byte: ``LANE_ROUND``)."""
    raw = socket.create_connection((HOST, port), timeout=timeout_s)
    try:
        raw.sendall(first)
        return client_context(ident).wrap_socket(raw)
    except BaseException:
        raw.close()
        raise


def read_frame(sock: ssl.SSLSocket) -> Message:
    prefix = _read_exact(sock, FRAME_LEN.size)
    (size,) = FRAME_LEN.unpack(prefix)
    return decode_body(_read_exact(sock, size))


def _read_exact(sock: ssl.SSLSocket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        piece = sock.recv(size - len(data))
        if not piece:
            raise ConnectionError("closed")
        data += piece
    return bytes(data)


def lane_port(pki: Path, node: Node) -> int:
    """The node's lane port, as it announces it on a member's link (the link byte, TLS, then
    mux frames whose data carries the messages)."""
    raw = socket.create_connection((HOST, node.port), timeout=10.0)
    raw.sendall(LANE_MESSAGES)
    with client_context(identity(pki, "mallory")).wrap_socket(raw) as sock:
        readers: dict[int, FrameReader] = {}
        for _ in range(50):
            frame = read_frame(sock)
            if not isinstance(frame, MuxData):
                continue
            reader = readers.setdefault(frame.stream, FrameReader(typed=True))
            reader.feed(memoryview(frame.data))
            while (body := reader.next_frame()) is not None:
                message = decode_body(body)
                if isinstance(message, LanePort):
                    return message.port
    raise AssertionError("the node announced no lane port")


def closed_by_peer(sock: socket.socket, stop: threading.Event, limit_s: float) -> bool:
    """Wait (up to ``limit_s``, or ``stop``) for the other side to close ``sock``."""
    deadline = time.monotonic() + limit_s
    sock.settimeout(min(0.2, max(limit_s, 0.01)))
    while not stop.is_set() and time.monotonic() < deadline:
        try:
            if not sock.recv(65536):
                return True
        except (TimeoutError, ssl.SSLWantReadError):
            continue
        except (OSError, ssl.SSLError):
            return True
    return False


def chunk_prefix(body_len: int) -> bytes:
    """The prefix and header of a Chunk frame announcing ``body_len`` bytes."""
    head = bytes(encode_frame(Chunk(b"r" * 32, 0, b""))[0])[4:]
    return struct.pack(">I", body_len) + head


def silent_frame(
    pki: Path,
    port: int,
    announce: int,
    seen: Seen,
    stop: threading.Event,
    limit_s: float,
    first: bytes = b"",
) -> None:
    """A member announces a frame of ``announce`` bytes on ``port`` and goes silent."""
    seen.attempts += 1
    member = identity(pki, "mallory")
    with contextlib.suppress(OSError, ssl.SSLError), tls(member, port, first=first) as sock:
        sock.sendall(chunk_prefix(announce))
        seen.ready.set()
        seen.closed += closed_by_peer(sock, stop, limit_s)


def memory_hog(
    pki: Path,
    port: int,
    connections: int,
    sent: int,
    seen: Seen,
    stop: threading.Event,
    limit_s: float,
) -> None:
    """``connections`` members (``HOGS`` certificates) each announce 64 MiB on ``port``, send
    ``sent`` bytes of it and hold the rest back."""
    socks: list[ssl.SSLSocket] = []
    payload = b"\x00" * MIB
    try:
        for index in range(connections):
            seen.attempts += 1
            try:
                sock = tls(identity(pki, f"hog{index % HOGS}"), port)
                socks.append(sock)
                sock.sendall(chunk_prefix(64 * MIB - 1))
                for _ in range(sent // MIB):
                    sock.sendall(payload)
            except (OSError, ssl.SSLError):
                seen.closed += 1
        seen.ready.set()
        deadline = time.monotonic() + limit_s
        for sock in socks:
            seen.closed += closed_by_peer(sock, stop, max(0.0, deadline - time.monotonic()))
    finally:
        for sock in socks:
            sock.close()


def crowd(
    pki: Path, port: int, count: int, seen: Seen, stop: threading.Event, limit_s: float
) -> None:
    """One member opens ``count`` connections and holds them; counts those the node closes."""
    socks = []
    try:
        for _ in range(count):
            seen.attempts += 1
            with contextlib.suppress(OSError, ssl.SSLError):
                socks.append(tls(identity(pki, "crowd"), port))
        seen.ready.set()
        deadline = time.monotonic() + limit_s
        while socks and not stop.is_set() and time.monotonic() < deadline:
            for sock in list(socks):
                if closed_by_peer(sock, stop, 0.01):
                    seen.closed += 1
                    socks.remove(sock)
                    sock.close()
            stop.wait(0.1)
    finally:
        for sock in socks:
            sock.close()


def slow_handshakes(
    port: int, count: int, seen: Seen, stop: threading.Event, limit_s: float, first: bytes = b""
) -> None:
    """``count`` TCP connections that trickle a TLS record header a byte a second."""
    record = b"\x16\x03\x01\x40\x00"  # a handshake record of 16 KiB, never sent whole
    socks = []
    try:
        for _ in range(count):
            seen.attempts += 1
            with contextlib.suppress(OSError):
                sock = socket.create_connection((HOST, port), timeout=5)
                socks.append(sock)
                sock.sendall(first)
        deadline = time.monotonic() + limit_s
        sent = 0
        while socks and not stop.is_set() and time.monotonic() < deadline:
            byte = record[sent : sent + 1] or b"\x01"
            for sock in list(socks):
                try:
                    sock.sendall(byte)
                    sock.settimeout(0.001)
                    if sock.recv(1) == b"":
                        raise ConnectionResetError
                except TimeoutError:
                    continue
                except OSError:
                    seen.closed += 1
                    socks.remove(sock)
                    sock.close()
            sent += 1
            stop.wait(1.0)
    finally:
        for sock in socks:
            sock.close()


def malformed(
    pki: Path, port: int, seen: Seen, stop: threading.Event, limit_s: float, first: bytes = b""
) -> None:
    """A member sends a whole frame whose body is not a message (bad CBOR)."""
    seen.attempts += 1
    member = identity(pki, "mallory")
    with contextlib.suppress(OSError, ssl.SSLError), tls(member, port, first=first) as sock:
        body = struct.pack(">I", 6) + b"\x82\x01\xff\xff\xff\xff"
        sock.sendall(struct.pack(">I", len(body)) + body)
        seen.ready.set()
        seen.closed += closed_by_peer(sock, stop, limit_s)


def wrong_type(pki: Path, port: int, seen: Seen, stop: threading.Event, limit_s: float) -> None:
    """A Ping (no payload) announced at 64 MiB: refused from its header."""
    seen.attempts += 1
    with contextlib.suppress(OSError, ssl.SSLError), tls(identity(pki, "mallory"), port) as sock:
        head = bytes(encode_frame(Ping(1))[0])[4:]
        sock.sendall(struct.pack(">I", 64 * MIB - 1) + head)
        seen.ready.set()
        seen.closed += closed_by_peer(sock, stop, limit_s)


def operator_listens(
    pki: Path, port: int, seen: Seen, stop: threading.Event, limit_s: float
) -> None:
    """An operator (swci) certificate on the ledger port asks its status, then listens:
    every message type it receives goes into ``seen.notes``."""
    seen.attempts += 1
    with contextlib.suppress(OSError, ssl.SSLError), tls(identity(pki, "operator"), port) as sock:
        for buffer in encode_frame(StatusRequest()):
            sock.sendall(buffer)
        seen.ready.set()
        sock.settimeout(0.5)
        deadline = time.monotonic() + limit_s
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                seen.notes.append(type(read_frame(sock)).__name__)
            except TimeoutError:
                continue
            except (ConnectionError, ssl.SSLError):
                break


def big_post(pki: Path, api_port: int, seen: Seen, chunked: bool, limit_mib: int = 64) -> None:
    """A 1 GiB POST to /v1/transactions (announced in Content-Length, or chunked), sent until
    the node answers or ``limit_mib`` went."""
    seen.attempts += 1
    connection = http.client.HTTPSConnection(
        HOST, api_port, context=client_context(identity(pki, "operator")), timeout=30
    )
    try:
        connection.putrequest("POST", "/v1/transactions")
        if chunked:
            connection.putheader("Transfer-Encoding", "chunked")
        else:
            connection.putheader("Content-Length", str(1024 * MIB))
        connection.endheaders()
        piece = b"\x00" * MIB
        with contextlib.suppress(OSError):
            for _ in range(limit_mib):
                connection.send(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
        response = connection.getresponse()
        seen.notes.append(str(response.status))
        seen.closed += response.status == 413
    except (OSError, http.client.HTTPException) as error:
        seen.notes.append(type(error).__name__)
    finally:
        connection.close()


def metrics(pki: Path, api_port: int) -> dict[tuple[str, str], float]:
    """``swarm_refused{port,reason}`` from the node's /metrics."""
    connection = http.client.HTTPSConnection(
        HOST, api_port, context=client_context(identity(pki, "operator")), timeout=30
    )
    try:
        connection.request("GET", "/metrics")
        text = connection.getresponse().read().decode()
    finally:
        connection.close()
    found = {}
    for line in text.splitlines():
        if line.startswith("swarm_refused_total{"):
            labels, value = line[len("swarm_refused_total{") :].split("} ")
            pairs = dict(part.split("=") for part in labels.split(","))
            found[(pairs["port"].strip('"'), pairs["reason"].strip('"'))] = float(value)
    return found


Attack = Callable[[threading.Event], None]


@contextmanager
def attacks(swarm: Swarm, limit_s: float) -> Iterator[dict[str, Seen]]:
    """Every attack of issue 19 on the victim at once, each in its own thread(s), until the
    block ends (or ``limit_s``); yields what each saw (filled in as they go)."""
    pki, victim = swarm.pki, swarm.victim
    lanes = lane_port(pki, victim)
    seen: dict[str, Seen] = {}

    def see(name: str) -> Seen:
        return seen.setdefault(name, Seen(name))

    stop = threading.Event()
    port, api = victim.port, victim.api_port
    jobs: dict[str, Callable[[], None]] = {
        "lane_silent_64mib": lambda: silent_frame(
            pki, lanes, 64 * MIB - 1, see("lane_silent_64mib"), stop, limit_s, LANE_ROUND
        ),
        "lane_silent_small": lambda: silent_frame(
            pki, lanes, 64 * 1024, see("lane_silent_small"), stop, limit_s, LANE_ROUND
        ),
        "lane_slow_handshakes": lambda: slow_handshakes(
            lanes, 150, see("lane_slow_handshakes"), stop, limit_s, LANE_ROUND
        ),
        "lane_malformed": lambda: malformed(
            pki, lanes, see("lane_malformed"), stop, limit_s, LANE_ROUND
        ),
        "ledger_memory": lambda: memory_hog(
            pki, port, 30, 8 * MIB, see("ledger_memory"), stop, limit_s
        ),
        "ledger_silent_small": lambda: silent_frame(
            pki, port, 64 * 1024, see("ledger_silent_small"), stop, limit_s
        ),
        "ledger_crowd": lambda: crowd(pki, port, 20, see("ledger_crowd"), stop, limit_s),
        "ledger_wrong_type": lambda: wrong_type(pki, port, see("ledger_wrong_type"), stop, limit_s),
        "ledger_malformed": lambda: malformed(pki, port, see("ledger_malformed"), stop, limit_s),
        "ledger_slow_handshakes": lambda: slow_handshakes(
            port, 20, see("ledger_slow_handshakes"), stop, limit_s
        ),
        "operator_on_ledger": lambda: operator_listens(
            pki, port, see("operator_on_ledger"), stop, limit_s
        ),
        "api_slow_handshakes": lambda: slow_handshakes(
            api, 20, see("api_slow_handshakes"), stop, limit_s
        ),
        "api_big_post": lambda: big_post(pki, api, see("api_big_post"), chunked=False),
        "api_big_post_chunked": lambda: big_post(
            pki, api, see("api_big_post_chunked"), chunked=True
        ),
    }
    for name in jobs:
        see(name)
    # The members' connections first (each its handshake done), then the floods: a flood
    # that holds every lane slot would refuse them, and they would test nothing.
    threads = {name: threading.Thread(target=job, daemon=True) for name, job in jobs.items()}
    for name in MEMBERS:
        threads[name].start()
    for name in MEMBERS:
        seen[name].ready.wait(timeout=limit_s)
    for name, thread in threads.items():
        if name not in MEMBERS:
            thread.start()
    try:
        yield seen
    finally:
        stop.set()
        for thread in threads.values():
            thread.join(timeout=limit_s)


#: The attacks that hold a member's (or the operator's) TLS connection: started first.
MEMBERS = (
    "lane_silent_64mib",
    "lane_silent_small",
    "lane_malformed",
    "ledger_memory",
    "ledger_silent_small",
    "ledger_crowd",
    "ledger_wrong_type",
    "ledger_malformed",
    "operator_on_ledger",
)

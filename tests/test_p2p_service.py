"""The p2p service on real loopback sockets (mutual TLS 1.3): discovery from one sentinel
address, gossip, a 200 MB blob while consensus-sized messages keep flowing, several sources,
the peer-id check, persisted peers, and real processes.

No sleeps: every wait is on an event (a peer up, a message delivered) under a deadline."""

from __future__ import annotations

import hashlib
import itertools
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import trio

from swarmlearn.errors import ConfigError
from swarmlearn.p2p.certs import create_ca, issue_certificate
from swarmlearn.p2p.identity import Identity, IdentityPaths, Role, load_identity
from swarmlearn.p2p.multiaddr import PeerAddress, parse_address
from swarmlearn.p2p.peerstore import load_peers, peers_path
from swarmlearn.p2p.peertable import PeerTableConfig
from swarmlearn.p2p.service import P2PService, ServiceConfig
from swarmlearn.p2p.service_blobs import LANE_MESSAGES, BlobConfig, FetchError
from swarmlearn.p2p.tls import client_context
from swarmlearn.p2p.transport import connect_stream

CONSENSUS = "consensus"
NODES = 5
DISCOVERY_DEADLINE_S = 20.0
BLOB_BYTES = 200 * 1024 * 1024
P99_BOUND_MS = 200.0
IDLE_PINGS = 40
LOAD_FACTOR = 5.0
PING_TAGS = (index.to_bytes(8, "big") for index in itertools.count())


@pytest.fixture(scope="module")
def identities(tmp_path_factory: pytest.TempPathFactory) -> list[IdentityPaths]:
    root = tmp_path_factory.mktemp("p2p-service-pki")
    ca = create_ca(root / "ca")
    paths = []
    for index in range(NODES + 1):
        issued = issue_certificate(
            ca, f"node-{index}", root / "ca", hosts=["127.0.0.1"], roles=[Role.SN, Role.SL]
        )
        paths.append(IdentityPaths(issued.cert_path, issued.key_path, root / "ca" / "ca.pem"))
    return paths


@pytest.fixture(scope="module")
def loaded(identities: list[IdentityPaths]) -> list[Identity]:
    return [load_identity(paths) for paths in identities]


@asynccontextmanager
async def swarm(configs: list[tuple[Identity, ServiceConfig]]) -> AsyncIterator[list[P2PService]]:
    """Start the services in order (the first is the sentinel), stop them all at the end."""
    services = []
    async with trio.open_nursery() as nursery:
        for identity, config in configs:
            service = P2PService(identity, config)
            await nursery.start(service.run)
            services.append(service)
        yield services
        for service in services:
            service.stop()


def sentinel_plus(
    loaded: list[Identity], count: int, **options: object
) -> Callable[[PeerAddress], list[tuple[Identity, ServiceConfig]]]:
    def configs(sentinel: PeerAddress) -> list[tuple[Identity, ServiceConfig]]:
        # Half the nodes are given host:port, half the multiaddr with the sentinel's peer id.
        seeds = [sentinel.host_port, str(sentinel)]
        return [
            (loaded[i], ServiceConfig(seeds=(seeds[i % 2],), rng_seed=i, **options))  # type: ignore[arg-type]
            for i in range(1, count)
        ]

    return configs


async def wait_full_mesh(services: list[P2PService], topic: str | None = None) -> None:
    with trio.fail_after(DISCOVERY_DEADLINE_S):
        for service in services:
            await service.wait_connected(len(services) - 1)
            await service.wait_known(len(services) - 1)
            if topic is not None:
                await service.wait_topic_peers(topic, len(services) - 1)
            # Crossing dials end with one connection per pair: the duplicates close.
            while service.statistics().links > len(services) - 1:
                await service.wait_changed()


@asynccontextmanager
async def five_nodes(loaded: list[Identity]) -> AsyncIterator[list[P2PService]]:
    config = ServiceConfig(rng_seed=0, topics=(CONSENSUS,))
    async with swarm([(loaded[0], config)]) as (sentinel,):
        assert sentinel.address is not None
        others = sentinel_plus(loaded, NODES, topics=(CONSENSUS,))(sentinel.address)
        async with swarm(others) as rest:
            yield [sentinel, *rest]


async def ping_pong(
    pinger: P2PService, ponger: P2PService, rtts_ms: list[float], until: Callable[[], bool]
) -> None:
    """``pinger`` publishes a 300-byte consensus message, ``ponger`` answers on the same
    topic, and the next ping goes when the answer arrives; until ``until()`` holds."""
    pings = ponger.subscribe(CONSENSUS)
    pongs = pinger.subscribe(CONSENSUS)
    filler = bytes(280)

    async def answer() -> None:
        async for delivery in pings:
            if delivery.data.startswith(b"ping"):
                ponger.publish(CONSENSUS, b"pong" + delivery.data[4:])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(answer)
        while not until():
            tag = next(PING_TAGS)  # unique: gossip ids are content hashes
            sent = trio.current_time()
            pinger.publish(CONSENSUS, b"ping" + tag + filler)
            with trio.fail_after(10):
                async for delivery in pongs:
                    if delivery.data.startswith(b"pong" + tag):
                        break
            rtts_ms.append((trio.current_time() - sent) * 1000)
        nursery.cancel_scope.cancel()
    pings.close()
    pongs.close()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


@pytest.mark.process
async def test_five_nodes_from_one_sentinel_then_a_200_mb_blob_beside_consensus_traffic(
    loaded: list[Identity],
) -> None:
    blob = np.random.default_rng(5).integers(0, 256, BLOB_BYTES, dtype=np.uint8)
    async with five_nodes(loaded) as services:
        await wait_full_mesh(services, CONSENSUS)
        for service in services:
            stats = service.statistics()
            assert len(stats.connected) == NODES - 1
            assert stats.links == NODES - 1
            assert set(stats.known) == {s.me for s in services} - {service.me}
            assert stats.refused.get("connection limit", 0) == 0
        source, receiver = services[1], services[3]
        idle_ms: list[float] = []
        await ping_pong(receiver, source, idle_ms, lambda: len(idle_ms) >= IDLE_PINGS)
        manifest = await source.serve_blob(blob.data)
        fetched = []
        busy_ms: list[float] = []

        async def fetch() -> None:
            fetched.append(await receiver.fetch_blob(manifest.root, [source.me]))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(fetch)
            await ping_pong(receiver, source, busy_ms, lambda: bool(fetched))
        result = fetched[0]
        assert result.manifest.root == manifest.root
        assert hashlib.sha256(result.data).digest() == hashlib.sha256(blob.data).digest()
        assert result.chunks_from == {source.me: manifest.chunk_count}
        assert not result.banned
        idle_p50, idle_p99, busy_p50, busy_p99 = (
            percentile(idle_ms, 0.5),
            percentile(idle_ms, 0.99),
            percentile(busy_ms, 0.5),
            percentile(busy_ms, 0.99),
        )
        rate = BLOB_BYTES / result.elapsed_s / 1e6
        print(
            f"blob {rate:.0f} MB/s in {result.elapsed_s:.1f} s; "
            f"idle rtt p50 {idle_p50:.1f} ms p99 {idle_p99:.1f} ms; "
            f"during: {len(busy_ms)} pings, rtt p50 {busy_p50:.1f} ms p99 {busy_p99:.1f} ms"
        )
        assert len(busy_ms) >= 5  # messages kept flowing all along
        # The bound: 200 ms, or five times the idle p99 measured just before, when other work
        # loads the machine (this 2-core machine's load average reaches 20 at times).
        assert busy_p99 < max(P99_BOUND_MS, LOAD_FACTOR * idle_p99)
        stats = receiver.statistics()
        assert stats.blobs["fetches_completed"] == 1
        assert stats.blobs["bytes_fetched"] == BLOB_BYTES
        assert stats.counters["queue_full"] == 0


@pytest.mark.process
async def test_several_sources_a_corrupt_one_banned_and_a_resumed_fetch(
    loaded: list[Identity],
) -> None:
    blob = random.Random(11).randbytes(16 * 1024 * 1024 + 5)
    blobs = BlobConfig(chunk_bytes=512 * 1024)
    config = ServiceConfig(rng_seed=0, blobs=blobs)
    async with swarm([(loaded[0], config)]) as (sentinel,):
        assert sentinel.address is not None
        async with swarm(sentinel_plus(loaded, 4, blobs=blobs)(sentinel.address)) as rest:
            services = [sentinel, *rest]
            await wait_full_mesh(services)
            honest, also_honest, corrupt = services[0], services[1], services[2]
            receiver = services[3]
            manifest = await honest.serve_blob(blob)
            await also_honest.serve_blob(blob)
            # The corrupt source serves the honest manifest; from chunk 8 on, flipped bytes.
            half = 8 * blobs.chunk_bytes
            corrupt.blobs.server.add(manifest, blob[:half] + bytes(b ^ 1 for b in blob[half:]))

            both = await receiver.fetch_blob(manifest.root, [honest.me, also_honest.me])
            assert bytes(both.data) == blob
            assert not both.banned
            assert both.chunks_from[honest.me] > 0
            assert both.chunks_from[also_honest.me] > 0

            mixed = await receiver.fetch_blob(manifest.root, [corrupt.me, honest.me])
            assert bytes(mixed.data) == blob
            assert "bad hash" in mixed.banned[corrupt.me]
            assert honest.me not in mixed.banned

            with pytest.raises(FetchError, match="every source gave up"):
                await receiver.fetch_blob(manifest.root, [corrupt.me])
            held = receiver.blobs.counters.chunks_resumed
            resumed = await receiver.fetch_blob(manifest.root, [also_honest.me])
            resumed_chunks = receiver.blobs.counters.chunks_resumed - held
            assert bytes(resumed.data) == blob
            assert resumed_chunks >= 1  # the corrupt source's good first chunks were kept
            assert resumed.chunks_from == {also_honest.me: manifest.chunk_count - resumed_chunks}
            with pytest.raises(FetchError, match="no known address"):
                await receiver.fetch_blob(manifest.root, ["nobody"])


@pytest.mark.process
async def test_a_wrong_peer_is_refused_and_a_restart_reconnects_without_the_sentinel(
    loaded: list[Identity], tmp_path: Path
) -> None:
    dirs = [tmp_path / f"node{i}" for i in range(3)]
    async with swarm([(loaded[0], ServiceConfig(rng_seed=0, data_dir=dirs[0]))]) as (sentinel,):
        assert sentinel.address is not None
        seed = (sentinel.address.host_port,)
        first = [
            (loaded[i], ServiceConfig(seeds=seed, data_dir=dirs[i], rng_seed=i)) for i in (1, 2)
        ]
        async with swarm(first) as (one, two):
            await wait_full_mesh([sentinel, one, two])
            assert one.address is not None
            assert two.address is not None
            # An address that names node two's peer id but reaches node one: refused.
            liar = str(PeerAddress(one.address.host, one.address.port, two.me))
            async with swarm([(loaded[3], ServiceConfig(seeds=(liar,), rng_seed=3))]) as (odd,):
                with trio.fail_after(DISCOVERY_DEADLINE_S):
                    while not odd.statistics().refused:
                        await odd.wait_changed()
                stats = odd.statistics()
                assert any("but reached" in reason for reason in stats.refused)
                assert stats.connected == ()
            two.stop()
        sentinel.stop()
    stored = load_peers(dirs[2])
    assert {a.peer for a in stored} == {sentinel.me, one.me}
    assert peers_path(dirs[2]).stat().st_mode & 0o777 == 0o600
    # Node two again, no seeds: it finds node one (still up) from its stored addresses.
    one_again = ServiceConfig(port=one.address.port, data_dir=dirs[1], rng_seed=1)
    two_again = ServiceConfig(data_dir=dirs[2], rng_seed=2)
    async with swarm([(loaded[1], one_again), (loaded[2], two_again)]) as (one, two):
        with trio.fail_after(DISCOVERY_DEADLINE_S):
            await two.wait_connected(1)
        assert two.connected() == [one.me]


def test_bad_input_is_one_line_naming_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"seeds\[1\] 'nowhere': no port"):
        ServiceConfig(seeds=("127.0.0.1:4000", "nowhere"))
    with pytest.raises(ConfigError, match="advertise_host"):
        ServiceConfig(host="0.0.0.0")
    peers_path(tmp_path).write_text('{"version": 1, "peers": ["/ip4/1.2.3.4/tcp/5"]}')
    with pytest.raises(ConfigError, match=r"p2p-peers.json: peers\[0\] .* has no /p2p/ID"):
        load_peers(tmp_path)
    peers_path(tmp_path).write_text("{")
    with pytest.raises(ConfigError, match=r"p2p-peers\.json: unreadable"):
        load_peers(tmp_path)


@contextmanager
def swarm_node(paths: IdentityPaths, data: Path, *flags: str) -> Iterator[tuple[str, str]]:
    """A ``swarm-node`` process: its (address, API URL); one host, on ``--listen``."""
    command = [sys.executable, "-m", "swarmlearn.roles.node.daemon", "--data", str(data)]
    command += ["--cert", str(paths.cert), "--key", str(paths.key), "--cacert", str(paths.ca)]
    command += ["--listen", "127.0.0.1:0", "--api", "127.0.0.1:0"]
    data.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with (
        (data / "stderr.log").open("a") as errors,
        subprocess.Popen([*command, *flags], stdout=subprocess.PIPE, stderr=errors, env=env) as p,
    ):
        try:
            assert p.stdout is not None
            banner = p.stdout.readline().decode()  # blocks until the node listens (or dies)
            assert ", api https://" in banner, (data / "stderr.log").read_text()
            address = banner.split("listening on ")[1].split(",")[0]
            yield address, banner.rsplit(" ", 1)[1].strip()
        finally:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait(timeout=30)


@pytest.mark.process
def test_a_swarm_node_is_one_host_and_shows_its_peers_in_the_api(
    identities: list[IdentityPaths], tmp_path: Path
) -> None:
    verify = client_context(load_identity(identities[5]))
    with (
        swarm_node(identities[0], tmp_path / "n0", "--sentinel") as (seed, _),
        swarm_node(identities[1], tmp_path / "n1", "--bootstrap", ledger_host_port(seed)) as (
            address,
            url,
        ),
        httpx.Client(verify=verify, timeout=5) as http,
    ):
        sentinel_id = seed.rsplit("/", 1)[1]
        deadline = time.monotonic() + 60
        peers: dict[str, object] = {}
        while time.monotonic() < deadline:
            peers = http.get(f"{url}/v1/peers").json()
            p2p = peers["p2p"]
            if isinstance(p2p, dict) and sentinel_id in p2p["connected"]:
                break
            time.sleep(0.1)  # polling a real process, under the deadline above
        p2p = peers["p2p"]
        assert isinstance(p2p, dict)
        assert p2p["connected"] == [sentinel_id]
        assert p2p["address"] == address  # the p2p host is the node's one port
        assert peers["ledger"] == [sentinel_id]
        consensus = peers["consensus"]  # where the ledger stands, for an operator
        assert isinstance(consensus, dict)
        assert consensus["height"] >= 1
        assert consensus["round"] >= 0
        assert consensus["step"] in ("propose", "prevote", "precommit")
        assert all(size <= 1 for size in consensus["mesh"].values())  # one peer: the sentinel
        assert consensus["mesh"]  # the ledger's topics


def ledger_host_port(multiaddr: str) -> str:
    return parse_address(multiaddr).host_port


@pytest.mark.process
async def test_a_silent_peer_is_dropped_on_the_ping_deadline(loaded: list[Identity]) -> None:
    table = PeerTableConfig(ping_interval_s=0.3, ping_timeout_s=1.0, tick_s=0.1)
    async with swarm([(loaded[0], ServiceConfig(table=table, rng_seed=0))]) as (node,):
        assert node.address is not None
        # A peer that completes the handshake, then never says a word (nor reads).
        tcp = await trio.open_tcp_stream(node.address.host, node.address.port)
        await tcp.send_all(LANE_MESSAGES)
        silent = await connect_stream(loaded[5], tcp)
        async with silent:
            up_at = trio.current_time()
            with trio.fail_after(DISCOVERY_DEADLINE_S):
                await node.wait_connected(1)
                assert node.connected() == [str(loaded[5].peer_id)]
                while node.connected():
                    await node.wait_changed()
                silent_s = trio.current_time() - up_at
                while node.statistics().links:  # the link sends what it queued, then ends
                    await node.wait_changed()
            assert table.ping_timeout_s <= silent_s
            assert node.statistics().counters["links_closed"] == 1


@pytest.mark.process
async def test_a_lane_over_the_limit_is_refused(loaded: list[Identity]) -> None:
    blob = random.Random(3).randbytes(1024 * 1024)
    one_lane = ServiceConfig(rng_seed=0, blobs=BlobConfig(chunk_bytes=256 * 1024, lanes_max=1))
    async with swarm([(loaded[0], one_lane)]) as (source,):
        assert source.address is not None
        async with swarm(sentinel_plus(loaded, 2)(source.address)) as (receiver,):
            manifest = await source.serve_blob(blob)
            # One lane held open (its server thread waits for a request): the source is full.
            held = await trio.to_thread.run_sync(receiver.blobs.dialer(source.address))
            with held, pytest.raises(FetchError, match="no manifest"):
                await receiver.fetch_blob(manifest.root, [str(source.address)])
            assert source.statistics().blobs["lanes_refused"] == 1
            assert source.statistics().blobs["lanes_served"] == 1

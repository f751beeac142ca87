"""Everyday mishaps of a trainer, on real processes (issue 16): three ``swarm-node`` daemons
(the demo's LocalSwarm), real trainers through each node's local endpoint (``LocalClient``,
and the ``SwarmCallback`` core for the HPE-style script). Each test is one mishap; each
asserts that every live trainer ends with identical weights (the reference merge, bit for
bit) or a clear failure, within a stated bound, and no daemon is restarted: the module runs
all four on the same three daemons, each mishap on a contract of its own.

A trainer "dies" the way a killed script does: its connection drops (the node sees its
session end), nothing else is said.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from swarmlearn.callback.core import SwarmCore, SwarmError, parse_options
from swarmlearn.consensus.ledger.txs import CreateContract, ResetContract
from swarmlearn.demo.swarm import LocalSwarm
from swarmlearn.errors import ConfigError
from swarmlearn.merge import ModelState, flatten, layout_of, merge
from swarmlearn.merge.manifest import Layout
from swarmlearn.p2p.framing import FrameReader, encode_frame
from swarmlearn.p2p.identity import load_identity
from swarmlearn.p2p.wire import decode_body
from swarmlearn.roles.local.endpoint import (
    LOCAL_FRAME_BYTES_MAX,
    LocalClient,
    LocalContribute,
    RoundOutcome,
)
from swarmlearn.roles.local.messages import LocalProgress
from swarmlearn.swci.client import ApiClient
from tests.test_real_rounds import model

pytestmark = [pytest.mark.process, pytest.mark.slow]

NODES = 3
FLOATS = 500_000  # 2 MB of weights: an exchange long enough to be caught in
ROUND_BOUND_S = 60.0  # every trainer's round ends (merged or failed) within this


@pytest.fixture(scope="module")
def swarm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSwarm]:
    with LocalSwarm(tmp_path_factory.mktemp("mishaps"), NODES) as running:
        yield running
        assert all(node.process.poll() is None for node in running.nodes)  # none restarted


def operator(swarm: LocalSwarm) -> ApiClient:
    return ApiClient(f"https://127.0.0.1:{swarm.nodes[0].api_port}", swarm.operator())


def new_contract(swarm: LocalSwarm, name: str) -> str:
    client = operator(swarm)
    try:
        client.submit(CreateContract(name))
    finally:
        client.close()
    return name


def weights_of(node: int) -> int:
    return node + 1


def reference(swarm: LocalSwarm, layout: Layout, seeds: dict[int, int]) -> bytes:
    """The merge of ``model(seed)`` per node, at each node's weight, in the rounds' order of
    participants (by node id): bit for bit what the swarm merges."""
    ids = {n: str(load_identity(swarm.identity_paths(f"n{n}")).peer_id) for n in seeds}
    nodes = sorted(seeds, key=ids.__getitem__)
    states = [model(seeds[n], FLOATS) for n in nodes]
    return bytes(flatten(merge(states, [weights_of(n) for n in nodes], "mean"), layout))


class Trainer:
    """One trainer session at a node: a LocalClient that can be killed mid-round."""

    def __init__(self, swarm: LocalSwarm, node: int, timeout_s: float = ROUND_BOUND_S) -> None:
        self.node = node
        self.heard: list[str] = []
        self.wanted: list[tuple[str, threading.Event]] = []
        self.client = LocalClient(
            swarm.nodes[node].socket, timeout_s=timeout_s, on_progress=self._progress
        )

    def _progress(self, text: str) -> None:
        self.heard.append(text)
        for needle, event in self.wanted:
            if needle in text:
                event.set()

    def hears(self, needle: str) -> threading.Event:
        event = threading.Event()
        self.wanted.append((needle, event))
        if any(needle in text for text in self.heard):
            event.set()
        return event

    def sync(self, contract: str, layout: Layout, seed: int, min_peers: int) -> RoundOutcome:
        flat = bytes(flatten(model(seed, FLOATS), layout))
        outcome = self.client.sync_round(
            contract, layout, flat, weight=weights_of(self.node), min_peers=min_peers
        )
        merged = None if outcome.merged is None else bytes(outcome.merged)  # the file's: copy
        return RoundOutcome(outcome.round, merged, outcome.root, outcome.reason)

    def kill(self) -> None:
        """As a killed script: the connection drops, mid-round. (Shut down, not closed: the
        trainer's own thread closes it, so that its descriptor is not reused under it.)"""
        self.client.sock.shutdown(socket.SHUT_RDWR)


def start(pool: ThreadPoolExecutor, call: Callable[[], RoundOutcome]) -> Future[RoundOutcome]:
    return pool.submit(call)


def ended(future: Future[RoundOutcome]) -> RoundOutcome:
    return future.result(timeout=ROUND_BOUND_S)


def test_restarted_trainer_mid_round(swarm: LocalSwarm) -> None:
    """Node 0's trainer dies while its round is open, then again mid-exchange; each time its
    restart syncs other weights at once. The restart never hears the dead session's round;
    its weights go into the round the ledger opens for them; every round ends identical."""
    contract = new_contract(swarm, "mishap-restart")
    layout = layout_of(model(0, FLOATS))
    with ThreadPoolExecutor(8) as pool:
        # Round 1: dies with its check-in in the open round (2 of 3 in).
        doomed = Trainer(swarm, 0)
        dying = pool.submit(_quietly, doomed, contract, layout, 100, NODES)
        one = Trainer(swarm, 1)
        got1 = start(pool, lambda: one.sync(contract, layout, 11, NODES))
        assert doomed.hears("round 1: 2/3 checked in").wait(ROUND_BOUND_S)
        doomed.kill()
        restarted, two = Trainer(swarm, 0), Trainer(swarm, 2)
        got0 = start(pool, lambda: restarted.sync(contract, layout, 1, NODES))
        got2 = start(pool, lambda: two.sync(contract, layout, 21, NODES))
        round1 = [ended(got0), ended(got1), ended(got2)]
        assert dying.result(timeout=ROUND_BOUND_S) is None
        expected = reference(swarm, layout, {0: 1, 1: 11, 2: 21})
        assert [(o.round, o.merged == expected) for o in round1] == [(1, True)] * 3, round1
        # Round 2: dies once the exchange runs; its restart's weights wait for round 3.
        doomed = Trainer(swarm, 0)
        dying = pool.submit(_quietly, doomed, contract, layout, 200, NODES)
        got1 = start(pool, lambda: one.sync(contract, layout, 12, NODES))
        got2 = start(pool, lambda: two.sync(contract, layout, 22, NODES))
        assert doomed.hears("round 2: exchanging").wait(ROUND_BOUND_S)
        doomed.kill()  # (the round may have ended there just before: the same to the rest)
        again = Trainer(swarm, 0)
        got0 = start(pool, lambda: again.sync(contract, layout, 3, NODES))
        round2 = [ended(got1), ended(got2)]
        expected = reference(swarm, layout, {0: 200, 1: 12, 2: 22})  # the dead session's weights
        assert [(o.round, o.merged == expected) for o in round2] == [(2, True)] * 2, round2
        got1 = start(pool, lambda: one.sync(contract, layout, 13, NODES))
        got2 = start(pool, lambda: two.sync(contract, layout, 23, NODES))
        round3 = [ended(got0), ended(got1), ended(got2)]
        expected = reference(swarm, layout, {0: 3, 1: 13, 2: 23})
        assert [(o.round, o.merged == expected) for o in round3] == [(3, True)] * 3, round3
        assert not any("round 2" in text and "merged" in text for text in again.heard)
        for trainer in (restarted, again, one, two):
            trainer.client.close()


def _quietly(
    trainer: Trainer, contract: str, layout: Layout, seed: int, peers: int
) -> RoundOutcome | None:
    """A sync whose trainer is killed under it (None; what it raises is the kill's doing),
    or its outcome when the round ended first."""
    try:
        return trainer.sync(contract, layout, seed, peers)
    except (ConfigError, OSError):
        return None
    finally:
        trainer.client.close()


def hpe_style_sync(
    swarm: LocalSwarm, node: int, contract: str, seed: int, **options: object
) -> tuple[ModelState | None, float, list[str]]:
    """One sync of an HPE-style script (the SwarmCallback's core): the merged state (None:
    the round failed), how long the sync took, and what the callback logged."""
    logged: list[str] = []
    logger = logging.getLogger(f"mishaps.{contract}.{node}.{seed}")
    logger.setLevel(logging.INFO)
    logger.addHandler(_ListHandler(logged))
    kwargs = {"nodeSocket": str(swarm.nodes[node].socket), "logger": logger, **options}
    min_peers = kwargs.pop("minPeers", NODES)
    core = SwarmCore(parse_options(1, min_peers, contract, kwargs, ()))
    try:
        started = time.monotonic()
        merged = core.sync(model(seed, FLOATS))
        return merged, time.monotonic() - started, logged
    finally:
        core.close()


class _ListHandler(logging.Handler):
    def __init__(self, into: list[str]) -> None:
        super().__init__()
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(record.getMessage())


def test_rerun_after_reset_contract(swarm: LocalSwarm) -> None:
    """The same seeded script, run, then re-run after RESET CONTRACT: the re-run's check-ins
    are byte for byte the same weights, yet new transactions; it ends as the first run did."""
    contract = new_contract(swarm, "mishap-rerun")
    layout = layout_of(model(0, FLOATS))
    expected = reference(swarm, layout, {n: 300 + n for n in range(NODES)})

    def run_script() -> list[tuple[ModelState | None, float, list[str]]]:
        with ThreadPoolExecutor(NODES) as pool:
            runs = [
                pool.submit(hpe_style_sync, swarm, n, contract, 300 + n, nodeWeightage=n + 1)
                for n in range(NODES)
            ]
            return [run.result(timeout=ROUND_BOUND_S) for run in runs]

    for attempt in ("first run", "re-run"):
        results = run_script()
        for merged, took_s, logged in results:
            assert merged is not None, (attempt, logged)
            assert bytes(flatten(merged, layout)) == expected, attempt
            assert took_s < ROUND_BOUND_S
            assert any(text.startswith("round 1: 3 peers") for text in logged), logged
        if attempt == "first run":
            client = operator(swarm)
            client.submit(ResetContract(contract))
            client.close()


def test_a_refused_check_in_fails_the_sync_at_once(swarm: LocalSwarm) -> None:
    """A check-in the ledger refuses when it executes it (the open round merges with another
    method): the script's sync raises the ledger's reason at the next block, not at its
    syncTimeout."""
    contract = new_contract(swarm, "mishap-refused")
    layout = layout_of(model(0, FLOATS))
    with ThreadPoolExecutor(2) as pool:
        holder = Trainer(swarm, 1)
        holding = pool.submit(_quietly, holder, contract, layout, 700, NODES)
        assert holder.hears("round 1: 1/3 checked in").wait(ROUND_BOUND_S)
        began = time.monotonic()
        with pytest.raises(SwarmError, match=r"merge method 'coordmedian'; the round's is 'mean'"):
            hpe_style_sync(swarm, 0, contract, 701, mergeMethod="coordmedian", syncTimeout=60)
        took_s = time.monotonic() - began
        holder.kill()
        assert holding.result(timeout=ROUND_BOUND_S) is None
    assert took_s < 3.0, took_s  # a block or two (about 0.1 s each when the host is quiet)


def test_wrong_minpeers_then_rerun(swarm: LocalSwarm) -> None:
    """Three trainers ask for minPeers=4 on three nodes and are stopped (Ctrl-C) while their
    round waits; the re-run with minPeers=3 merges at once, in a fresh round."""
    contract = new_contract(swarm, "mishap-minpeers")
    layout = layout_of(model(0, FLOATS))
    with ThreadPoolExecutor(8) as pool:
        wrong = [Trainer(swarm, n) for n in range(NODES)]
        waiting = [pool.submit(_quietly, t, contract, layout, 400 + t.node, 4) for t in wrong]
        assert all(t.hears("3/4 checked in").wait(ROUND_BOUND_S) for t in wrong)
        for trainer in wrong:
            trainer.kill()
        assert [w.result(timeout=ROUND_BOUND_S) for w in waiting] == [None] * NODES
        started = time.monotonic()
        right = [Trainer(swarm, n) for n in range(NODES)]
        runs = [
            start(pool, lambda t=t: t.sync(contract, layout, 500 + t.node, NODES))  # type: ignore[misc]
            for t in right
        ]
        outcomes = [ended(run) for run in runs]
        took_s = time.monotonic() - started
    expected = reference(swarm, layout, {n: 500 + n for n in range(NODES)})
    assert [(o.round, o.merged == expected) for o in outcomes] == [(2, True)] * NODES, outcomes
    assert took_s < 30.0
    for trainer in right:
        trainer.client.close()


def test_sync_timeout_is_hard(swarm: LocalSwarm, tmp_path: Path) -> None:
    """syncTimeout bounds a sync from its start: (a) waiting for minPeers while progress
    keeps coming, (b) queued behind a running round, (c) a node that only ever sends
    progress. Each ends with a clear failure within the bound."""
    contract = new_contract(swarm, "mishap-timeout")
    layout = layout_of(model(0, FLOATS))
    with ThreadPoolExecutor(8) as pool:
        # (a) The HPE-style script asks for 4 peers; two others check in meanwhile, so its
        # node keeps reporting progress; the sync still ends at its syncTimeout.
        script = pool.submit(hpe_style_sync, swarm, 0, contract, 600, minPeers=4, syncTimeout=6)
        others = [Trainer(swarm, n) for n in (1, 2)]
        waits = [pool.submit(_quietly, t, contract, layout, 600 + t.node, 4) for t in others]
        merged, took_s, logged = script.result(timeout=ROUND_BOUND_S)
        assert merged is None
        assert 6.0 <= took_s < 7.5, took_s
        assert any("fewer than minPeers=4" in text for text in logged), logged
        for trainer in others:
            trainer.kill()
        assert [w.result(timeout=ROUND_BOUND_S) for w in waits] == [None, None]
        # (b) Queued behind this node's open round of the contract (another session's).
        holder = Trainer(swarm, 0)
        holding = pool.submit(_quietly, holder, contract, layout, 610, 4)
        assert holder.hears("checked in").wait(ROUND_BOUND_S)
        queued = Trainer(swarm, 0, timeout_s=3.0)
        began = time.monotonic()
        outcome = queued.sync(contract, layout, 611, 4)
        took_s = time.monotonic() - began
        assert outcome.merged is None
        assert outcome.reason.startswith("still queued behind round"), outcome.reason
        assert 3.0 <= took_s < 4.0, took_s
        holder.kill()
        assert holding.result(timeout=ROUND_BOUND_S) is None
        queued.client.close()
    # (c) A node that never ends the round but keeps talking: the client gives up on time.
    chatty = tmp_path / "chatty.sock"
    with _chatty_node(chatty):
        client = LocalClient(chatty, timeout_s=1.0)
        began = time.monotonic()
        with pytest.raises(ConfigError, match=r"within syncTimeout=1 s from the start"):
            client.sync_round("x", layout, bytes(layout.total_bytes))
        assert 1.0 <= time.monotonic() - began < 2.5
        client.close()


class _chatty_node:
    """A Unix socket that answers a LocalContribute with progress every 0.1 s, for ever."""

    def __init__(self, path: Path) -> None:
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> _chatty_node:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop.set()
        self.listener.close()
        self.thread.join(timeout=10)

    def _serve(self) -> None:
        connection, _ = self.listener.accept()
        reader = FrameReader(LOCAL_FRAME_BYTES_MAX)
        with connection:
            while (body := reader.next_frame()) is None:
                reader.feed(connection.recv(1 << 20))
            assert isinstance(decode_body(body), LocalContribute)
            count = 0
            while not self.stop.wait(0.1):
                count += 1
                for buffer in encode_frame(LocalProgress(1, f"still busy {count}"), 1 << 20):
                    try:
                        connection.sendall(buffer)
                    except OSError:
                        return

"""Hostile input against real daemons (issue 19, parts 1-4): every attack at once on one node
of a two-node swarm, during sync rounds.

The attacks (tests/hostile_swarm.py): on the round lanes (the node's port after the lane
byte ``R``), a member that announces a 64 MiB frame and goes silent, one that announces 64 KiB
and goes silent, 150 TLS handshakes trickled a byte a second, and a malformed frame; on the
ledger (the same port), 30 members that each announce
64 MiB and send 8 MiB of it (over 10 certificates), one that announces 64 KiB and goes
silent, one that opens 20 connections, a Ping announced at 64 MiB, a malformed frame, 20 slow
handshakes, and an operator (swci) certificate that listens; on the API, 20 slow handshakes
and 1 GiB POSTs (announced, and chunked). The node must keep its rounds (round time within
2x of a quiet run measured here first), its RSS within 256 MB above idle, its threads under
the lane cap plus its own, and count every attack in /metrics.
"""

from __future__ import annotations

import statistics
import threading
import time
from pathlib import Path

import pytest

from swarmlearn.p2p.bulk_push import LANE_THREADS_MAX
from tests.hostile_swarm import Sampler, attacks, metrics, rss_bytes, swarm

pytestmark = [pytest.mark.process, pytest.mark.slow]

RSS_ABOVE_IDLE_MAX = 256 * 1024 * 1024
ROUNDS = 3
MODEL_FLOATS = 5_000_000  # 20 MB: rounds long enough that CPU taken by the attack traffic
#                            (240 MiB of TLS) is not most of them
ATTACK_S = 60.0  # the most any attacker runs
COUNTED_S = 40.0  # the most the counts may take to show (the deadlines they wait on: 10 s)

#: Each attack, and the counters of swarm_refused{port, reason} it must move.
EXPECTED = {
    "lane thread cap": ("lane", "refused"),
    "lane slow handshakes and a non-node": ("lane", "handshakes_failed"),
    "lane silent mid-frame": ("lane", "frame_timeouts"),
    "lane malformed frame": ("lane", "frames_refused"),
    "ledger frames over type or budget": ("ledger", "frames_refused"),
    "ledger silent mid-frame": ("ledger", "frame_timeouts"),
    "ledger one member's 20 connections": ("ledger", "connections_refused"),
    "ledger malformed frame": ("ledger", "messages_dropped"),
    "ledger slow handshakes": ("ledger", "handshakes_failed"),
    "api slow handshakes": ("api", "handshakes_failed"),
    "api big bodies": ("api", "bodies_refused"),
}


def test_a_node_under_every_attack_at_once_keeps_its_rounds_and_its_bounds(
    tmp_path: Path,
) -> None:
    with swarm(tmp_path, model_floats=MODEL_FLOATS) as nodes:
        victim = nodes.victim
        nodes.rounds(1, 1)  # warm: lanes dialed, buffers in place (not measured)
        quiet = nodes.rounds(2, ROUNDS)
        idle_rss = rss_bytes(victim.process.pid)
        with Sampler(victim.process.pid) as sampler, attacks(nodes, ATTACK_S) as seen:
            attacked = nodes.rounds(2 + ROUNDS, ROUNDS)
            counts = _wait_counted(nodes.pki, victim.api_port)
            operator_saw = list(seen["operator_on_ledger"].notes)
        quiet_s, attacked_s = statistics.median(quiet), statistics.median(attacked)
        print(f"round {quiet_s:.2f} s quiet, {attacked_s:.2f} s under attack")
        print(f"RSS {(sampler.peak_rss_bytes - idle_rss) / 2**20:.0f} MiB above idle")
        print(f"threads at most {sampler.peak_threads}; refused {counts}")
        assert attacked_s <= 2 * quiet_s, (quiet, attacked)
        assert sampler.peak_rss_bytes - idle_rss <= RSS_ABOVE_IDLE_MAX
        assert sampler.peak_threads <= LANE_THREADS_MAX + 32
        missing = [what for what, key in EXPECTED.items() if counts.get(key, 0) < 1]
        assert not missing, counts
        assert operator_saw == ["NodeStatus"], operator_saw  # answered, and nothing else
        for name in ("ledger_wrong_type", "ledger_malformed", "lane_malformed"):
            assert seen[name].closed == 1, seen[name]
        assert seen["ledger_crowd"].closed >= 20 - 8, seen["ledger_crowd"]  # PEER_CONNECTIONS_MAX
        assert seen["api_big_post"].notes == ["413"], seen["api_big_post"]
        assert seen["api_big_post_chunked"].notes == ["413"], seen["api_big_post_chunked"]


def _wait_counted(pki: Path, api_port: int) -> dict[tuple[str, str], float]:
    """/metrics, once every expected counter moved (or ``COUNTED_S`` passed)."""
    deadline = time.monotonic() + COUNTED_S
    wake = threading.Event()
    while True:
        counts = metrics(pki, api_port)
        if all(counts.get(key, 0) >= 1 for key in EXPECTED.values()):
            return counts
        if time.monotonic() > deadline:
            return counts
        wake.wait(0.5)  # real processes: nothing to wait on but their answers

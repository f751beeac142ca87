"""A node under every attack of issue 19 at once, during sync rounds: what it costs.

Two swarm-node daemons on loopback run sync rounds of a float32 model; then the same rounds
run while one node takes, all at once (tests/hostile_swarm.py): on its lane port a member that
announces a 64 MiB frame and goes silent (and one at 64 KiB), 150 TLS handshakes trickled a
byte a second, a malformed frame; on its ledger port 30 members that each announce 64 MiB and
send 8 MiB of it, a Ping announced at 64 MiB, a malformed frame, 20 slow handshakes, an
operator certificate listening; on its API 20 slow handshakes and two 1 GiB POSTs.

Figures (after one round to warm up, not measured): the median round time quiet and under
attack, and their ratio; the attacked node's
peak RSS above its idle RSS (measured after the quiet rounds) and its peak thread count.

    python bench/hostile.py [--quick] [--rounds N]

Targets (issue 19): round time under attack <= 2x quiet; RSS above idle <= 256 MiB; threads
<= the lane cap (64) + 32.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from swarmlearn.p2p.bulk_push import LANE_THREADS_MAX  # noqa: E402
from tests.hostile_swarm import Sampler, attacks, rss_bytes, swarm  # noqa: E402

MIB = 1024 * 1024
ATTACK_S = 30.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 MB model, 2 rounds each")
    parser.add_argument("--rounds", type=int, default=0, help="rounds each way (default 5)")
    args = parser.parse_args()
    rounds = args.rounds or (2 if args.quick else 5)
    floats = (5 if args.quick else 25) * 1_000_000
    with tempfile.TemporaryDirectory() as tmp, swarm(Path(tmp), model_floats=floats) as nodes:
        pid = nodes.victim.process.pid
        nodes.rounds(1, 1)  # warm: lanes dialed, buffers in place (not measured)
        quiet = nodes.rounds(2, rounds)
        idle = rss_bytes(pid)
        with Sampler(pid) as sampler, attacks(nodes, ATTACK_S):
            attacked = nodes.rounds(2 + rounds, rounds)
    quiet_s, attacked_s = statistics.median(quiet), statistics.median(attacked)
    figures: dict[str, Any] = {
        "model_MB": floats * 4 // 1_000_000,
        "round_quiet_s": round(quiet_s, 3),
        "round_attacked_s": round(attacked_s, 3),
        "round_attacked_vs_quiet": round(attacked_s / quiet_s, 2),
        "rss_above_idle_MiB": round((sampler.peak_rss_bytes - idle) / MIB, 1),
        "threads_peak": sampler.peak_threads,
    }
    targets = {
        "round_attacked_vs_quiet": "<= 2",
        "rss_above_idle_MiB": "<= 256",
        "threads_peak": f"<= {LANE_THREADS_MAX + 32}",
    }
    met = (
        figures["round_attacked_vs_quiet"] <= 2
        and figures["rss_above_idle_MiB"] <= 256
        and figures["threads_peak"] <= LANE_THREADS_MAX + 32
    )
    print(json.dumps({"figures": figures, "targets": targets, "met": met}))


if __name__ == "__main__":
    main()

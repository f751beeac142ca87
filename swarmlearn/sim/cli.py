"""``python -m swarmlearn.sim`` and ``swarmlearn sim``: run a scenario, print its fingerprint."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import swarmlearn.consensus.tendermint.gossip_simulation
import swarmlearn.consensus.tendermint.simulation
import swarmlearn.roles.sl.simulation
import swarmlearn.roles.sl.simulation_sessions  # noqa: F401  (the sessions-* scenarios)
from swarmlearn.errors import ConfigError
from swarmlearn.sim.scenarios import DEFAULT_SCENARIO, SCENARIOS, run_scenario


def add_sim_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0, help="the root seed (default 0)")
    parser.add_argument(
        "--seeds",
        metavar="FIRST:END",
        help="sweep the seeds FIRST..END-1 instead; print only failures and a summary",
    )
    parser.add_argument("--nodes", type=int, help="how many nodes (default: the scenario's)")
    parser.add_argument(
        "--scenario",
        default=DEFAULT_SCENARIO,
        help=f"which scenario (default {DEFAULT_SCENARIO}; --list shows them)",
    )
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument("--verbose", action="store_true", help="print every Log effect")


def run(args: argparse.Namespace) -> int:
    if args.list:
        for name, sc in sorted(SCENARIOS.items()):
            print(f"{name:12s} {sc.description} (default {sc.default_nodes} nodes)")
        return 0
    if args.scenario not in SCENARIOS:
        valid = ", ".join(sorted(SCENARIOS))
        raise ConfigError(f"--scenario {args.scenario!r} is not one of: {valid}")
    if args.seed < 0:
        raise ConfigError(f"--seed must be >= 0, got {args.seed}")
    if args.nodes is not None and args.nodes < 1:
        raise ConfigError(f"--nodes must be >= 1, got {args.nodes}")
    if args.seeds is not None:
        return _sweep(args.scenario, _seed_range(args.seeds), args.nodes)
    result = run_scenario(args.scenario, args.seed, args.nodes, verbose=args.verbose)
    for line in (*result.header, *result.summary()):
        print(line)
    return 0 if result.ok else 1


def _seed_range(text: str) -> range:
    first, sep, end = text.partition(":")
    try:
        seeds = range(int(first), int(end))
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: expected FIRST:END, e.g. 0:1000") from None
    if not sep or not seeds or seeds.start < 0:
        raise ConfigError(f"--seeds {text!r}: expected FIRST:END with 0 <= FIRST < END")
    return seeds


def _sweep(scenario: str, seeds: range, nodes: int | None) -> int:
    failures = 0
    for seed in seeds:
        result = run_scenario(scenario, seed, nodes)
        if not result.ok:
            failures += 1
            print(f"seed {seed}: {result.failure}: {result.message}")
            print(f"  replay: {result.replay}", flush=True)
    print(f"{scenario}: {len(seeds) - failures}/{len(seeds)} seeds ok")
    return 0 if failures == 0 else 1


def main(argv: Sequence[str] | None = None) -> int:
    from swarmlearn.cli.common import ArgumentParser, run_command

    parser = ArgumentParser(
        prog="python -m swarmlearn.sim",
        description="Run a deterministic swarm simulation; one seed replays the whole run.",
    )
    add_sim_arguments(parser)
    return run_command(run, parser.parse_args(argv), "swarmlearn.sim")


if __name__ == "__main__":
    sys.exit(main())

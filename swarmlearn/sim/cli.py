"""``python -m swarmlearn.sim`` and ``swarmlearn sim``: run a scenario, print its fingerprint."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import swarmlearn.consensus.simulation  # noqa: F401  (registers the bft-* scenarios)
from swarmlearn.errors import ConfigError
from swarmlearn.sim.scenarios import DEFAULT_SCENARIO, SCENARIOS, run_scenario


def add_sim_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0, help="the root seed (default 0)")
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
    result = run_scenario(args.scenario, args.seed, args.nodes, verbose=args.verbose)
    for line in (*result.header, *result.summary()):
        print(line)
    return 0 if result.ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    from swarmlearn.cli import ArgumentParser, run_command

    parser = ArgumentParser(
        prog="python -m swarmlearn.sim",
        description="Run a deterministic swarm simulation; one seed replays the whole run.",
    )
    add_sim_arguments(parser)
    return run_command(run, parser.parse_args(argv), "swarmlearn.sim")


if __name__ == "__main__":
    sys.exit(main())

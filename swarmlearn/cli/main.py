"""The ``swarmlearn`` command: one entry point, a subcommand per job.

Every user mistake is a :class:`ConfigError` (or an argparse usage error) and
ends as one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from swarmlearn import __version__
from swarmlearn.cli.common import ArgumentParser, run_command
from swarmlearn.errors import ConfigError
from swarmlearn.p2p import certs
from swarmlearn.p2p import identity as ident


def _certs_init(args: argparse.Namespace) -> int:
    ca = certs.create_ca(
        args.dir, name=args.name, days=args.days, key_type=args.key_type, overwrite=args.force
    )
    print(f"CA {args.name!r} written to {args.dir / certs.CA_CERT_FILE} (key {certs.CA_KEY_FILE})")
    print(f"valid until {ca.certificate.not_valid_after_utc:%Y-%m-%d}")
    return 0


def _certs_issue(args: argparse.Namespace) -> int:
    ca = certs.CertificateAuthority.load(args.ca)
    issued = certs.issue_certificate(
        ca,
        args.name,
        args.out or args.ca,
        hosts=args.host,
        roles=[ident.Role(role) for role in args.role],
        spiffe_id=args.spiffe_id,
        days=args.days,
        key_type=args.key_type,
        overwrite=args.force,
    )
    print(f"certificate {issued.cert_path}")
    print(f"key         {issued.key_path}")
    _print_info(issued.info)
    return 0


def _certs_show(args: argparse.Namespace) -> int:
    found = ident.read_certificates(args.file, "certificate")
    try:
        info = ident.describe_certificate(found[0])
    except ValueError as error:
        raise ConfigError(f"certificate {args.file}: {error}") from None
    _print_info(info)
    if args.cacert is not None:
        key = args.key or args.file.with_name(args.file.stem + "-key.pem")
        ident.load_identity(ident.IdentityPaths(args.file, key, args.cacert))
        print(f"checked     chains to {args.cacert}, valid now, key {key} matches")
    return 0


def _print_info(info: ident.CertificateInfo) -> None:
    print(f"name        {info.name}")
    print(f"peer id     {info.peer_id}")
    print(f"roles       {', '.join(sorted(role.value for role in info.roles)) or '(none)'}")
    if info.spiffe_id:
        print(f"spiffe id   {info.spiffe_id}")
    print(f"expires     {info.not_valid_after.isoformat(timespec='seconds')}")


def _node(args: argparse.Namespace) -> int:
    from swarmlearn.roles.node import daemon

    return daemon.run(args)


def _ping(args: argparse.Namespace) -> int:
    from swarmlearn.roles.node import daemon

    return daemon.ping(args)


def _ledger(args: argparse.Namespace) -> int:
    from swarmlearn.cli import ledger as client

    return client.run(args)


def _sim(args: argparse.Namespace) -> int:
    from swarmlearn.sim import cli

    return cli.run(args)


def _ci(args: argparse.Namespace) -> int:
    from swarmlearn.swci import main

    return main.run(args)


def _demo(args: argparse.Namespace) -> int:
    from swarmlearn.demo import run

    return run.run(args)


def _dashboard(args: argparse.Namespace) -> int:
    from swarmlearn.dashboard import cli

    return cli.run(args)


def _collect_logs(args: argparse.Namespace) -> int:
    from swarmlearn.cli import collect_logs

    return collect_logs.run(args)


def _days(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of days, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _add_certs_commands(commands: argparse._SubParsersAction[ArgumentParser]) -> None:
    certs_parser = commands.add_parser("certs", help="make a swarm CA and node certificates")

    certs_commands = certs_parser.add_subparsers(
        title="certs commands", metavar="COMMAND", required=True
    )
    init = certs_commands.add_parser("init", help="make a CA in DIR (ca.pem, ca-key.pem)")
    init.add_argument("dir", type=Path, metavar="DIR")
    init.add_argument("--name", default="swarmlearn CA", help="the CA's common name")
    init.add_argument("--days", type=_days, default=3650, help="validity (default 3650)")
    init.add_argument("--key-type", choices=certs.KEY_TYPES, default="ed25519")
    init.add_argument("--force", action="store_true", help="replace existing files")
    init.set_defaults(command=_certs_init)

    issue = certs_commands.add_parser(
        "issue", help="issue a node certificate and key (NAME.pem, NAME-key.pem)"
    )
    issue.add_argument("name", metavar="NAME", help="the node's name (certificate common name)")
    issue.add_argument("--ca", type=Path, default=Path("."), help="the CA directory (default .)")
    issue.add_argument("--out", type=Path, help="where to write (default: the CA directory)")
    issue.add_argument(
        "--host", action="append", default=[], help="a DNS name or IP of the node (repeatable)"
    )
    issue.add_argument(
        "--role",
        action="append",
        choices=[role.value for role in ident.Role],
        required=True,
        help="a role the node may play (repeatable)",
    )
    issue.add_argument("--spiffe-id", help="a spiffe://domain/path URI to put in the certificate")
    issue.add_argument("--days", type=_days, default=365, help="validity (default 365)")
    issue.add_argument("--key-type", choices=certs.KEY_TYPES, default="ed25519")
    issue.add_argument("--force", action="store_true", help="replace existing files")
    issue.set_defaults(command=_certs_issue)

    show = certs_commands.add_parser("show", help="print a certificate's peer id, roles, expiry")
    show.add_argument("file", type=Path, metavar="FILE")
    show.add_argument("--cacert", type=Path, help="also check it chains to this CA and is valid")
    show.add_argument("--key", type=Path, help="the key to check against (default NAME-key.pem)")
    show.set_defaults(command=_certs_show)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="swarmlearn",
        description="Open, pure-Python Swarm Learning: train one model across sites "
        "without sharing their data.",
    )
    parser.add_argument("--version", action="version", version=f"swarmlearn {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    _add_certs_commands(commands)

    from swarmlearn.roles.node.daemon import add_node_arguments, add_ping_arguments

    node = commands.add_parser("node", help="run a swarm node (the same as swarm-node)")
    add_node_arguments(node)
    node.set_defaults(command=_node)

    ping = commands.add_parser("ping", help="check mutual TLS to a node and measure round trips")
    add_ping_arguments(ping)
    ping.set_defaults(command=_ping)

    from swarmlearn.cli.ledger import add_ledger_arguments

    ledger = commands.add_parser("ledger", help="a node's ledger status, or submit a record")
    add_ledger_arguments(ledger)
    ledger.set_defaults(command=_ledger)

    from swarmlearn.sim.cli import add_sim_arguments

    sim = commands.add_parser("sim", help="run a deterministic swarm simulation")
    add_sim_arguments(sim)
    sim.set_defaults(command=_sim)

    from swarmlearn.cli.collect_logs import add_collect_logs_arguments

    collect = commands.add_parser(
        "collect-logs",
        help="pack this host's node logs, config, versions and ledger for a bug report",
    )
    add_collect_logs_arguments(collect)
    collect.set_defaults(command=_collect_logs)

    from swarmlearn.dashboard.cli import add_dashboard_arguments

    dashboard = commands.add_parser("dashboard", help="watch a swarm in the browser")
    add_dashboard_arguments(dashboard)
    dashboard.set_defaults(command=_dashboard)

    from swarmlearn.demo.run import add_demo_arguments

    demo = commands.add_parser(
        "demo", help="a swarm on this machine training digits, start to finish"
    )
    add_demo_arguments(demo)
    demo.set_defaults(command=_demo)

    from swarmlearn.swci.main import add_ci_arguments

    ci = commands.add_parser("ci", help="swarm command interface (SWCI): HPE's commands, REPL")
    add_ci_arguments(ci)
    ci.set_defaults(command=_ci)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(args.command, args, "swarmlearn")


if __name__ == "__main__":
    sys.exit(main())

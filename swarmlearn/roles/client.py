"""``swarmlearn ledger``: ask any node of the swarm for its ledger status, or submit a record."""

from __future__ import annotations

import argparse
import sys

import trio

from swarmlearn.cli import add_identity_arguments, identity_from_arguments
from swarmlearn.errors import ConfigError
from swarmlearn.p2p.address import parse_host_port
from swarmlearn.roles.messages import NodeStatus, StatusRequest, SubmitReply, SubmitRequest
from swarmlearn.roles.validator import NETWORK_ERRORS, ask

DEFAULT_PORT = 30303


def add_ledger_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(title="ledger commands", metavar="COMMAND", required=True)
    status = commands.add_parser("status", help="a node's chain, height, validators and peers")
    status.add_argument("address", metavar="HOST:PORT")
    add_identity_arguments(status)
    status.set_defaults(ledger=_status)
    submit = commands.add_parser("submit", help="put a key=value record on the ledger")
    submit.add_argument("address", metavar="HOST:PORT")
    submit.add_argument("record", metavar="KEY=VALUE")
    add_identity_arguments(submit)
    submit.set_defaults(ledger=_submit)


def run(args: argparse.Namespace) -> int:
    return int(args.ledger(args))


def _status(args: argparse.Namespace) -> int:
    host, port = parse_host_port(args.address, field="address", default_port=DEFAULT_PORT)
    identity = identity_from_arguments(args)
    try:
        status = trio.run(ask, identity, host, port, StatusRequest(), NodeStatus)
    except NETWORK_ERRORS as error:
        print(f"ledger status {args.address}: {error or type(error).__name__}", file=sys.stderr)
        return 1
    print(f"node        {status.node}")
    print(f"chain       {status.chain_id}")
    print(f"height      {status.height}")
    print(f"last block  {status.last_block_hash.hex()}")
    print(f"records     {status.txs} in {status.blocks_with_txs} blocks")
    print(f"app hash    {status.app_hash.hex()}")
    print(f"validators  {len(status.validators)}: {', '.join(v[:8] for v in status.validators)}")
    print(f"peers       {len(status.peers)}: {', '.join(p[:8] for p in status.peers)}")
    return 0


def _submit(args: argparse.Namespace) -> int:
    if "=" not in args.record:
        raise ConfigError(f"record {args.record!r}: expected KEY=VALUE")
    host, port = parse_host_port(args.address, field="address", default_port=DEFAULT_PORT)
    identity = identity_from_arguments(args)
    request = SubmitRequest(args.record.encode())
    try:
        reply = trio.run(ask, identity, host, port, request, SubmitReply)
    except NETWORK_ERRORS as error:
        print(f"ledger submit {args.address}: {error or type(error).__name__}", file=sys.stderr)
        return 1
    print("accepted" if reply.accepted else f"refused: {reply.reason}")
    return 0 if reply.accepted else 1

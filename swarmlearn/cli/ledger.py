"""``swarmlearn ledger``: read a swarm's ledger from any node, or act on it as oneself.

Reading (``status``, ``members``, ``contracts``, ``refusals``) needs any certificate of the
swarm. Writing signs a transaction with the caller's own key: ``join`` registers the caller
(needed once before anything else), ``create-contract`` needs an operator (swci) certificate,
``leave`` takes the caller out of the registry (and its validator seat), or, with ``--node``
and an operator's certificate, removes another node (a dead one, while a quorum is alive).
Writes wait until the transaction is committed and say whether the ledger accepted it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import trio
from cryptography.hazmat.primitives import serialization

from swarmlearn.cli.common import add_identity_arguments, identity_from_arguments
from swarmlearn.consensus.ledger.app import sign_transaction
from swarmlearn.consensus.ledger.txs import CreateContract, Join, Leave
from swarmlearn.errors import ConfigError
from swarmlearn.p2p.address import parse_host_port
from swarmlearn.p2p.identity import Identity
from swarmlearn.p2p.wire import Message
from swarmlearn.roles.api.messages import (
    LedgerQuery,
    LedgerReply,
    NodeStatus,
    StatusRequest,
    SubmitReply,
    SubmitRequest,
)
from swarmlearn.roles.node.node import NETWORK_ERRORS, ask, network_reason

DEFAULT_PORT = 30303
COMMIT_WAIT_S = 25.0  # under the request timeout, so the node's answer arrives first


def add_ledger_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(title="ledger commands", metavar="COMMAND", required=True)
    for name, summary in (
        ("status", "a node's chain, height, validators and peers"),
        ("members", "who is in the swarm, with roles and addresses"),
        ("contracts", "training contracts and their rounds"),
        ("refusals", "recent transactions the ledger refused, and why"),
        ("join", "register yourself (once, before acting on the ledger)"),
    ):
        command = commands.add_parser(name, help=summary)
        command.add_argument("address", metavar="HOST:PORT")
        command.add_argument("--json", action="store_true", help="print JSON for scripts")
        add_identity_arguments(command)
        command.set_defaults(ledger=name)
    create = commands.add_parser("create-contract", help="create a training contract (swci)")
    create.add_argument("address", metavar="HOST:PORT")
    create.add_argument("name", metavar="NAME")
    create.add_argument("--merge-method", default="mean")
    create.add_argument("--json", action="store_true", help="print JSON for scripts")
    add_identity_arguments(create)
    create.set_defaults(ledger="create-contract")
    leave = commands.add_parser(
        "leave", help="leave the swarm, or remove another node (--node, swci)"
    )
    leave.add_argument("address", metavar="HOST:PORT")
    leave.add_argument(
        "--node", metavar="ID", help="the node to remove (its peer id, or a unique prefix)"
    )
    leave.add_argument("--reason", default="", help="why, for the ledger")
    leave.add_argument("--json", action="store_true", help="print JSON for scripts")
    add_identity_arguments(leave)
    leave.set_defaults(ledger="leave")


def run(args: argparse.Namespace) -> int:
    host, port = parse_host_port(args.address, field="address", default_port=DEFAULT_PORT)
    identity = identity_from_arguments(args)
    try:
        return trio.run(_run, identity, host, port, args)
    except NETWORK_ERRORS as error:
        print(f"ledger {args.ledger} {args.address}: {network_reason(error)}", file=sys.stderr)
        return 1


async def _run(identity: Identity, host: str, port: int, args: argparse.Namespace) -> int:
    if args.ledger == "status":
        status = await ask(identity, host, port, StatusRequest(), NodeStatus)
        _print_status(status, args.json)
        return 0
    if args.ledger in ("members", "contracts", "refusals"):
        view = await ask(identity, host, port, LedgerQuery(args.ledger), LedgerReply)
        _print_view(args.ledger, json.loads(view.json), args.json)
        return 0
    status = await ask(identity, host, port, StatusRequest(), NodeStatus)
    if args.ledger == "join":
        body: Message = Join("", identity.certificate.public_bytes(serialization.Encoding.DER))
    elif args.ledger == "leave":
        node = await _node_named(identity, host, port, status, args.node) if args.node else ""
        body = Leave(node, args.reason, nonce=time.time_ns())
    else:
        body = CreateContract(args.name, merge_method=args.merge_method)
    tx = sign_transaction(identity, status.chain_id, body)
    reply = await ask(identity, host, port, SubmitRequest(tx, COMMIT_WAIT_S), SubmitReply)
    if args.json:
        print(
            json.dumps({"accepted": reply.accepted, "reason": reply.reason, "height": reply.height})
        )
    else:
        print(f"committed at height {reply.height}" if reply.accepted else reply.reason)
    return 0 if reply.accepted else 1


async def _node_named(
    identity: Identity, host: str, port: int, status: NodeStatus, text: str
) -> str:
    """The member or validator whose peer id is ``text`` or starts with it."""
    view = await ask(identity, host, port, LedgerQuery("members"), LedgerReply)
    known = {row["node"] for row in json.loads(view.json)} | set(status.validators)
    found = sorted(node for node in known if node.startswith(text.lower()))
    if len(found) != 1:
        what = "no member or validator" if not found else f"{len(found)} nodes"
        raise ConfigError(
            f"--node {text}: {what} of this swarm has a peer id starting with it "
            "(see swarmlearn ledger members / status)"
        )
    return found[0]


def _print_status(status: NodeStatus, as_json: bool) -> None:
    if as_json:
        fields = {
            "node": status.node,
            "chain": status.chain_id,
            "height": status.height,
            "validators": list(status.validators),
            "peers": list(status.peers),
            "transactions": status.txs,
        }
        print(json.dumps(fields))
        return
    print(f"node        {status.node}")
    print(f"chain       {status.chain_id}")
    print(f"height      {status.height}")
    print(f"last block  {status.last_block_hash.hex()}")
    print(f"app hash    {status.app_hash.hex()}")
    print(f"records     {status.txs} in {status.blocks_with_txs} blocks")
    print(f"validators  {len(status.validators)}: {', '.join(v[:8] for v in status.validators)}")
    print(f"peers       {len(status.peers)}: {', '.join(p[:8] for p in status.peers)}")


def _print_view(what: str, rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        print(json.dumps(rows))
        return
    if what == "members":
        for m in rows:
            roles, address = ",".join(m["roles"]), m["address"] or "-"
            print(f"{m['node'][:16]}  {roles:12s} {address:22s} joined at {m['joined_height']}")
    elif what == "contracts":
        for c in rows:
            latest = c["rounds"][-1] if c["rounds"] else None
            state = f"round {latest['round']} {latest['status']}" if latest else "no rounds yet"
            if latest and latest["status"] == "failed" and latest["reason"]:
                state += f" ({latest['reason']})"  # e.g. abandoned: no trainer waits for it
            print(f"{c['name']:28s} {c['merge_method']:12s} {state}")
    else:
        for r in rows:
            print(f"height {r['height']:>6}  {r['sender'][:8] or '-':8s}  {r['reason']}")

"""The ``swarm-node`` daemon and the ``swarmlearn ping`` / ``swarmlearn ledger`` clients.

What runs today: the node checks its identity (it does not start without a valid
certificate, key and CA, and says which file is wrong), then runs a ledger validator (SN):
the sentinel creates the chain (``--sentinel``), other nodes join through any running node
(``--bootstrap``), and a restarted node picks up from its data directory; with
``--leave-on-exit`` it leaves the swarm (registry and seat) when it is stopped. Sync rounds (SL)
run through its local endpoint; ``--swop-profile FILE`` (or ``SWOP_PROFILE``) also makes it a
SWOP that runs tasks from the ledger (:mod:`swarmlearn.roles.swop.runner`).
"""

from __future__ import annotations

import argparse
import functools
import logging
import math
import os
import signal
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

import trio

from swarmlearn.cli.common import (
    ArgumentParser,
    add_identity_arguments,
    identity_from_arguments,
    run_command,
)
from swarmlearn.errors import ConfigError, RemoteProtocolError, config_error_in
from swarmlearn.p2p.address import parse_host_port
from swarmlearn.p2p.identity import Identity, Role
from swarmlearn.p2p.messages import Goodbye, Ping, Pong
from swarmlearn.p2p.transport import TransportConfig, dial
from swarmlearn.roles.api.server import DEFAULT_API_PORT
from swarmlearn.roles.node import logs
from swarmlearn.roles.node.config import add_config_arguments, resolve
from swarmlearn.roles.node.node import ValidatorNode, ValidatorOptions
from swarmlearn.roles.swop.profile import Profile, load_profile
from swarmlearn.roles.swop.runner import Swop

log = logging.getLogger("swarmlearn.node")

DEFAULT_P2P_PORT = 30303  # HPE's SN peer-to-peer port
HPE_LANE_PORT = 30305  # HPE's SL file server port: a separate round-lane port, when asked
WILDCARD_HOSTS = ("0.0.0.0", "::", "")


def add_node_arguments(parser: argparse.ArgumentParser) -> None:
    add_identity_arguments(parser)
    add_config_arguments(parser)
    parser.add_argument(
        "--listen",
        help=f"HOST:PORT to accept peers on (default 127.0.0.1:{DEFAULT_P2P_PORT})",
    )
    parser.add_argument(
        "--data",
        "--data-dir",
        type=Path,
        help="where the node keeps its ledger and local socket (default ./swarm-data)",
    )
    parser.add_argument(
        "--sentinel", action="store_true", help="create a new swarm (the first node only)"
    )
    parser.add_argument("--bootstrap", metavar="HOST:PORT", help="join the swarm through this node")
    parser.add_argument("--chain-id", help="the new chain's id (with --sentinel)")
    parser.add_argument(
        "--advertise", metavar="HOST:PORT", help="the address peers should dial (default --listen)"
    )
    parser.add_argument(
        "--api",
        metavar="HOST:PORT",
        help=f"serve the HTTP API here (default 127.0.0.1:{DEFAULT_API_PORT}; 'none' for no API)",
    )
    parser.add_argument(
        "--lane-port",
        metavar="PORT",
        help="accept round lanes (the weights of sync rounds) on a port of their own on the "
        f"--listen host (e.g. {HPE_LANE_PORT}, HPE's; 0: any free one); default 'none': on "
        "the --listen port itself, as everything else (announced to the peers either way)",
    )
    parser.add_argument(
        "--leave-on-exit",
        action="store_true",
        help="on SIGTERM/SIGINT, leave the swarm (registry and validator seat) before stopping; "
        "default: keep them, so that a restart picks up where it was",
    )
    parser.add_argument(
        "--check", action="store_true", help="check the identity and configuration, then exit"
    )
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    parser.add_argument(
        "--log-format",
        metavar="FORMAT",
        help="text (default) or json: one JSON object per log line [SWARM_LOG_FORMAT]",
    )
    parser.add_argument(
        "--swop-profile",
        type=Path,
        metavar="FILE",
        help="also be a SWOP: run tasks for this profile's taskrunner [SWOP_PROFILE]",
    )


def add_ping_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("address", metavar="HOST:PORT", help="the node to ping")
    parser.add_argument("--count", type=int, default=3, help="pings to send (default 3)")
    parser.add_argument(
        "--timeout", type=float, default=10.0, help="seconds to wait for each step (default 10)"
    )
    add_identity_arguments(parser)


async def serve_node(
    identity: Identity,
    options: ValidatorOptions,
    profile: Profile | None = None,
    *,
    leave_on_exit: bool = False,
) -> None:
    """Run the node (and its SWOP, with a profile) until
    SIGTERM or SIGINT, then stop cleanly (with ``leave_on_exit``, after leaving the swarm)."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        node = await ValidatorNode.open(
            identity, options, on_ready=lambda line: print(line, flush=True)
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            if profile is not None:
                await nursery.start(Swop(node, profile).run)
            async for signum in signals:
                log.info("%s received, stopping", signal.Signals(signum).name)
                if leave_on_exit:
                    print("leaving the swarm (--leave-on-exit)", flush=True)
                    print(await node.leave("leave-on-exit"), flush=True)
                nursery.cancel_scope.cancel()
                break
    print("swarm-node stopped", flush=True)


def node_options(args: argparse.Namespace) -> ValidatorOptions:
    if args.sentinel and args.bootstrap:
        raise ConfigError("--sentinel creates a swarm and --bootstrap joins one: give only one")
    listen = parse_host_port(args.listen, field="--listen", default_port=DEFAULT_P2P_PORT)
    if listen[0] in WILDCARD_HOSTS and args.advertise is None:
        raise ConfigError(
            f"--listen {args.listen}: on every address, the node needs --advertise HOST:PORT,"
            " the address the other nodes dial (the ledger would record"
            f" {listen[0]}:{listen[1]}, which to them is themselves)"
        )
    return ValidatorOptions(
        data_dir=args.data,
        listen=listen,
        sentinel=args.sentinel,
        bootstrap=_address(args.bootstrap, "--bootstrap"),
        chain_id=args.chain_id,
        advertise=_address(args.advertise, "--advertise"),
        api=None if args.api == "none" else _address(args.api, "--api", DEFAULT_API_PORT),
        lane_port=_lane_port(getattr(args, "lane_port", None)),
    )


def _lane_port(port: int | str | None) -> int | None:
    """None (the default, ``none``): no port of their own, the round lanes come to the
    --listen port like everything else (measured as fast as a port of their own:
    docs/networking.md); a number: a lane listener there (0: any free port). The peers
    learn it either way."""
    if port is None or (isinstance(port, str) and port.strip().lower() == "none"):
        return None
    number = int(port) if isinstance(port, int) or port.strip().isdigit() else -1
    if not 0 <= number < 65536:
        raise ConfigError(
            f"--lane-port {port}: must be a port number (0..65535; 0: any free one) or none"
        )
    return number


def swop_profile(args: argparse.Namespace, identity: Identity) -> Profile | None:
    """The checked SWOP profile of ``--swop-profile`` (or ``SWOP_PROFILE``), if any."""
    path = args.swop_profile or os.environ.get("SWOP_PROFILE") or None
    if path is None:
        return None
    if Role.SWOP not in identity.info.roles:
        raise ConfigError(f"--swop-profile {path}: this node's certificate lacks the swop role")
    return load_profile(path)


def _address(
    text: str | None, field: str, default_port: int = DEFAULT_P2P_PORT
) -> tuple[str, int] | None:
    return None if text is None else parse_host_port(text, field=field, default_port=default_port)


def run(args: argparse.Namespace) -> int:
    args = resolve(args)
    logs.configure(args.log_format, args.log_level)
    options = node_options(args)
    identity = identity_from_arguments(args)
    logs.configure(args.log_format, args.log_level, identity.info.name, str(identity.peer_id))
    profile = swop_profile(args, identity)
    if args.check:
        print(f"identity ok: {identity.info.name}, peer id {identity.peer_id}")
        return 0
    try:
        leave = bool(getattr(args, "leave_on_exit", False))
        trio.run(
            functools.partial(serve_node, leave_on_exit=leave),
            identity,
            options,
            profile,
        )
    except (OSError, ExceptionGroup) as error:
        fault = config_error_in(error)
        if fault is not None:  # a disk fault mid-run, a damaged log: its one line, exit 2
            raise fault from None
        bind_error = _bind_error(error)
        if bind_error is None:
            raise
        api = any(  # the API binds its own listeners (roles/api/server.py) before Hypercorn serves
            "hypercorn" in frame.filename or os.path.join("roles", "api", "") in frame.filename
            for frame in traceback.extract_tb(bind_error.__traceback__)
        )
        flag, address = ("--api", args.api) if api else ("--listen", args.listen)
        lane_bind = any(
            frame.filename.endswith("bulk_push.py")  # RoundLanes.serve
            for frame in traceback.extract_tb(bind_error.__traceback__)
        )
        if lane_bind:
            flag, address = "--lane-port", str(options.lane_port)
        reason = os.strerror(bind_error.errno) if bind_error.errno else str(bind_error)
        raise ConfigError(f"{flag} {address}: cannot listen ({reason})") from None
    return 0


def _bind_error(error: BaseException) -> OSError | None:
    """The OSError of a failed bind, unwrapped from trio's nursery groups; None if not one."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    if not isinstance(error, OSError):
        return None
    frames = traceback.extract_tb(error.__traceback__)
    binding = any(
        frame.name in ("bind", "create_server") or ".bind(" in (frame.line or "")
        for frame in frames
    )
    return error if binding else None


async def ping_node(
    identity: Identity, host: str, port: int, count: int, timeout_s: float
) -> list[float]:
    config = TransportConfig(handshake_timeout_s=timeout_s)
    round_trips = []
    async with await dial(identity, host, port, config=config) as connection:
        print(
            f"connected to {connection.peer.name} peer id {connection.peer_id} "
            f"roles {','.join(sorted(role.value for role in connection.peer.roles)) or 'none'}"
        )
        for nonce in range(count):
            start = trio.current_time()
            await connection.send(Ping(nonce))
            with trio.fail_after(timeout_s):
                reply = await connection.receive()
                while not (isinstance(reply, Pong) and reply.nonce == nonce):
                    reply = await connection.receive()
            round_trips.append(trio.current_time() - start)
            print(f"pong {nonce}: {round_trips[-1] * 1000:.2f} ms")
        await connection.send(Goodbye("ping done"))
    return round_trips


def ping(args: argparse.Namespace) -> int:
    if args.count < 1:
        raise ConfigError(f"--count must be at least 1, got {args.count}")
    if not (args.timeout > 0 and math.isfinite(args.timeout)):
        raise ConfigError(f"--timeout must be a positive number of seconds, got {args.timeout}")
    host, port = parse_host_port(args.address, field="address", default_port=DEFAULT_P2P_PORT)
    identity = identity_from_arguments(args)
    try:
        trio.run(ping_node, identity, host, port, args.count, args.timeout)
    except trio.TooSlowError:
        print(f"ping {args.address}: no answer within {args.timeout} s", file=sys.stderr)
        return 1
    except (OSError, RemoteProtocolError, trio.BrokenResourceError, trio.EndOfChannel) as error:
        print(f"ping {args.address}: {_reason(error)}", file=sys.stderr)
        return 1
    return 0


def _reason(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    if isinstance(error, trio.BrokenResourceError):
        return "connection broken (the node refused our certificate?)"
    if isinstance(error, trio.EndOfChannel):
        return "the node closed the connection"
    return str(error)


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="swarm-node", description="Run a swarmlearn node (one per host).")
    add_node_arguments(parser)
    args = parser.parse_args(argv)
    return run_command(run, args, "swarm-node")


if __name__ == "__main__":
    sys.exit(main())

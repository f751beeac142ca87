"""``swarmlearn dashboard``: its options, where the node API is, and one-line errors.

The API address comes from ``--api HOST:PORT``, else from an SWCI context (``--context NAME``,
or the active one; ``swarmlearn.swci.contexts``), else 127.0.0.1:30304. Each identity option
(``--cert/--key/--cacert/--capath``) given wins over the context's identity, which wins over
the ``SWARM_ID_*`` variables.
"""

from __future__ import annotations

import argparse
import errno
import os
import socket

import trio

from swarmlearn.errors import ConfigError
from swarmlearn.p2p import identity as ident
from swarmlearn.p2p.address import parse_host_port
from swarmlearn.roles.api.server import DEFAULT_API_PORT


def add_dashboard_arguments(parser: argparse.ArgumentParser) -> None:
    from swarmlearn.cli.common import add_identity_arguments
    from swarmlearn.dashboard.server import DEFAULT_PORT

    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--context", metavar="NAME", help="the SWCI context naming the node API (default: active)"
    )
    where.add_argument(
        "--api",
        metavar="HOST:PORT",
        help=f"the node API to watch (default: the active SWCI context, else "
        f"127.0.0.1:{DEFAULT_API_PORT})",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"serve the dashboard on 127.0.0.1:PORT (default {DEFAULT_PORT}; 0: any free port)",
    )
    add_identity_arguments(parser)


def _where(args: argparse.Namespace) -> tuple[str, int, ident.IdentityPaths | None]:
    """The API from --api, else the named (or the active) SWCI context, else the default."""
    from swarmlearn.swci.contexts import load_context, load_contexts

    if args.api is not None:
        host, port = parse_host_port(args.api, field="--api", default_port=DEFAULT_API_PORT)
        return host, port, None
    if args.context is None and load_contexts().active is None:
        return "127.0.0.1", DEFAULT_API_PORT, None
    context = load_context(args.context)
    has_identity = None not in (context.cert, context.key, context.cacert)
    return context.host, context.port, context.identity_paths() if has_identity else None


def resolve(args: argparse.Namespace) -> tuple[str, int, ident.Identity]:
    """The API's host and port, and the operator's identity; one ConfigError line if wrong.

    Each identity option given wins over the context's, which wins over ``SWARM_ID_*``."""
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port: expected 0..65535, got {args.port}")
    host, port, context = _where(args)
    cacert = args.cacert or (None if context is None or args.capath else context.ca)
    paths = ident.identity_paths_from_env(
        os.environ,
        cert=args.cert or (context.cert if context else None),
        key=args.key or (context.key if context else None),
        cacert=cacert,
        capath=args.capath,
    )
    return host, port, ident.load_identity(paths)


def run(args: argparse.Namespace) -> int:
    from swarmlearn.dashboard.server import run_dashboard
    from swarmlearn.dashboard.upstream import Upstream

    host, port, identity = resolve(args)
    if args.port and not _port_free(args.port):
        raise ConfigError(_IN_USE.format(port=args.port))
    upstream = Upstream(identity, host, port)
    try:
        trio.run(run_dashboard, upstream, args.port, lambda line: print(line, flush=True))
    except (OSError, BaseExceptionGroup) as error:  # Hypercorn binds inside its nurseries
        if _port_in_use(error):
            raise ConfigError(_IN_USE.format(port=args.port)) from None
        raise
    return 0


_IN_USE = "--port {port}: 127.0.0.1:{port} is in use; choose another port (0: any free one)"


def _port_free(port: int) -> bool:
    """Whether 127.0.0.1:``port`` can be bound now (as Hypercorn will, with SO_REUSEADDR)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                return False
            raise
    return True


def _port_in_use(error: BaseException) -> bool:
    if isinstance(error, BaseExceptionGroup):
        return any(_port_in_use(inner) for inner in error.exceptions)
    return isinstance(error, OSError) and error.errno == errno.EADDRINUSE

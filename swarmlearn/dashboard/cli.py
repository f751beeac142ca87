"""``swarmlearn dashboard``: its options, where the node API is, and one-line errors.

The API address comes from ``--api HOST:PORT`` or from an SWCI context (``--context NAME``,
``swarmlearn.swci.contexts``), the identity from ``--cert/--key/--cacert`` or the
``SWARM_ID_*`` variables, as for every other command.
"""

from __future__ import annotations

import argparse
import errno
import os
from pathlib import Path
from typing import Any

import trio

from swarmlearn.errors import ConfigError
from swarmlearn.p2p import identity as ident
from swarmlearn.p2p.address import parse_host_port
from swarmlearn.roles.api import DEFAULT_API_PORT


def add_dashboard_arguments(parser: argparse.ArgumentParser) -> None:
    from swarmlearn.cli import add_identity_arguments
    from swarmlearn.dashboard.server import DEFAULT_PORT

    where = parser.add_mutually_exclusive_group()
    where.add_argument("--context", metavar="NAME", help="the SWCI context naming the node API")
    where.add_argument(
        "--api",
        metavar="HOST:PORT",
        help=f"the node API to watch (default 127.0.0.1:{DEFAULT_API_PORT})",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"serve the dashboard on 127.0.0.1:PORT (default {DEFAULT_PORT}; 0: any free port)",
    )
    add_identity_arguments(parser)


def _from_context(name: str) -> tuple[str, int, ident.IdentityPaths | None]:
    try:
        from swarmlearn.swci import contexts  # type: ignore[attr-defined,unused-ignore]
    except ImportError:
        raise ConfigError(
            f"--context {name}: SWCI contexts are not available in this build; "
            "give the node API with --api HOST:PORT"
        ) from None
    context: Any = contexts.load_context(name)
    paths = getattr(context, "identity", None)
    if not isinstance(paths, ident.IdentityPaths):
        cert, key = getattr(context, "cert", None), getattr(context, "key", None)
        ca = getattr(context, "cacert", None) or getattr(context, "ca", None)
        paths = (
            ident.IdentityPaths(Path(cert), Path(key), Path(ca)) if cert and key and ca else None
        )
    return str(context.host), int(context.port), paths


def resolve(args: argparse.Namespace) -> tuple[str, int, ident.Identity]:
    """The API's host and port, and the operator's identity; one ConfigError line if wrong."""
    paths = None
    if args.context is not None:
        host, port, paths = _from_context(args.context)
    else:
        host, port = parse_host_port(
            args.api or f"127.0.0.1:{DEFAULT_API_PORT}",
            field="--api",
            default_port=DEFAULT_API_PORT,
        )
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port: expected 0..65535, got {args.port}")
    explicit = any(getattr(args, k) is not None for k in ("cert", "key", "cacert", "capath"))
    if paths is None or explicit:
        paths = ident.identity_paths_from_env(
            os.environ, cert=args.cert, key=args.key, cacert=args.cacert, capath=args.capath
        )
    return host, port, ident.load_identity(paths)


def run(args: argparse.Namespace) -> int:
    from swarmlearn.dashboard.server import run_dashboard
    from swarmlearn.dashboard.upstream import Upstream

    host, port, identity = resolve(args)
    upstream = Upstream(identity, host, port)
    try:
        trio.run(run_dashboard, upstream, args.port, lambda line: print(line, flush=True))
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"--port {args.port}: 127.0.0.1:{args.port} is in use; choose another port "
                "(0: any free one)"
            ) from None
        raise
    return 0

"""What every command-line entry point shares: one-line usage errors, identity options, and
running a command so that a user's mistake is one line on stderr, never a traceback.

Every entry point (``swarmlearn``, ``swarm-node``, ``swci``, the callback's embedded node)
imports this module, and this module imports no entry point: that is what keeps the CLI free
of import circles.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from swarmlearn.errors import ConfigError
from swarmlearn.p2p import identity as ident

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

Command = Callable[[argparse.Namespace], int]


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the full usage is one ``--help`` away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_identity_arguments(parser: argparse.ArgumentParser) -> None:
    """HPE's identity options; each falls back to its ``SWARM_ID_*`` environment variable."""
    group = parser.add_argument_group("identity (default: SWARM_ID_* environment variables)")
    group.add_argument("--cert", type=Path, help="this node's certificate (PEM) [SWARM_ID_CERT]")
    group.add_argument("--key", type=Path, help="this node's private key (PEM) [SWARM_ID_KEY]")
    group.add_argument("--cacert", type=Path, help="CA certificate file (PEM) [SWARM_ID_CACERT]")
    group.add_argument("--capath", type=Path, help="directory of CA certificates [SWARM_ID_CAPATH]")


def identity_from_arguments(args: argparse.Namespace) -> ident.Identity:
    paths = ident.identity_paths_from_env(
        os.environ, cert=args.cert, key=args.key, cacert=args.cacert, capath=args.capath
    )
    return ident.load_identity(paths)


def run_command(command: Command, args: argparse.Namespace, prog: str) -> int:
    """Run a parsed command; user errors become one line on stderr."""
    try:
        return command(args)
    except ConfigError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED

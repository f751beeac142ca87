"""``swarmlearn ci`` / ``swci``: the REPL, script mode (HPE's init script) and one-shot commands.

``swci LIST NODES`` runs the words after the options as one command. ``--script FILE`` runs a
file of commands (blank lines and ``#`` comments skipped), then exits, or stays at the prompt
with ``--interactive``. Without either, a terminal gets the REPL (prompt ``SWCI:<n> >``,
history in the config directory, tab completion of keywords via the stdlib ``readline``) and
anything else is read as a script from stdin.

Output: text for people, or with ``--json`` one JSON document per command on stdout
(``{"command", "ok", "result"}`` or ``{"command", "ok": false, "status", "error"}``); errors
also go to stderr as one line. Exit status: 0 every command succeeded, 1 a command failed,
2 a bad command or a usage mistake (the worst seen; EXIT ON FAILURE stops at the first).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from swarmlearn.errors import ConfigError, SwarmlearnError
from swarmlearn.p2p.identity import IdentityPaths, identity_paths_from_env
from swarmlearn.swci.client import CommandFailed
from swarmlearn.swci.contexts import HISTORY_FILE
from swarmlearn.swci.grammar import completions, parse, split_words
from swarmlearn.swci.runtime import Session, execute

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
HISTORY_LINES = 1000


def add_ci_arguments(parser: argparse.ArgumentParser) -> None:
    from swarmlearn.cli.common import add_identity_arguments

    parser.add_argument("--script", type=Path, metavar="FILE", help="run the commands in FILE")
    parser.add_argument(
        "--interactive", action="store_true", help="after --script, stay at the prompt"
    )
    parser.add_argument("--json", action="store_true", help="one JSON document per command")
    parser.add_argument("--context", metavar="NAME", help="use this context, not the active one")
    add_identity_arguments(parser)
    parser.add_argument(
        "words", nargs=argparse.REMAINDER, metavar="COMMAND", help="one command, e.g. LIST NODES"
    )


def _identity(args: argparse.Namespace) -> IdentityPaths | None:
    """The identity new contexts record: --cert etc., else SWARM_ID_*; None if none is set."""
    given = [args.cert, args.key, args.cacert, args.capath]
    names = ("SWARM_ID_CERT", "SWARM_ID_KEY", "SWARM_ID_CACERT", "SWARM_ID_CAPATH")
    if not any(given) and not any(os.environ.get(name, "").strip() for name in names):
        return None
    return identity_paths_from_env(
        os.environ, cert=args.cert, key=args.key, cacert=args.cacert, capath=args.capath
    )


@dataclass
class Frontend:
    """Runs lines through a session and prints their results; remembers the worst status."""

    session: Session
    as_json: bool = False
    echo: bool = False  # show each script line as if typed at the prompt
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)
    count: int = 0
    worst: int = EXIT_OK

    def prompt(self) -> str:
        return f"SWCI:{self.count} > "

    def run_line(self, line: str) -> tuple[int, bool]:
        """(status, stop): run one line; stop after EXIT or a failure under EXIT ON FAILURE."""
        text = line.strip()
        if not text or text.startswith("#"):
            return EXIT_OK, False
        if self.echo and not self.as_json:
            print(f"{self.prompt()}{text}", file=self.out, flush=True)
        self.count += 1
        try:
            result = execute(self.session, parse(text))
        except CommandFailed as error:
            return self._failed(text, EXIT_FAILED, str(error))
        except SwarmlearnError as error:  # ConfigError and ParseError: the user's mistake
            return self._failed(text, EXIT_USAGE, str(error))
        except OSError as error:
            return self._failed(text, EXIT_FAILED, f"{error.strerror or error}")
        if self.as_json:
            document = {"command": text, "ok": True, "result": result.doc}
            print(json.dumps(document), file=self.out, flush=True)
        elif result.text:
            print(result.text, file=self.out, flush=True)
        return EXIT_OK, result.exit

    def _failed(self, text: str, status: int, message: str) -> tuple[int, bool]:
        self.worst = max(self.worst, status)
        if self.as_json:
            document = {"command": text, "ok": False, "status": status, "error": message}
            print(json.dumps(document), file=self.out, flush=True)
        print(f"error: {message}", file=self.err, flush=True)
        return status, self.session.exit_on_failure

    def run_lines(self, lines: Iterable[str]) -> tuple[int, bool]:
        """Run lines until EXIT or EXIT ON FAILURE stops them: (status, stopped)."""
        for line in lines:
            status, stop = self.run_line(line)
            if stop:
                return (status if status else self.worst), True
        return self.worst, False


def run(args: argparse.Namespace) -> int:
    session = Session(identity=_identity(args), context=args.context)
    frontend = Frontend(session, as_json=args.json)
    try:
        if args.words:
            if args.script is not None:
                raise ConfigError("give either --script FILE or a command, not both")
            line = " ".join(shlex.quote(word) for word in args.words)
            status, _ = frontend.run_line(line)
            return status
        if args.script is not None:
            frontend.echo = True
            status, stopped = frontend.run_lines(_script_lines(args.script))
            if stopped or not args.interactive:
                return status
        if sys.stdin.isatty():
            return repl(frontend)
        frontend.echo = args.script is None and not args.json
        return frontend.run_lines(sys.stdin)[0]
    finally:
        session.close()


def _script_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise ConfigError(f"--script {path}: cannot read: {error.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"--script {path}: not UTF-8 text") from None


def repl(frontend: Frontend) -> int:
    """The interactive prompt: history and completion when readline is available."""
    history = _setup_readline(frontend.session.directory / HISTORY_FILE)
    try:
        while True:
            try:
                line = input(frontend.prompt())
            except EOFError:
                print(file=frontend.out)
                return frontend.worst
            except KeyboardInterrupt:
                print(file=frontend.out)
                continue
            try:
                status, stop = frontend.run_line(line)
            except KeyboardInterrupt:  # Ctrl-C stops a command (a WAIT), not the session
                print("\ninterrupted", file=frontend.err)
                continue
            if stop:
                return status or frontend.worst
    finally:
        if history is not None:
            history()


def _setup_readline(history_path: Path) -> Callable[[], None] | None:
    """Load the history and bind tab completion; a callable that saves the history."""
    try:
        import readline
    except ImportError:  # not every Python has it: the prompt still works, without them
        return None
    with contextlib.suppress(OSError):
        readline.read_history_file(history_path)
    readline.set_history_length(HISTORY_LINES)

    def complete(prefix: str, state: int) -> str | None:
        before = readline.get_line_buffer()[: readline.get_begidx()]
        try:
            words = split_words(before)
        except ConfigError:
            return None
        found = completions(words, prefix)
        return found[state] + " " if state < len(found) else None

    readline.set_completer(complete)
    readline.set_completer_delims(" \t")
    readline.parse_and_bind("tab: complete")

    def save() -> None:
        with contextlib.suppress(OSError):
            history_path.parent.mkdir(parents=True, exist_ok=True)
            readline.write_history_file(history_path)

    return save


def main(argv: Sequence[str] | None = None) -> int:
    """The ``swci`` command."""
    from swarmlearn.cli.common import ArgumentParser, run_command

    parser = ArgumentParser(
        prog="swci",
        description="Swarm command interface: HPE's SWCI commands against a swarm node's API.",
    )
    add_ci_arguments(parser)
    args = parser.parse_args(argv)
    return run_command(run, args, "swci")


if __name__ == "__main__":
    sys.exit(main())

"""SWCI contexts: which swarm node API to talk to, as whom, remembered between sessions.

A context (HPE's word) names one SN's node API (host and port, default 30304), the operator
identity used to reach it (certificate, key and CA paths, taken at creation from --cert/--key/
--cacert or the ``SWARM_ID_*`` variables) and free-form environment variables. Exactly one is
active. They live in ``$XDG_CONFIG_HOME/swarmlearn/contexts.json`` (default
``~/.config/swarmlearn/``), written atomically (a temporary file renamed over the old one).

Other tools use :func:`load_context` (``swarmlearn dashboard --context NAME``).
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from swarmlearn.errors import ConfigError
from swarmlearn.p2p.identity import IdentityPaths

DEFAULT_API_PORT = 30304
CONTEXTS_FILE = "contexts.json"
HISTORY_FILE = "swci_history"
FORMAT_VERSION = 1


def config_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CONFIG_HOME/swarmlearn``, else ``~/.config/swarmlearn``."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_CONFIG_HOME", "").strip()
    root = Path(base) if base else Path(env.get("HOME") or Path.home()) / ".config"
    return root / "swarmlearn"


@dataclass(frozen=True)
class Context:
    """One swarm node API and the identity that reaches it."""

    name: str
    host: str
    port: int = DEFAULT_API_PORT
    env: Mapping[str, str] = field(default_factory=dict)
    cert: Path | None = None
    key: Path | None = None
    cacert: Path | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}"

    def identity_paths(self) -> IdentityPaths:
        """The identity this context was created with; one clear line if it has none."""
        given = (("cert", self.cert), ("key", self.key), ("cacert", self.cacert))
        missing = [name for name, path in given if path is None]
        if missing:
            raise ConfigError(
                f"context {self.name!r} has no {', '.join(missing)}: give --cert/--key/--cacert "
                "(or set SWARM_ID_CERT/SWARM_ID_KEY/SWARM_ID_CACERT), or recreate the context so"
            )
        assert self.cert is not None
        assert self.key is not None
        assert self.cacert is not None
        return IdentityPaths(self.cert, self.key, self.cacert)

    def to_json(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "port": self.port,
            "env": dict(sorted(self.env.items())),
            "cert": None if self.cert is None else str(self.cert),
            "key": None if self.key is None else str(self.key),
            "cacert": None if self.cacert is None else str(self.cacert),
        }

    @classmethod
    def from_json(cls, name: str, data: Any, where: Path) -> Context:
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: context {name!r} must be an object")
        host, port, env = data.get("host"), data.get("port", DEFAULT_API_PORT), data.get("env", {})
        if not isinstance(host, str) or not host:
            raise ConfigError(f"{where}: context {name!r}: host must be a non-empty string")
        if not isinstance(port, int) or not 0 < port < 65536:
            raise ConfigError(f"{where}: context {name!r}: port must be 1..65535")
        if not isinstance(env, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in env.items()
        ):
            raise ConfigError(f"{where}: context {name!r}: env must map strings to strings")
        paths: dict[str, Path | None] = {}
        for key in ("cert", "key", "cacert"):
            value = data.get(key)
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"{where}: context {name!r}: {key} must be a path or null")
            paths[key] = Path(value) if value else None
        return cls(name, host, port, dict(env), paths["cert"], paths["key"], paths["cacert"])


@dataclass(frozen=True)
class Contexts:
    """Every context and which one is active (immutable: changes return a new value)."""

    contexts: Mapping[str, Context] = field(default_factory=dict)
    active: str | None = None

    def get(self, name: str | None) -> Context:
        """The named context (None: the active one); a ConfigError that says what exists."""
        if name is None:
            if self.active is None:
                raise ConfigError(
                    "no active context: CREATE CONTEXT name WITH IP ip, then SWITCH CONTEXT name"
                )
            name = self.active
        found = self.contexts.get(name)
        if found is None:
            raise ConfigError(f"no context {name!r}{_known(name, sorted(self.contexts))}")
        return found

    def with_context(self, context: Context) -> Contexts:
        contexts = {**self.contexts, context.name: context}
        return Contexts(contexts, self.active if self.active is not None else context.name)

    def switched(self, name: str) -> Contexts:
        self.get(name)
        return Contexts(self.contexts, name)

    def with_env(self, name: str, variable: str, value: str) -> Contexts:
        context = self.get(name)
        changed = replace(context, env={**context.env, variable: value})
        return Contexts({**self.contexts, name: changed}, self.active)


def _known(name: str, names: list[str]) -> str:
    if not names:
        return " (there are no contexts yet: CREATE CONTEXT name WITH IP ip)"
    close = difflib.get_close_matches(name, names, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{hint} (known: {', '.join(names)})"


def contexts_path(directory: Path | None = None) -> Path:
    return (directory if directory is not None else config_dir()) / CONTEXTS_FILE


def load_contexts(directory: Path | None = None) -> Contexts:
    """The saved contexts (none yet: an empty set); a ConfigError naming a damaged file."""
    path = contexts_path(directory)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Contexts()
    except OSError as error:
        raise ConfigError(f"{path}: cannot read: {error.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path}: not valid JSON ({error.msg} at line {error.lineno})") from None
    if not isinstance(data, dict) or not isinstance(data.get("contexts", {}), dict):
        raise ConfigError(f"{path}: expected an object with a 'contexts' object")
    contexts = {
        name: Context.from_json(name, value, path)
        for name, value in sorted(data.get("contexts", {}).items())
    }
    active = data.get("active")
    if active is not None and active not in contexts:
        raise ConfigError(f"{path}: active context {active!r} is not one of the contexts")
    return Contexts(contexts, active)


def save_contexts(contexts: Contexts, directory: Path | None = None) -> Path:
    """Write atomically (temporary file, fsync, rename); the file is readable by its owner only."""
    path = contexts_path(directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "version": FORMAT_VERSION,
        "active": contexts.active,
        "contexts": {name: c.to_json() for name, c in sorted(contexts.contexts.items())},
    }
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as out:
        json.dump(document, out, indent=2)
        out.write("\n")
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)
    return path


def load_context(name: str | None, directory: Path | None = None) -> Context:
    """The saved context ``name`` (None: the active one), or a one-line ConfigError."""
    return load_contexts(directory).get(name)

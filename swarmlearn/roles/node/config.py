"""The swarm-node configuration: command-line flags, a TOML file, defaults, in that order.

``swarm-node --config node.toml`` reads keys named like the flags (``listen``, ``data-dir``,
``sentinel``, ``bootstrap``, ``sentinel-ip``, ``sentinel-port``, ``chain-id``, ``advertise``,
``lane-port``, ``api``, ``log-level``, ``log-format``, ``cert``, ``key``, ``cacert``, ``capath``,
``swop-profile``, ``leave-on-exit``; ``_`` may stand for ``-``). A flag given on the
command line wins over the file; the file wins over the defaults. HPE's names are accepted:
``--data-dir``, ``--sentinel-ip`` with ``--sentinel-port`` (the node to bootstrap from), and
the ``SWARM_ID_*`` identity variables. ``log-format`` (text or json) falls back to
``SWARM_LOG_FORMAT`` when neither the flag nor the file sets it.
Every mistake is one line naming the key or flag and what is valid.

```toml
# /etc/swarm/node.toml
listen = "10.0.0.6:30303"
data-dir = "/var/lib/swarm"
sentinel-ip = "10.0.0.5"
cert = "/etc/swarm/node-2.pem"
key = "/etc/swarm/node-2-key.pem"
cacert = "/etc/swarm/ca.pem"
```
"""

from __future__ import annotations

import argparse
import os
import tomllib
from pathlib import Path
from typing import Any

from swarmlearn.errors import ConfigError

DEFAULTS: dict[str, Any] = {
    "listen": "127.0.0.1:30303",
    "data": Path("swarm-data"),
    "api": "127.0.0.1:30304",
    "log_level": "info",
}
STRINGS = (
    "listen",
    "bootstrap",
    "sentinel_ip",
    "chain_id",
    "advertise",
    "api",
    "log_level",
    "log_format",
)
PATHS = ("data", "cert", "key", "cacert", "capath", "swop_profile")
KEYS = {
    **{
        name.replace("_", "-"): name
        for name in (*STRINGS, *PATHS, "sentinel", "sentinel_port", "lane_port", "leave_on_exit")
    },
    "data-dir": "data",
}
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
LOG_FORMAT_ENV = "SWARM_LOG_FORMAT"


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="a TOML file of these settings (flags win)")
    parser.add_argument(
        "--sentinel-ip", metavar="HOST", help="HPE's name: bootstrap from this host"
    )
    parser.add_argument(
        "--sentinel-port", type=int, metavar="PORT", help="with --sentinel-ip (default 30303)"
    )


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    """Fill what the command line left unset from ``--config``, then from the defaults."""
    from_file = _read(args.config) if args.config is not None else {}
    for name, value in from_file.items():
        if getattr(args, name, None) in (None, False):
            setattr(args, name, value)
    for name, value in DEFAULTS.items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)
    if args.log_level not in LOG_LEVELS:
        raise ConfigError(f"log-level {args.log_level!r} is not one of: {', '.join(LOG_LEVELS)}")
    args.log_format = _log_format(getattr(args, "log_format", None))
    if args.sentinel_ip is not None:
        if args.bootstrap is not None:
            raise ConfigError("--sentinel-ip and --bootstrap name the same thing: give one")
        args.bootstrap = f"{args.sentinel_ip}:{args.sentinel_port or 30303}"
    elif args.sentinel_port is not None:
        raise ConfigError("--sentinel-port needs --sentinel-ip")
    return args


def _log_format(given: str | None) -> str:
    """The flag's or file's value, else ``SWARM_LOG_FORMAT``'s, else text; checked."""
    source, value = "log-format", given
    if value is None and os.environ.get(LOG_FORMAT_ENV):
        source, value = LOG_FORMAT_ENV, os.environ[LOG_FORMAT_ENV]
    if value is None:
        return "text"
    if value not in LOG_FORMATS:
        raise ConfigError(f"{source} {value!r} is not one of: {', '.join(LOG_FORMATS)}")
    return value


def _read(path: Path) -> dict[str, Any]:
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config {path}: file does not exist") from None
    except OSError as error:
        raise ConfigError(f"config {path}: cannot be read ({error.strerror})") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config {path}: not valid TOML ({error})") from None
    settings: dict[str, Any] = {}
    for key, value in raw.items():
        name = KEYS.get(key.replace("_", "-"))
        if name is None:
            raise ConfigError(
                f"config {path}: unknown key {key!r}; valid: {', '.join(sorted(KEYS))}"
            )
        settings[name] = _checked(path, key, name, value)
    return settings


def _checked(path: Path, key: str, name: str, value: Any) -> Any:
    if name in ("sentinel", "leave_on_exit"):
        if type(value) is not bool:
            raise ConfigError(f"config {path}: {key} must be true or false")
        return value
    if name == "sentinel_port":
        if type(value) is not int or not 0 < value < 65536:
            raise ConfigError(f"config {path}: {key} must be a port number (1..65535)")
        return value
    if name == "lane_port":
        if value == "none":
            return value  # lanes on the listen port
        if type(value) is not int or not 0 <= value < 65536:
            raise ConfigError(
                f'config {path}: {key} must be a port number (0..65535; 0: any) or "none"'
            )
        return value
    if type(value) is not str or not value:
        raise ConfigError(f"config {path}: {key} must be a non-empty string")
    return Path(value) if name in PATHS else value

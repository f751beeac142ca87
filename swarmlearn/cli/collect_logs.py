"""``swarmlearn collect-logs``: this host's node logs, config, versions and ledger in one archive.

For a bug report (HPE's ``swarmLogCollector``; run it on every host). The ``.tar.gz`` holds,
under one ``swarmlearn-logs-<host>-<time>/`` directory:

- ``logs/``: every ``*.log`` of the data directory (the SWOP's task logs, a redirected
  daemon log) except the ledger's binary ``blocks.log`` / ``wal-*.log``, and each ``--log``
  file; each file at most its last ``LOG_BYTES_MAX`` bytes;
- ``config/``: the node's TOML config and the SWOP profile, with secrets removed (values of
  keys named like ``*KEY*``, ``*PASS*``, ``*TOKEN*``, ``*SECRET*`` are redacted unless they are
  file paths; anything holding key material is redacted whatever its name);
- ``environment.json``: the swarm-related environment variables (``SWARM_*``, ``SWOP_*``,
  ``SL_*``, ``ML_*``, ``PYTHON*``, ``PATH``, ``VIRTUAL_ENV``), redacted the same way;
- ``versions.json``: Python, the platform, swarmlearn and its libraries, torch / tensorflow
  when installed (read from package metadata: nothing is imported);
- ``ledger.json``: a summary rebuilt offline from the data directory's genesis and blocks
  (chain, height, app hash, members, contracts and their latest rounds, tasks, taskrunners,
  recent refusals): it needs no running node;
- ``files.txt``: the data directory's files and sizes. Private keys are never read into it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import platform
import re
import socket
import sys
import tarfile
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from swarmlearn.errors import ConfigError, RemoteProtocolError

LOG_BYTES_MAX = 20 * 1024 * 1024
SECRET_NAME = re.compile(r"KEY|PASS|TOKEN|SECRET", re.IGNORECASE)
ENV_PREFIXES = ("SWARM_", "SWOP_", "SL_", "ML_", "PYTHON")
ENV_NAMES = ("PATH", "VIRTUAL_ENV")
PACKAGES = (
    "swarmlearn",
    "trio",
    "cryptography",
    "cbor2",
    "numpy",
    "hypercorn",
    "starlette",
    "pyyaml",
    "torch",
    "tensorflow",
    "tensorflow-cpu",
    "keras",
)
REDACTED = "<redacted>"
REFUSALS_SHOWN = 50


def add_collect_logs_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        "--data-dir",
        dest="data",
        type=Path,
        default=Path("swarm-data"),
        help="the node's data directory (default ./swarm-data)",
    )
    parser.add_argument("-o", "--output", type=Path, help="the archive (default ./NAME.tar.gz)")
    parser.add_argument("--config", type=Path, help="the node's TOML config, to include redacted")
    parser.add_argument(
        "--swop-profile", type=Path, help="the SWOP profile to include [SWOP_PROFILE]"
    )
    parser.add_argument(
        "--log", type=Path, action="append", default=[], help="another log file (repeatable)"
    )


def run(args: argparse.Namespace) -> int:
    if not args.data.is_dir():
        raise ConfigError(f"--data-dir {args.data}: not a directory")
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    name = f"swarmlearn-logs-{socket.gethostname()}-{stamp}"
    output = args.output or Path(f"{name}.tar.gz")
    profile = args.swop_profile or os.environ.get("SWOP_PROFILE")
    members = collect(args.data, args.config, Path(profile) if profile else None, args.log)
    with tarfile.open(output, "w:gz") as archive:
        for member_name, data in members.items():
            info = tarfile.TarInfo(f"{name}/{member_name}")
            info.size, info.mtime, info.mode = len(data), int(dt.datetime.now().timestamp()), 0o644
            archive.addfile(info, io.BytesIO(data))
    print(f"wrote {output} ({len(members)} files, {output.stat().st_size} bytes)")
    return 0


def collect(
    data: Path, config: Path | None, profile: Path | None, extra_logs: list[Path]
) -> dict[str, bytes]:
    """The archive's files by name (the archive itself is just their container)."""
    found: dict[str, bytes] = {
        "versions.json": _json(versions()),
        "environment.json": _json(environment(dict(os.environ))),
        "files.txt": files_listing(data).encode(),
        "ledger.json": _json(ledger_summary(data)),
    }
    for path in sorted(data.rglob("*.log")):
        relative = path.relative_to(data)
        if relative.parts[0] != "ledger" and path.is_file():
            found[f"logs/{relative}"] = _tail(path)
    for path in extra_logs:
        if not path.is_file():
            raise ConfigError(f"--log {path}: not a file")
        found[f"logs/extra/{path.name}"] = _tail(path)
    if config is not None:
        found["config/node.toml.json"] = _json(redacted_config(config))
    if profile is not None:
        found["config/swop-profile.yaml"] = redacted_profile(profile).encode()
    return found


def _json(value: Any) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True, default=str) + "\n").encode()


def _tail(path: Path) -> bytes:
    size = path.stat().st_size
    with path.open("rb") as file:
        file.seek(max(0, size - LOG_BYTES_MAX))
        data = file.read()
    return data if size <= LOG_BYTES_MAX else b"[... cut: only the last 20 MiB ...]\n" + data


def versions() -> dict[str, Any]:
    found: dict[str, Any] = {
        "python": sys.version,
        "platform": platform.platform(),
        "executable": sys.executable,
    }
    for package in PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return found


def secret(name: str, value: object) -> bool:
    """Whether a value must not leave the host: named like a secret (and not a path), or key
    material whatever its name."""
    text = str(value)
    if "PRIVATE KEY" in text:
        return True
    return bool(SECRET_NAME.search(name)) and not _looks_like_path(text)


def _looks_like_path(text: str) -> bool:
    return text.startswith(("/", "./", "../", "~")) or text.endswith((".pem", ".crt", ".key"))


def environment(env: dict[str, str]) -> dict[str, str]:
    return {
        name: REDACTED if secret(name, value) else value
        for name, value in sorted(env.items())
        if name.startswith(ENV_PREFIXES) or name in ENV_NAMES
    }


def redacted_config(path: Path) -> dict[str, Any]:
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"--config {path}: cannot be read as TOML ({error})") from None
    redacted: dict[str, Any] = _redact(raw)
    return redacted


def _redact(value: Any, name: str = "") -> Any:
    if isinstance(value, dict):
        return {key: _redact(item, str(key)) for key, item in value.items()}
    if isinstance(value, list):
        return [_redact(item, name) for item in value]
    return REDACTED if secret(name, value) else value


def redacted_profile(path: Path) -> str:
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"--swop-profile {path}: cannot be read as YAML ({error})") from None
    return str(yaml.safe_dump(_redact(raw), sort_keys=False))


def files_listing(data: Path) -> str:
    lines = []
    for path in sorted(data.rglob("*")):
        if path.is_file():
            lines.append(f"{path.stat().st_size:>12}  {path.relative_to(data)}")
    return "\n".join(lines) + "\n"


def ledger_summary(data: Path) -> dict[str, Any]:
    """The ledger's state rebuilt from the data directory alone (no running node needed)."""
    from swarmlearn.consensus.ledger.app import SwarmApp
    from swarmlearn.consensus.tendermint.events import Genesis
    from swarmlearn.consensus.tendermint.store import read_log
    from swarmlearn.p2p.wire import decode_header
    from swarmlearn.roles.api import task_views, views

    genesis_path = data / "genesis.cbor"
    if not genesis_path.exists():
        return {"error": f"no ledger in {data} (no genesis.cbor)"}
    try:
        genesis = decode_header(genesis_path.read_bytes())
        if not isinstance(genesis, Genesis):
            return {"error": f"{genesis_path}: not a genesis file"}
        records = read_log(data / "ledger" / "blocks.log") if (data / "ledger").is_dir() else []
    except (ConfigError, RemoteProtocolError, ValueError) as error:
        return {"error": f"the ledger cannot be read: {error}"}
    seated = frozenset(v.node for v in genesis.validators)
    app = SwarmApp(genesis.chain_id, genesis.ca_certificate, genesis.time_ms, seated)
    height = 0
    for block, _commit in records:
        if block.header.height == height + 1:
            app.execute_block(block)
            height = block.header.height
    return {
        "chain": genesis.chain_id,
        "height": height,
        "app_hash": app.app_hash().hex(),
        "members": views.members(app),
        "contracts": [_contract_summary(c) for c in views.contracts(app)],
        "tasks": task_views.tasks(app),
        "taskrunners": [
            task_views.runner_named(app, name) for name in sorted(app.state.tasks.runners)
        ],
        "refusals": views.refusals(app)[-REFUSALS_SHOWN:],
    }


def _contract_summary(contract: dict[str, Any]) -> dict[str, Any]:
    rounds = contract.pop("rounds")
    contract["rounds"] = len(rounds)
    contract["latest_rounds"] = rounds[-3:]
    return contract

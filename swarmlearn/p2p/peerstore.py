"""Known peer addresses kept in the node's data directory, so a restart finds the swarm again.

The file is ``<data dir>/p2p-peers.json``: ``{"version": 1, "peers": [multiaddr, ...]}``, each
address with its peer id (``/ip4/HOST/tcp/PORT/p2p/ID``). The p2p service writes it
atomically (temporary file, fsync, rename) every few seconds when it changed and when it
stops, and reads it at start: those peers are dialed beside the configured seeds, so a node
restarted without the sentinel still reconnects. Since a peer id is the hash of the peer's
key, a peer presenting another key at a stored address is refused like any other mismatch.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from swarmlearn.errors import ConfigError
from swarmlearn.p2p.certs import write_atomically
from swarmlearn.p2p.multiaddr import PeerAddress, parse_address

FILE_NAME = "p2p-peers.json"
VERSION = 1


def peers_path(data_dir: Path) -> Path:
    return data_dir / FILE_NAME


def load_peers(data_dir: Path) -> list[PeerAddress]:
    """The stored addresses (none when there is no file); a bad file is one ConfigError line."""
    path = peers_path(data_dir)
    if not path.exists():
        return []
    expected = f'expected {{"version": {VERSION}, "peers": ["/ip4/HOST/tcp/PORT/p2p/ID", ...]}}'
    try:
        document = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"{path}: unreadable ({error}); {expected}") from None
    if not isinstance(document, dict) or document.get("version") != VERSION:
        raise ConfigError(f"{path}: {expected}")
    entries = document.get("peers")
    if not isinstance(entries, list):
        raise ConfigError(f"{path}: 'peers' must be a list; {expected}")
    addresses = []
    for index, text in enumerate(entries):
        address = parse_address(text, field=f"{path}: peers[{index}]")
        if address.peer is None:
            raise ConfigError(f"{path}: peers[{index}] {text!r} has no /p2p/ID; {expected}")
        addresses.append(address)
    return addresses


def save_peers(data_dir: Path, addresses: Iterable[PeerAddress]) -> None:
    document = {"version": VERSION, "peers": sorted(str(address) for address in addresses)}
    text = json.dumps(document, indent=1) + "\n"
    write_atomically(peers_path(data_dir), text.encode(), mode=0o600, overwrite=True)

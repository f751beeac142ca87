"""Peer addresses in libp2p multiaddr form, or as users type them (``host:port``).

A :class:`PeerAddress` is where a peer listens and, when known, who it is::

    /ip4/10.0.0.5/tcp/30303/p2p/<peer id>
    /ip6/::1/tcp/30303/p2p/<peer id>
    /dns/sentinel.example/tcp/30303          (no peer id: a bootstrap address)

:func:`parse_address` accepts that form (``/dns4`` and ``/dns6`` too) or plain ``host:port``
(``[v6]:port`` for IPv6), and ``str()`` prints the multiaddr form. A peer id is its printed
form (lowercase base32 on real nodes, any ``[A-Za-z0-9._-]`` name in the simulator). A bad
address is one :class:`~swarmlearn.errors.ConfigError` line naming the field.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass
from typing import Final

from swarmlearn.errors import ConfigError
from swarmlearn.p2p.address import parse_host_port

_PEER_ID: Final = re.compile(r"[A-Za-z0-9._-]{1,128}")
_HOST_PROTOCOLS: Final = ("ip4", "ip6", "dns", "dns4", "dns6")
_EXAMPLE: Final = "expected /ip4/HOST/tcp/PORT[/p2p/PEER_ID] or HOST:PORT"


@dataclass(frozen=True, order=True)
class PeerAddress:
    """Where a peer listens (``host``, ``port``) and who it is (``peer``, None when unknown)."""

    host: str
    port: int
    peer: str | None = None

    def __post_init__(self) -> None:
        if not self.host or not 0 <= self.port <= 65535:
            raise ValueError(f"bad address {self.host!r}:{self.port}")
        if self.peer is not None and not _PEER_ID.fullmatch(self.peer):
            raise ValueError(f"bad peer id {self.peer!r}")

    def __str__(self) -> str:
        return _format(self.host, self.port, self.peer)

    def with_peer(self, peer: str | None) -> PeerAddress:
        return PeerAddress(self.host, self.port, peer)

    @property
    def host_port(self) -> str:
        """``host:port`` (``[v6]:port``), for logs and for the transport."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@functools.lru_cache(maxsize=4096)
def _format(host: str, port: int, peer: str | None) -> str:
    text = f"/{_host_protocol(host)}/{host}/tcp/{port}"
    return text if peer is None else f"{text}/p2p/{peer}"


def _host_protocol(host: str) -> str:
    try:
        version = ipaddress.ip_address(host).version
    except ValueError:
        return "dns"
    return "ip4" if version == 4 else "ip6"


def parse_address(text: str, *, field: str = "address") -> PeerAddress:
    """A multiaddr (``/ip4/../tcp/../p2p/..``) or ``host:port``; :class:`ConfigError` if neither."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"{field} {text!r}: empty; {_EXAMPLE}")
    text = text.strip()
    if not text.startswith("/"):
        host, port = parse_host_port(text, field=field)
        return PeerAddress(host, port)
    parts = text.split("/")[1:]
    if parts and parts[-1] == "":
        parts.pop()
    if len(parts) not in (4, 6) or parts[0] not in _HOST_PROTOCOLS or parts[2] != "tcp":
        raise ConfigError(f"{field} {text!r}: {_EXAMPLE}")
    protocol, host, _, port_text = parts[:4]
    _check_host(protocol, host, text, field)
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"{field} {text!r}: port {port_text!r} is not a number in 0..65535")
    peer = None
    if len(parts) == 6:
        if parts[4] != "p2p" or not _PEER_ID.fullmatch(parts[5]):
            raise ConfigError(f"{field} {text!r}: expected /p2p/PEER_ID after the port")
        peer = parts[5]
    return PeerAddress(host, int(port_text), peer)


def _check_host(protocol: str, host: str, text: str, field: str) -> None:
    if protocol.startswith("ip"):
        try:
            version: int = ipaddress.ip_address(host).version
        except ValueError:
            version = 0
        if f"ip{version}" != protocol:
            raise ConfigError(f"{field} {text!r}: {host!r} is not an IPv{protocol[2]} address")
    elif not host or any(c in host for c in " :[]"):
        raise ConfigError(f"{field} {text!r}: {host!r} is not a host name")


@functools.lru_cache(maxsize=4096)
def try_parse_address(text: str) -> PeerAddress | None:
    """:func:`parse_address`, or None for anything invalid (for addresses peers send us)."""
    try:
        return parse_address(text)
    except (ConfigError, ValueError):
        return None

"""Addresses as users type them: ``host:port``, ``[v6]:port``, or a host and a default port."""

from __future__ import annotations

from swarmlearn.errors import ConfigError


def parse_host_port(text: str, *, field: str, default_port: int | None = None) -> tuple[str, int]:
    """Split ``host:port``; a :class:`ConfigError` naming ``field`` if it is not one."""
    example = "expected HOST:PORT, e.g. 127.0.0.1:30303 or [::1]:30303"
    port_text: str | None
    if text.startswith("["):
        host, close, rest = text[1:].partition("]")
        if not close or (rest and not rest.startswith(":")):
            raise ConfigError(f"{field} {text!r}: {example}")
        port_text = rest[1:] if rest else None
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    elif ":" in text:
        raise ConfigError(f"{field} {text!r}: put an IPv6 address in brackets, e.g. [::1]:30303")
    else:
        host, port_text = text, None
    if not host:
        raise ConfigError(f"{field} {text!r}: the host is empty; {example}")
    if port_text is None:
        if default_port is None:
            raise ConfigError(f"{field} {text!r}: no port; {example}")
        return host, default_port
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"{field} {text!r}: port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"{field} {text!r}: port {port} is outside 0..65535")
    return host, port

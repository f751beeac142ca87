"""TLS contexts for swarm connections: TLS 1.3 only, certificates required both ways.

Peers are identified by the peer id of their verified certificate, not by host
name, so the client does not check host names; a dialer that knows whom it
expects compares peer ids after the handshake (see :mod:`swarmlearn.p2p.transport`).
"""

from __future__ import annotations

import ssl

from cryptography import x509

from swarmlearn.errors import RemoteProtocolError
from swarmlearn.p2p.identity import CertificateInfo, Identity, describe_certificate


def _context(identity: Identity, *, server: bool) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cadata=identity.ca_pem())
    context.load_cert_chain(certfile=identity.paths.cert, keyfile=identity.paths.key)
    return context


def server_context(identity: Identity) -> ssl.SSLContext:
    """For accepting: presents our certificate, demands and verifies the client's."""
    return _context(identity, server=True)


def client_context(identity: Identity) -> ssl.SSLContext:
    """For dialing: presents our certificate, verifies the server's chain (not its host name)."""
    return _context(identity, server=False)


def peer_certificate_info(der: bytes | None) -> CertificateInfo:
    """Who the peer is, from the DER certificate that the TLS handshake verified."""
    if not der:
        raise RemoteProtocolError("peer presented no certificate")
    try:
        return describe_certificate(x509.load_der_x509_certificate(der))
    except ValueError as error:
        raise RemoteProtocolError(f"unusable peer certificate: {error}") from None

"""SWCI's client of the node API: httpx over mutual TLS with the operator's certificate.

Reads are GETs of JSON. Writes are ledger transactions signed with the operator's key and
POSTed to ``/v1/transactions?wait=S``: the API answers once the transaction is committed (or
refused, with the ledger's reason). An operator must be a member of the ledger before it may
act, so the first write of a client checks the registry and joins by itself when needed.

A transaction type with a ``nonce`` field gets the time in ns, so that repeating a command
(RESET TASKRUNNER before and after a run) makes a new transaction, not a replay the ledger
drops. Every request has a timeout. Failures become one :class:`CommandFailed` line: the node is
unreachable, the node's certificate is not from our CA, the node rejected ours, or the API's
own reason for a 4xx answer.
"""

from __future__ import annotations

import ssl
import time
from dataclasses import replace
from typing import Any, cast

import httpx
from cryptography.hazmat.primitives.serialization import Encoding

from swarmlearn.consensus.ledger.app import sign_transaction
from swarmlearn.consensus.ledger.txs import Join
from swarmlearn.errors import SwarmlearnError
from swarmlearn.p2p.identity import Identity
from swarmlearn.p2p.tls import client_context
from swarmlearn.p2p.wire import Message

REQUEST_TIMEOUT_S = 15.0
COMMIT_WAIT_S = 30.0  # how long the API waits for a transaction to be committed


class CommandFailed(SwarmlearnError):
    """A command that was understood but did not succeed (exit status 1), in one line."""


class ApiClient:
    """One node API (``https://host:port``) as one operator identity."""

    def __init__(self, url: str, identity: Identity, timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        self.url = url
        self.identity = identity
        self.timeout_s = timeout_s
        self._http = httpx.Client(base_url=url, verify=client_context(identity), timeout=timeout_s)
        self._chain: str | None = None
        self._member = False

    def close(self) -> None:
        self._http.close()

    def get(self, path: str, **params: str) -> Any:
        """The JSON document at ``/v1/<path>``."""
        return self._json(self._request("GET", f"/v1/{path}", params=params))

    def chain_id(self) -> str:
        if self._chain is None:
            self._chain = str(self.get("status")["chain"])
        return self._chain

    def submit(self, body: Message) -> int:
        """Sign ``body``, submit it, wait until committed; the height, or CommandFailed(why)."""
        if not self._member:
            self._join_if_needed()
        return self._submit(body)

    def _join_if_needed(self) -> None:
        me = str(self.identity.peer_id)
        if not any(m.get("node") == me for m in self.get("nodes")):
            certificate = self.identity.certificate.public_bytes(Encoding.DER)
            self._submit(Join("", certificate))
        self._member = True

    def _submit(self, body: Message) -> int:
        if "nonce" in getattr(body, "__dataclass_fields__", {}) and not getattr(body, "nonce", 0):
            body = replace(cast(Any, body), nonce=time.time_ns())  # a repeat is a new tx
        tx = sign_transaction(self.identity, self.chain_id(), body)
        response = self._request(
            "POST",
            "/v1/transactions",
            params={"wait": f"{COMMIT_WAIT_S:g}"},
            content=tx,
            timeout_s=COMMIT_WAIT_S + self.timeout_s,
        )
        reply = self._json(response, allow=(422,))
        if not reply.get("accepted"):
            reason = str(reply.get("reason") or "no reason given")
            raise CommandFailed(f"the ledger refused {type(body).__name__}: {_plain(reason)}")
        return int(reply["height"])

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        content: bytes | None = None,
        timeout_s: float | None = None,
    ) -> httpx.Response:
        limit_s = timeout_s or self.timeout_s
        try:
            return self._http.request(method, path, params=params, content=content, timeout=limit_s)
        except httpx.TimeoutException:
            raise CommandFailed(
                f"no answer from the node API at {self.url} within {limit_s:g} s"
            ) from None
        except httpx.TransportError as error:
            raise CommandFailed(_transport_problem(self.url, error)) from None

    def _json(self, response: httpx.Response, allow: tuple[int, ...] = ()) -> Any:
        try:
            document = response.json()
        except ValueError:
            document = None
        if response.is_success or response.status_code in allow:
            if document is None:
                raise CommandFailed(f"{response.url}: the node API answered with no JSON")
            return document
        reason = ""
        if isinstance(document, dict):
            reason = str(document.get("error") or document.get("reason") or "")
        raise CommandFailed(reason or f"{response.url}: HTTP {response.status_code}")


def _plain(reason: str) -> str:
    if reason == "already committed":  # the mempool's replay protection: same bytes, same tx
        return (
            "an identical transaction is already on the ledger "
            "(the same command with the same arguments cannot be committed twice)"
        )
    return reason.removeprefix("refused: ")


def _transport_problem(url: str, error: httpx.TransportError) -> str:
    """One line for what went wrong below HTTP."""
    text = str(error) or type(error).__name__
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return (
                f"the node at {url} presented a certificate that your CA does not trust "
                f"(check the context's cacert): {cause.verify_message}"
            )
        if isinstance(cause, ConnectionRefusedError):
            return f"cannot reach the node API at {url}: connection refused (is --api on?)"
        cause = cause.__cause__ or cause.__context__
    lowered = text.lower()
    if isinstance(error, (httpx.RemoteProtocolError, httpx.ReadError)) and "disconnect" in lowered:
        # TLS 1.3: the client's certificate is checked after our side of the handshake, and
        # a server that refuses it just hangs up
        return (
            f"the node at {url} hung up without answering: it most likely rejected your "
            "certificate (is it issued by this swarm's CA?)"
        )
    if "certificate_verify_failed" in lowered:
        return f"the node at {url} presented a certificate that your CA does not trust: {text}"
    if "alert" in lowered or "certificate" in lowered:
        return f"the node at {url} rejected your certificate (is it from this swarm's CA?): {text}"
    return f"cannot reach the node API at {url}: {text}"

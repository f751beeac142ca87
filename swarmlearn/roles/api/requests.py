"""One request to a node and its reply over mutual TLS, and what to tell a user when it fails.

:func:`ask` dials the node (``p2p.transport.dial``), sends one message and returns the first
reply of the expected type, all within ``REQUEST_TIMEOUT_S``. ``NETWORK_ERRORS`` are the
exceptions a request to an unreachable, refusing or silent node raises; :func:`network_reason`
turns one into a line for the user (trio's stream errors carry no text of their own).
"""

from __future__ import annotations

from typing import TypeVar

import trio

from swarmlearn.errors import RemoteProtocolError
from swarmlearn.p2p.identity import Identity
from swarmlearn.p2p.transport import dial
from swarmlearn.p2p.wire import Message

REQUEST_TIMEOUT_S = 30.0
NETWORK_ERRORS = (
    OSError,
    RemoteProtocolError,
    trio.BrokenResourceError,
    trio.EndOfChannel,
    trio.TooSlowError,
)
M = TypeVar("M", bound=Message)


def network_reason(error: BaseException) -> str:
    """Why a request to a node failed, never empty (trio's stream errors carry no text)."""
    if isinstance(error, trio.BrokenResourceError) and (
        not str(error) or isinstance(error.__cause__, ConnectionResetError)
    ):  # a TLS 1.3 client learns of a refused certificate as either, depending on timing
        return "connection broken (the node refused our certificate?)"
    if isinstance(error, trio.EndOfChannel):
        return "the node closed the connection"
    if isinstance(error, trio.TooSlowError):
        return f"no answer within {REQUEST_TIMEOUT_S:g} s"
    return str(error) or type(error).__name__


async def ask(identity: Identity, host: str, port: int, request: Message, reply_type: type[M]) -> M:
    """One request to a node's API and its reply, within ``REQUEST_TIMEOUT_S``."""
    with trio.fail_after(REQUEST_TIMEOUT_S):
        async with await dial(identity, host, port) as connection:
            await connection.send(request)
            while True:
                reply = await connection.receive()
                if isinstance(reply, reply_type):
                    return reply

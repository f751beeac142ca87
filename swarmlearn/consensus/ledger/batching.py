"""Which swarm transactions are worth a proposer's short wait: the rest of a round's batch.

Theory of operation
-------------------
The ledger starts a height as soon as a transaction waits (``create_empty_blocks`` off). In a
sync round every participant submits one transaction at nearly the same moment (its
``CheckIn``, later its ``Merged``), each from its own node; the first one to reach the
proposer would otherwise go into a block alone, and the others, arriving while that height
is in flight, would wait a whole height more. The round closes (or is done) only with the
last of them, so that extra height was the round's.

:func:`expects_more` tells the proposer (``ConsensusCore``'s ``awaits`` hook) whether the
mempool holds part of such a batch whose rest is due: check-ins for a round that not every
active learner has checked in to (counting those on the ledger and those waiting), or
``Merged`` reports of an attempt whose other participants have not all reported. The
proposer then waits for the rest, at most ``batch_wait_s``, and proposes at once when the
last arrives. Blocks without such a transaction (an empty "proof" block) are never held.
``bench/ledger_hold.py`` measures the hold off and on.

Nothing here changes what is valid: it only picks the moment of a proposal, which is the
proposer's freedom in Tendermint (a late proposal costs the others nothing but their propose
timeout, which is far longer). The cost of a wrong guess (a member that never sends its
part) is one ``batch_wait_s`` per height while the batch is incomplete.
"""

from __future__ import annotations

from collections.abc import Sequence

from swarmlearn.consensus.ledger.app import SwarmApp
from swarmlearn.consensus.ledger.rounds import RoundStatus
from swarmlearn.consensus.ledger.txs import CheckIn, Merged, SignedTx
from swarmlearn.errors import RemoteProtocolError
from swarmlearn.p2p.wire import decode_header

#: With more waiting than this, a block has enough work already: propose, don't inspect.
PENDING_INSPECTED_MAX = 64

CheckInKey = tuple[str, int]  # (contract, round)
MergedKey = tuple[str, int, int]  # (contract, round, attempt)


def _decode(tx: bytes) -> tuple[str, object] | None:
    try:
        signed = decode_header(tx)
        if not isinstance(signed, SignedTx):
            return None
        return signed.sender, signed.decoded_body()
    except RemoteProtocolError:
        return None


def expects_more(app: SwarmApp, pending: Sequence[bytes]) -> bool:
    """True when ``pending`` (the mempool, oldest first) holds part of a round's batch whose
    rest (counting what the ledger already has) has yet to arrive."""
    if len(pending) > PENDING_INSPECTED_MAX:
        return False
    checkins: dict[CheckInKey, set[str]] = {}
    merged: dict[MergedKey, set[str]] = {}
    for tx in pending:
        found = _decode(tx)
        if found is None:
            continue
        sender, body = found
        if isinstance(body, CheckIn):
            checkins.setdefault((body.contract, body.round), set()).add(sender)
        elif isinstance(body, Merged):
            merged.setdefault((body.contract, body.round, body.attempt), set()).add(sender)
    return any(_checkins_missing(app, k, s) for k, s in checkins.items()) or any(
        _merged_missing(app, k, s) for k, s in merged.items()
    )


def _checkins_missing(app: SwarmApp, key: CheckInKey, senders: set[str]) -> bool:
    contract = app.state.contracts.get(key[0])
    if contract is None or contract.next_round_number() != key[1]:
        return False  # refused when executed: nothing to wait for
    round_ = contract.rounds.get(key[1])
    have = senders | set(round_.checkins if round_ is not None else ())
    return len(have) < app._active_learners()


def _merged_missing(app: SwarmApp, key: MergedKey, senders: set[str]) -> bool:
    contract = app.state.contracts.get(key[0])
    round_ = contract.rounds.get(key[1]) if contract is not None else None
    if round_ is None or round_.status != RoundStatus.EXCHANGING or round_.attempt != key[2]:
        return False
    have = (senders | set(round_.merged)) & set(round_.participants)
    return len(have) < len(round_.participants)

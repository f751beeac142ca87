"""The SL round core's timer tags: what each ``SetTimer`` of :mod:`swarmlearn.roles.sl.core`
is for, and so which part handles it when it comes back as ``TimerFired``.

Each tag is a frozen dataclass (hashable: the drivers key their timers by it, and a timer set
again with an equal tag replaces the old one); tags of different kinds never compare equal.
Every kind derives from :class:`SLTimer` (all but one from :class:`RoundTimer`): the node
routes a fired timer to the SL core by that type (:mod:`swarmlearn.roles.node.core`), and
the core to the part that set it. A tag names the round it is for and, where timers of one
kind run in turn, the try or attempt it belongs to: a part drops a timer whose try or
attempt is no longer the current one (stale). The ``repr`` is the same run after run, so the
simulator's fingerprint of a seed stays one value.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SLTimer:
    """A timer of the SL round core, for one contract."""

    contract: str


@dataclass(frozen=True)
class RoundTimer(SLTimer):
    """A timer for one round of the contract."""

    round: int


# ---------------------------------------------------------------- waiting for the round to close
# (roles/sl/ends.py)


@dataclass(frozen=True)
class CheckInDue(RoundTimer):
    """``RESEND_S`` after a check-in was sent: if the ledger does not hold it yet (refused while
    the node was still joining, or lost), send it again. A timer, not the next block: a
    check-in refused on a quiet ledger may be the only transaction that would make one."""


@dataclass(frozen=True)
class ProgressDue(RoundTimer):
    """The round is still short of minPeers: tell the trainer again (``WAIT_PROGRESS_S``)."""


@dataclass(frozen=True)
class SyncTimeout(RoundTimer):
    """The trainer's syncTimeout: a round still open then fails here."""


@dataclass(frozen=True)
class CloseDue(RoundTimer):
    """The grace period after quorum is over: a heartbeat, so a block closes the round."""


# ---------------------------------------------------------------- an attempt's exchange


@dataclass(frozen=True)
class AttemptHalfway(RoundTimer):
    """Halfway to the attempt's deadline: tell the ledger this node is alive."""

    attempt: int


@dataclass(frozen=True)
class AttemptDeadline(RoundTimer):
    """The attempt's deadline (plus a margin) passed: the ledger runs its deadline rule."""

    attempt: int


@dataclass(frozen=True)
class RefillDeadline(RoundTimer):
    """The trainer did not refill its handover file for this attempt in time
    (roles/sl/refill.py)."""

    attempt: int


# ---------------------------------------------------------------- fetching merged models


@dataclass(frozen=True)
class FetchTick(RoundTimer):
    """Fetching the round's merged model (roles/sl/fetch.py): a stall period, a backoff
    between passes, or the fetch's deadline ended."""


@dataclass(frozen=True)
class LatestStall(RoundTimer):
    """A trainer's fetch of the latest model (roles/sl/latest.py; ``round`` is the round
    fetched, ``tries`` counts the fetches of the contract): its fetch's timer (a stall
    period or a backoff, roles/sl/fetch.py)."""

    tries: int


@dataclass(frozen=True)
class LatestDeadline(SLTimer):
    """A trainer's fetch of the contract's latest model ends now (its ``wait_s``)."""


# ---------------------------------------------------------------- trainer sessions
# (roles/sl/sessions.py)


@dataclass(frozen=True)
class GoneWait(RoundTimer):
    """A gone session's check-in never landed on the ledger: stop waiting for it."""


@dataclass(frozen=True)
class QueuedTimeout(RoundTimer):
    """The syncTimeout of ``session``'s weights, queued behind round ``round``."""

    session: int


# ---------------------------------------------------------------- repairing loss
# (roles/sl/repair.py)


@dataclass(frozen=True)
class RepairDue(RoundTimer):
    """The attempt has been quiet a while: ask peers again for what it still lacks."""

    attempt: int

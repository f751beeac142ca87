"""Sync rounds on the ledger: check-ins, the closing rule, attempts, agreement on the merged root.

Theory of operation (all in block time, so every validator computes the same thing)
------------------------------------------------------------------------------------
A round of a contract is OPEN while SL nodes check in (a commitment to their exact weights:
the manifest root, a weight, their ``minPeers``). Once ``min_peers`` nodes (the largest
``minPeers`` any of them asked for) have checked in, the rest get ``grace_ms``; the round
closes at the first block past that, or at once when every active SL node of the contract is
in. Closing fixes the *participants* (sorted by node id: their index is their shard of the
merge plan, which every participant computes from the layout) and an exchange deadline from
the model size (longer for the geometric median and Krum: their steps, see
``merge.methods.extra_exchange_ms``).

The round is then EXCHANGING, in *attempts*. Each participant reports its merged root
(``Merged``). When every participant of the attempt has reported: one root reported by a
strict majority makes the round DONE with that root (dissenters recorded); anything else is
FAILED. A participant may report a contributor whose chunks did not match its commitment
(``Exclude``): the attempt ends and a new one starts without it. At the deadline, if at least
``min_peers`` reported and all of them agree, the round is DONE with them (the silent ones
recorded as missing); otherwise a new attempt starts with those who showed life since the
attempt began, or the round FAILS when fewer than ``min_peers`` remain. Survivors therefore
end with the same root, or the ledger says the round failed: never a silent partial merge.

A check-in belongs to a trainer *session* at its node. While the round is OPEN, a check-in
leaves it when its session goes away (``CheckOut``) or when its ``wait_ms`` (the trainer's
syncTimeout) has passed since the block that holds it; an OPEN round left with no check-in is
*abandoned* (FAILED, "abandoned"), so a swarm started with a wrong ``minPeers`` is never stuck:
the next check-in, with any ``minPeers``, opens a fresh round. ``RESET CONTRACT`` starts the
contract over (a new ``generation``): every round of the old one ends with it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from swarmlearn.consensus.ledger.txs import CreateContract, TensorSpec
from swarmlearn.merge.methods import extra_exchange_ms

GIGABYTE = 1_000_000_000


class RoundStatus(enum.StrEnum):
    OPEN = "open"
    EXCHANGING = "exchanging"
    DONE = "done"
    FAILED = "failed"


@dataclass
class CheckInRecord:
    root: bytes
    weight: int
    min_peers: int
    time_ms: int
    final: bool = False
    session: int = 0
    expires_ms: int | None = None  # leaves the round (while it is open) at this block time
    nonce: int = 0


@dataclass
class RoundRecord:
    contract: str
    number: int
    merge_method: str
    opened_ms: int
    checkins: dict[str, CheckInRecord] = field(default_factory=dict)
    status: RoundStatus = RoundStatus.OPEN
    quorum_ms: int | None = None
    participants: tuple[str, ...] = ()
    attempt: int = 0
    attempt_started_ms: int = 0
    deadline_ms: int = 0
    merged: dict[str, bytes] = field(default_factory=dict)
    alive: set[str] = field(default_factory=set)  # showed life during this attempt
    merged_root: bytes | None = None
    excluded: dict[str, str] = field(default_factory=dict)
    missing: tuple[str, ...] = ()
    dissenters: tuple[str, ...] = ()
    closed_ms: int | None = None
    finished_ms: int | None = None
    reason: str = ""

    @property
    def min_peers(self) -> int:
        return max((c.min_peers for c in self.checkins.values()), default=1)

    @property
    def finished(self) -> bool:
        return self.status in (RoundStatus.DONE, RoundStatus.FAILED)

    @property
    def all_final(self) -> bool:
        """Every participant's training is over: the last round the swarm needs."""
        return bool(self.participants) and all(
            self.checkins[p].final for p in self.participants if p in self.checkins
        )


@dataclass
class ContractRecord:
    params: CreateContract
    layout: tuple[TensorSpec, ...] | None = None
    total_bytes: int = 0
    rounds: dict[int, RoundRecord] = field(default_factory=dict)
    generation: int = 0  # how many times RESET CONTRACT started it over

    @property
    def done(self) -> set[str]:
        """SL nodes that checked in their final weights."""
        return {
            node
            for record in self.rounds.values()
            for node, check_in in record.checkins.items()
            if check_in.final
        }

    @property
    def training_over(self) -> bool:
        """Every participant of the latest successful round checked in its final weights."""
        done = [r for r in self.rounds.values() if r.status == RoundStatus.DONE]
        return bool(done) and max(done, key=lambda r: r.number).all_final

    @property
    def latest(self) -> RoundRecord | None:
        return self.rounds[max(self.rounds)] if self.rounds else None

    def open_round(self) -> RoundRecord | None:
        found = [r for n, r in sorted(self.rounds.items()) if r.status == RoundStatus.OPEN]
        return found[0] if found else None

    def next_round_number(self) -> int:
        """The round a check-in is for now: the open one, else the one after the latest."""
        opened = self.open_round()
        if opened is not None:
            return opened.number
        latest = self.latest
        return 1 if latest is None else latest.number + 1

    def exchange_deadline_ms(self, now_ms: int) -> int:
        per_gb = self.params.exchange_ms_per_gb * self.total_bytes // GIGABYTE
        return now_ms + self.params.exchange_base_ms + per_gb


def layout_difference(expected: tuple[TensorSpec, ...], got: tuple[TensorSpec, ...]) -> str:
    """'' when equal, else which tensor differs and how (one line)."""
    for index, (want, have) in enumerate(zip(expected, got, strict=False)):
        if want.name != have.name:
            return f"tensor {index} is {have.name!r}, the contract's is {want.name!r}"
        if want.shape != have.shape:
            return (
                f"tensor {want.name!r}: shape {have.shape} differs from the contract's {want.shape}"
            )
        if want.dtype != have.dtype:
            return (
                f"tensor {want.name!r}: dtype {have.dtype} differs from the contract's {want.dtype}"
            )
    if len(got) > len(expected):
        return f"tensor {got[len(expected)].name!r} is not in the contract's model"
    if len(got) < len(expected):
        return f"tensor {expected[len(got)].name!r} of the contract's model is missing"
    return ""


def try_close(contract: ContractRecord, round_: RoundRecord, now_ms: int, active: int) -> bool:
    """The closing rule; True when it closed the round."""
    if round_.status != RoundStatus.OPEN or len(round_.checkins) < round_.min_peers:
        return False
    if round_.quorum_ms is None:
        round_.quorum_ms = now_ms
    everyone_in = len(round_.checkins) >= active
    if not everyone_in and now_ms < round_.quorum_ms + contract.params.grace_ms:
        return False
    round_.status = RoundStatus.EXCHANGING
    round_.closed_ms = now_ms
    start_attempt(contract, round_, tuple(sorted(round_.checkins)), now_ms)
    return True


ABANDONED = "abandoned: no trainer waits for this round any more"


def withdraw(round_: RoundRecord, node: str, now_ms: int, *, session: int | None = None) -> bool:
    """Take ``node``'s check-in out of an open round (only that of ``session`` when given);
    True when it was there. A round left with none is abandoned."""
    found = round_.checkins.get(node)
    if round_.status != RoundStatus.OPEN or found is None:
        return False
    if session is not None and found.session != session:
        return False
    del round_.checkins[node]
    _after_leaving(round_, now_ms)
    return True


def expire(round_: RoundRecord, now_ms: int) -> bool:
    """Check-ins of an open round whose trainers waited their syncTimeout leave it; True when
    any did."""
    if round_.status != RoundStatus.OPEN:
        return False
    gone = [
        node
        for node, check_in in sorted(round_.checkins.items())
        if check_in.expires_ms is not None and check_in.expires_ms <= now_ms
    ]
    for node in gone:
        del round_.checkins[node]
    if gone:
        _after_leaving(round_, now_ms)
    return bool(gone)


def _after_leaving(round_: RoundRecord, now_ms: int) -> None:
    if not round_.checkins:
        finish(round_, RoundStatus.FAILED, now_ms, ABANDONED)
    elif len(round_.checkins) < round_.min_peers:
        round_.quorum_ms = None  # the grace period starts again with the next quorum


def start_attempt(
    contract: ContractRecord, round_: RoundRecord, participants: tuple[str, ...], now_ms: int
) -> None:
    if len(participants) < round_.min_peers:
        finish(
            round_,
            RoundStatus.FAILED,
            now_ms,
            f"{len(participants)} participant(s) left, fewer than min_peers",
        )
        return
    round_.participants = participants
    round_.attempt += 1
    round_.attempt_started_ms = now_ms
    round_.deadline_ms = contract.exchange_deadline_ms(now_ms) + extra_exchange_ms(
        round_.merge_method, len(participants), contract.total_bytes
    )
    round_.merged.clear()
    round_.alive.clear()


def finish(round_: RoundRecord, status: RoundStatus, now_ms: int, reason: str = "") -> None:
    round_.status = status
    round_.finished_ms = now_ms
    round_.reason = reason


def record_merged(round_: RoundRecord, node: str, root: bytes, now_ms: int) -> None:
    round_.merged[node] = root
    round_.alive.add(node)
    if set(round_.merged) >= set(round_.participants):
        settle(round_, now_ms)


def settle(round_: RoundRecord, now_ms: int) -> None:
    """Every participant of the attempt reported: a strict majority root wins, else failure."""
    votes: dict[bytes, list[str]] = {}
    for node in sorted(round_.merged):
        votes.setdefault(round_.merged[node], []).append(node)
    root, backers = max(votes.items(), key=lambda item: (len(item[1]), item[0]))
    if 2 * len(backers) > len(round_.participants):
        round_.merged_root = root
        round_.dissenters = tuple(n for n in sorted(round_.merged) if round_.merged[n] != root)
        finish(round_, RoundStatus.DONE, now_ms)
    else:
        finish(round_, RoundStatus.FAILED, now_ms, "participants disagree on the merged weights")


def exclude(
    contract: ContractRecord, round_: RoundRecord, culprit: str, reason: str, now_ms: int
) -> None:
    round_.excluded[culprit] = reason
    survivors = tuple(p for p in round_.participants if p != culprit)
    start_attempt(contract, round_, survivors, now_ms)


def past_deadline(contract: ContractRecord, round_: RoundRecord, now_ms: int) -> None:
    """The exchange deadline passed: finish with the agreeing reporters, re-plan, or fail."""
    if round_.status != RoundStatus.EXCHANGING or now_ms < round_.deadline_ms:
        return
    reporters = sorted(round_.merged)
    roots = {round_.merged[n] for n in reporters}
    if len(reporters) >= round_.min_peers and len(roots) == 1:
        round_.merged_root = roots.pop()
        round_.missing = tuple(p for p in round_.participants if p not in round_.merged)
        finish(round_, RoundStatus.DONE, now_ms)
        return
    alive = tuple(p for p in round_.participants if p in round_.alive)
    start_attempt(contract, round_, alive, now_ms)

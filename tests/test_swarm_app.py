"""The swarm ledger application: signed transactions, who may do what, and the round rules."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from swarmlearn.consensus.ledger.app import DEFAULT_CONTRACT, SwarmApp
from swarmlearn.consensus.ledger.rounds import RoundRecord, RoundStatus
from swarmlearn.consensus.ledger.txs import (
    CheckIn,
    CreateContract,
    Exclude,
    Heartbeat,
    Join,
    Merged,
    PerfData,
    ResetContract,
    SignedTx,
    TensorSpec,
)
from swarmlearn.consensus.tendermint.types import Block, BlockHeader
from swarmlearn.p2p.certs import create_ca, issue_certificate
from swarmlearn.p2p.identity import Identity, IdentityPaths, Role, load_identity
from swarmlearn.p2p.wire import Message, encode_header

CHAIN = "app-test"
LAYOUT = (TensorSpec("fc.weight", "float32", (10, 4)), TensorSpec("fc.bias", "float32", (10,)))
T0 = int(dt.datetime.now(dt.UTC).timestamp() * 1000)
# Certificates are valid from T0 - 5 min, whenever the fixture makes them (a long suite may
# run this module's tests more than 5 minutes after it was imported).
AT_T0 = dt.datetime.fromtimestamp(T0 / 1000, dt.UTC)


@dataclass(frozen=True)
class Swarm:
    ca_der: bytes
    people: dict[str, Identity]


@pytest.fixture(scope="module")
def swarm(tmp_path_factory: pytest.TempPathFactory) -> Swarm:
    root = tmp_path_factory.mktemp("swarm")
    ca = create_ca(root / "ca", now=AT_T0)
    other = create_ca(root / "other", now=AT_T0)
    roles = {
        "sn": [Role.SN, Role.SL],
        "a": [Role.SL],
        "b": [Role.SL],
        "c": [Role.SL],
        "op": [Role.SWCI],
    }
    people = {}
    for name, granted in roles.items():
        issued = issue_certificate(ca, name, root / "ca", hosts=[], roles=granted, now=AT_T0)
        people[name] = load_identity(
            IdentityPaths(issued.cert_path, issued.key_path, root / "ca" / "ca.pem")
        )
    issued = issue_certificate(other, "x", root / "other", hosts=[], roles=[Role.SL], now=AT_T0)
    people["stranger"] = load_identity(
        IdentityPaths(issued.cert_path, issued.key_path, root / "other" / "ca.pem")
    )
    return Swarm(ca.certificate.public_bytes(serialization.Encoding.DER), people)


def der(identity: Identity) -> bytes:
    return identity.certificate.public_bytes(serialization.Encoding.DER)


def signed(identity: Identity, body: Message, *, sender: str | None = None) -> bytes:
    envelope = SignedTx(sender or str(identity.peer_id), encode_header(body), b"")
    signature = identity.sign(envelope.sign_bytes(CHAIN))
    return encode_header(SignedTx(envelope.sender, envelope.body, signature))


class Ledger:
    """Feeds blocks to a fresh app, at a block time it controls."""

    def __init__(self, swarm: Swarm) -> None:
        self.app = SwarmApp(CHAIN, swarm.ca_der, T0)
        self.height = 0
        self.now_ms = T0
        self.validator_updates: list[str] = []

    def block(self, *txs: bytes, after_ms: int = 100) -> None:
        self.height += 1
        self.now_ms += after_ms
        header = BlockHeader(CHAIN, self.height, self.now_ms, "v", b"", b"", b"", b"")
        executed = self.app.execute_block(Block(header, txs))
        self.validator_updates += [v.node for v in executed.validator_updates]

    def refusals(self) -> list[str]:
        return [reason for _, _, reason in self.app.state.refusals]


def joined(swarm: Swarm, *names: str) -> Ledger:
    ledger = Ledger(swarm)
    ledger.block(
        *(signed(swarm.people[n], Join(f"{n}:30303", der(swarm.people[n]))) for n in names)
    )
    assert ledger.refusals() == []
    return ledger


def check_in(
    swarm: Swarm, name: str, number: int, root: bytes = b"r" * 32, **changes: object
) -> bytes:
    fields: dict[str, object] = {
        "contract": DEFAULT_CONTRACT,
        "round": number,
        "root": root,
        "weight": 1,
        "min_peers": 2,
        "layout": LAYOUT,
        "total_bytes": 216,
    }
    fields.update(changes)
    return signed(swarm.people[name], CheckIn(**fields))  # type: ignore[arg-type]


def round_of(ledger: Ledger, number: int = 1) -> RoundRecord:
    return ledger.app.state.contracts[DEFAULT_CONTRACT].rounds[number]


def test_joins_register_roles_and_sn_members_get_a_validator_seat(swarm: Swarm) -> None:
    ledger = joined(swarm, "sn", "a", "op")
    members = ledger.app.state.members
    assert members[str(swarm.people["a"].peer_id)].roles == {Role.SL}
    assert members[str(swarm.people["op"].peer_id)].address == "op:30303"
    assert ledger.validator_updates == [str(swarm.people["sn"].peer_id)]


def test_only_the_swarms_certificates_and_only_as_oneself(swarm: Swarm) -> None:
    ledger = Ledger(swarm)
    a, b = swarm.people["a"], swarm.people["b"]
    stranger = swarm.people["stranger"]
    ledger.block(
        signed(stranger, Join("x:1", der(stranger))),
        signed(a, Join("a:1", der(b)), sender=str(b.peer_id)),  # a signs a join for b
        signed(a, Join("a:1", der(b))),  # a presents b's certificate
    )
    assert ledger.refusals() == [
        "the certificate is not one of this swarm's",
        "bad signature",
        "a node can only join as itself",
    ]
    assert ledger.app.state.members == {}


def test_roles_decide_who_may_do_what(swarm: Swarm) -> None:
    ledger = joined(swarm, "a", "op")
    ledger.block(
        signed(swarm.people["a"], CreateContract("mine")),
        signed(swarm.people["op"], CreateContract("lab")),
        signed(swarm.people["op"], check_in_body()),
        signed(swarm.people["b"], Heartbeat()),
    )
    assert ledger.refusals() == [
        "CreateContract needs the swci role",
        "CheckIn needs the sl role",
        f"{str(swarm.people['b'].peer_id)[:8]} is not a member: join first",
    ]
    assert "lab" in ledger.app.state.contracts
    assert (
        ledger.app.check_tx(signed(swarm.people["a"], CreateContract("x")))
        == "CreateContract needs the swci role"
    )
    assert ledger.app.check_tx(b"garbage").startswith("undecodable transaction")


def check_in_body() -> CheckIn:
    return CheckIn(DEFAULT_CONTRACT, 1, b"r" * 32, 1, 2, LAYOUT, 216)


def test_a_check_in_with_another_model_says_which_tensor_differs(swarm: Swarm) -> None:
    ledger = joined(swarm, "a", "b", "c")
    wrong_shape = (TensorSpec("fc.weight", "float32", (10, 5)), LAYOUT[1])
    ledger.block(
        check_in(swarm, "a", 1),
        check_in(swarm, "b", 1, layout=wrong_shape),
        check_in(swarm, "c", 1, layout=LAYOUT[:1]),
        check_in(swarm, "a", 1),
        check_in(swarm, "c", 7),
    )
    assert ledger.refusals() == [
        "tensor 'fc.weight': shape (10, 5) differs from the contract's (10, 4)",
        "tensor 'fc.bias' of the contract's model is missing",
        "already checked in to round 1",
        "round 7 is not open; check in for round 1",
    ]


def test_merge_methods_that_rounds_cannot_run_are_refused_not_crashed_on(swarm: Swarm) -> None:
    ledger = joined(swarm, "a", "b", "op")
    ledger.block(
        check_in(swarm, "a", 1, merge_method="geomedian:tolerance=0"),
        signed(swarm.people["op"], CreateContract("robust", merge_method="krums")),
        check_in(swarm, "b", 1),
    )
    assert ledger.refusals() == [
        "merge method 'geomedian:tolerance=0': tolerance must be > 0, got 0.0",
        "merge method 'krums' is not one of: coordmedian, geomedian, krum, mean, multikrum,"
        " trimmedmean",
    ]
    assert round_of(ledger).merge_method == "mean"  # the refused check-in opened nothing
    assert "robust" not in ledger.app.state.contracts


def test_a_round_closes_after_the_grace_period_or_when_everyone_is_in(swarm: Swarm) -> None:
    ledger = joined(swarm, "a", "b", "c")
    ledger.block(check_in(swarm, "b", 1), check_in(swarm, "a", 1))
    statuses = [round_of(ledger).status]
    ledger.block(signed(swarm.people["c"], Heartbeat()), after_ms=1_000)
    statuses.append(round_of(ledger).status)
    ledger.block(after_ms=1_500)  # past the 2 s grace
    statuses.append(round_of(ledger).status)
    assert statuses == [RoundStatus.OPEN, RoundStatus.OPEN, RoundStatus.EXCHANGING]
    r = round_of(ledger)
    a, b = str(swarm.people["a"].peer_id), str(swarm.people["b"].peer_id)
    assert r.participants == tuple(sorted((a, b)))

    everyone = joined(swarm, "a", "b", "c")
    everyone.block(*(check_in(swarm, n, 1) for n in "abc"))
    assert round_of(everyone).status == RoundStatus.EXCHANGING


def exchanging(swarm: Swarm) -> Ledger:
    ledger = joined(swarm, "a", "b", "c")
    ledger.block(*(check_in(swarm, n, 1) for n in "abc"))
    return ledger


def merged(swarm: Swarm, name: str, root: bytes, attempt: int = 1, number: int = 1) -> bytes:
    return signed(swarm.people[name], Merged(DEFAULT_CONTRACT, number, attempt, root))


def test_training_is_over_after_a_round_in_which_every_participant_is_final(
    swarm: Swarm,
) -> None:
    ledger = joined(swarm, "a", "b", "c")
    contract = ledger.app.state.contracts[DEFAULT_CONTRACT]
    ledger.block(check_in(swarm, "a", 1, final=True), *(check_in(swarm, n, 1) for n in "bc"))
    ledger.block(*(merged(swarm, n, b"m" * 32) for n in "abc"))
    assert round_of(ledger).status == RoundStatus.DONE
    assert contract.done == {str(swarm.people["a"].peer_id)}
    assert not round_of(ledger).all_final
    assert not contract.training_over
    ledger.block(*(check_in(swarm, n, 2, final=True) for n in "abc"))
    assert not contract.training_over  # final check-ins alone do not end it: the round must
    ledger.block(*(merged(swarm, n, b"n" * 32, number=2) for n in "abc"))
    assert round_of(ledger, 2).all_final
    assert contract.training_over
    assert ledger.refusals() == []


def test_participants_that_agree_finish_the_round_and_the_ledger_holds_the_root(
    swarm: Swarm,
) -> None:
    ledger = exchanging(swarm)
    ledger.block(
        merged(swarm, "a", b"m" * 32), merged(swarm, "b", b"m" * 32), merged(swarm, "c", b"x" * 32)
    )
    r = round_of(ledger)
    assert r.status == RoundStatus.DONE
    assert r.merged_root == b"m" * 32
    assert r.dissenters == (str(swarm.people["c"].peer_id),)
    ledger.block(check_in(swarm, "a", 2))  # and the next round opens
    assert round_of(ledger, 2).status == RoundStatus.OPEN


def test_no_majority_is_a_failed_round_never_a_silent_partial_merge(swarm: Swarm) -> None:
    ledger = exchanging(swarm)
    ledger.block(
        merged(swarm, "a", b"1" * 32), merged(swarm, "b", b"2" * 32), merged(swarm, "c", b"3" * 32)
    )
    assert round_of(ledger).status == RoundStatus.FAILED
    assert round_of(ledger).reason == "participants disagree on the merged weights"


def test_an_excluded_contributor_starts_a_new_attempt_without_it(swarm: Swarm) -> None:
    ledger = exchanging(swarm)
    c = str(swarm.people["c"].peer_id)
    report = Exclude(DEFAULT_CONTRACT, 1, 1, c, "chunk 3 does not match its commitment")
    ledger.block(signed(swarm.people["a"], report))
    r = round_of(ledger)
    assert r.attempt == 2
    assert c not in r.participants
    assert r.excluded[c].startswith("chunk 3 does not match")
    ledger.block(merged(swarm, "a", b"m" * 32, attempt=1))  # a stale attempt
    assert ledger.refusals() == ["not a participant of attempt 2"]
    ledger.block(merged(swarm, "a", b"m" * 32, 2), merged(swarm, "b", b"m" * 32, 2))
    assert r.status == RoundStatus.DONE


def test_at_the_deadline_survivors_finish_re_plan_or_fail(swarm: Swarm) -> None:
    ledger = exchanging(swarm)
    ledger.block(merged(swarm, "a", b"m" * 32), merged(swarm, "b", b"m" * 32))
    ledger.block(after_ms=11_000)  # base deadline 10 s (a tiny model)
    r = round_of(ledger)
    assert r.status == RoundStatus.DONE
    assert r.missing == (str(swarm.people["c"].peer_id),)

    lonely = exchanging(swarm)
    lonely.block(
        merged(swarm, "a", b"m" * 32), signed(swarm.people["b"], Heartbeat(DEFAULT_CONTRACT))
    )
    lonely.block(after_ms=11_000)
    r = round_of(lonely)
    assert (r.status, r.attempt) == (RoundStatus.EXCHANGING, 2)
    assert len(r.participants) == 2  # a and b showed life
    lonely.block(after_ms=11_000)  # nobody reports in attempt 2
    assert r.status == RoundStatus.FAILED


def test_perfdata_is_recorded_per_node_and_round(swarm: Swarm) -> None:
    ledger = joined(swarm, "a")
    ledger.block(signed(swarm.people["a"], PerfData(DEFAULT_CONTRACT, 1, 0.5, 0.9, 2, 10)))
    key = (DEFAULT_CONTRACT, 1, str(swarm.people["a"].peer_id))
    assert ledger.app.state.perf[key].metric == 0.9


def test_reset_contract_drops_its_perfdata(swarm: Swarm) -> None:
    ledger = joined(swarm, "a", "op")
    ledger.block(
        signed(swarm.people["op"], CreateContract("lab")),
        signed(swarm.people["a"], PerfData(DEFAULT_CONTRACT, 1, 0.5, 0.9, 2, 10)),
        signed(swarm.people["a"], PerfData("lab", 1, 0.5, 0.9, 2, 10)),
    )
    ledger.block(signed(swarm.people["op"], ResetContract(DEFAULT_CONTRACT)))
    assert [k[0] for k in ledger.app.state.perf] == ["lab"]  # the new run starts with none


def test_same_blocks_same_hash_on_every_validator(swarm: Swarm) -> None:
    first, second = exchanging(swarm), exchanging(swarm)
    assert first.app.app_hash() == second.app.app_hash()
    first.block(merged(swarm, "a", b"m" * 32))
    assert first.app.app_hash() != second.app.app_hash()


def test_certificates_are_checked_at_the_blocks_time(swarm: Swarm, tmp_path: Path) -> None:
    ledger = Ledger(swarm)
    ledger.now_ms = T0 + 400 * 24 * 3600 * 1000  # past the 365-day certificates
    ledger.block(signed(swarm.people["a"], Join("a:1", der(swarm.people["a"]))))
    assert ledger.refusals() == ["the certificate is not valid at this block's time"]


def test_a_nodes_liveness_is_its_votes_not_its_training(swarm: Swarm) -> None:
    ledger = joined(swarm, "a", "sn")
    a = str(swarm.people["a"].peer_id)
    member = ledger.app.state.members[a]
    trained_at = (member.last_seen_height, member.last_seen_ms)
    ledger.app.votes_seen(40, 99_000, [a, "not-a-member"])
    assert (member.alive_height, member.alive_ms) == (40, 99_000)  # LIST NODES' last seen
    assert (member.last_seen_height, member.last_seen_ms) == trained_at
    ledger.app.votes_seen(39, 98_000, [a])  # an older commit changes nothing
    assert member.alive_height == 40

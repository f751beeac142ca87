"""The swarm ledger application: who is in the swarm, training contracts, and sync rounds.

Theory of operation
-------------------
A deterministic state machine over the transactions of :mod:`swarm_txs`, behind the
consensus :class:`~swarmlearn.consensus.tendermint.app.Application`
interface. Every transaction is a
:class:`SignedTx`; the application checks, in order: it decodes; its sender is in the
registry (or it is a ``Join`` whose certificate, issued by the swarm CA and valid at the
block's time, belongs to the sender); the signature is the sender's; the sender's roles allow
the body (contracts, tasks and resets need swci, rounds and perfdata need sl, taskrunner
enrolment and task status need swop). A refused transaction
changes nothing but a counter and the refusal log, the same way on every validator.

State: the registry (roles, address, certificate fingerprint and key, joined height,
last-seen time and height), contracts (HPE's ``defaultbb.cqdb.sml.hpe`` exists from genesis),
rounds (:mod:`swarm_rounds`), per-node performance data per round, tasks and taskrunners
(:mod:`swarm_tasks`; HPE's ``defaulttaskbb.taskdb.sml.hpe`` exists from genesis). Joins of
SN members give a validator seat (effective two heights later); a ``Leave`` takes the
member out of the registry and its seat away the same way, by the member itself or by an
operator (swci) for another node, but never the last seat. Time-driven steps (grace
periods, exchange deadlines) run at the end of every block, at the block's time.

The app hash chains the previous hash with every transaction's digest and outcome, so equal
hashes mean equal histories and therefore equal states.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from swarmlearn.consensus.ledger.rounds import (
    CheckInRecord,
    ContractRecord,
    RoundRecord,
    RoundStatus,
    exclude,
    expire,
    layout_difference,
    past_deadline,
    record_merged,
    try_close,
    withdraw,
)
from swarmlearn.consensus.ledger.tasks import OPERATOR_TXS, SWOP_TXS, TaskBook
from swarmlearn.consensus.ledger.txs import (
    CheckIn,
    CheckOut,
    CreateContract,
    Exclude,
    Heartbeat,
    Join,
    Leave,
    Merged,
    PerfData,
    ResetContract,
    SignedTx,
    TensorSpec,
)
from swarmlearn.consensus.tendermint.app import Executed
from swarmlearn.consensus.tendermint.crypto import KeyVerifier
from swarmlearn.consensus.tendermint.types import Block, Validator
from swarmlearn.errors import RemoteProtocolError
from swarmlearn.merge.methods import round_method_problem
from swarmlearn.p2p.identity import Identity, Role, describe_certificate
from swarmlearn.p2p.wire import Message, decode_header, encode_header

DEFAULT_CONTRACT = "defaultbb.cqdb.sml.hpe"
ACTIVE_MS = 120_000  # an SL member seen within this is "active" for the closing rule
REFUSALS_KEPT = 1_000
OUTCOMES_KEPT = 10_000

# Refusals that no ledger state explains: the transaction itself is forged (bad bytes, a
# signature that does not verify, another swarm's or another node's certificate). The peer
# network bans a peer that keeps sending them (roles/node/policing.py); every other refusal
# depends on the state (not a member yet, a round closed) and proves nothing.
UNDECODABLE = "undecodable transaction"
NOT_SIGNED = "not a signed swarm transaction"
BAD_SIGNATURE = "bad signature"
FOREIGN_CERTIFICATE = "the certificate is not one of this swarm's"
NOT_ITSELF = "a node can only join as itself"
FORGERY_REASONS = (UNDECODABLE, NOT_SIGNED, BAD_SIGNATURE, FOREIGN_CERTIFICATE, NOT_ITSELF)


def is_forgery(reason: str) -> bool:
    """Whether a transaction refused for ``reason`` was forged (whatever the ledger's state)."""
    return reason.startswith(FORGERY_REASONS)


ROLE_OF: dict[type[Message], Role] = {
    CreateContract: Role.SWCI,
    ResetContract: Role.SWCI,
    CheckIn: Role.SL,
    CheckOut: Role.SL,
    Merged: Role.SL,
    Exclude: Role.SL,
    PerfData: Role.SL,
    **{kind: Role.SWCI for kind in OPERATOR_TXS},
    **{kind: Role.SWOP for kind in SWOP_TXS},
}


@dataclass
class Member:
    node: str
    roles: frozenset[Role]
    address: str
    fingerprint: bytes
    public_key: bytes
    joined_height: int
    last_seen_height: int = 0  # its latest transaction
    last_seen_ms: int = 0
    #: Its latest sign of life: a transaction, or its vote in a block's commit (validators
    #: vote on every block). Not part of the ledger's hashed state: commits carry different
    #: (all valid) sets of votes on different nodes.
    alive_height: int = 0
    alive_ms: int = 0


@dataclass
class SwarmState:
    members: dict[str, Member] = field(default_factory=dict)
    contracts: dict[str, ContractRecord] = field(default_factory=dict)
    perf: dict[tuple[str, int, str], PerfData] = field(default_factory=dict)
    tasks: TaskBook = field(default_factory=TaskBook)  # tasks and taskrunners (swarm_tasks)
    refusals: deque[tuple[int, str, str]] = field(
        default_factory=lambda: deque(maxlen=REFUSALS_KEPT)
    )
    refused: dict[str, int] = field(default_factory=dict)
    outcomes: OrderedDict[bytes, str] = field(default_factory=OrderedDict)  # recent, by tx hash


class SwarmApp:
    def __init__(
        self,
        chain_id: str,
        ca_certificate: bytes,
        genesis_time_ms: int = 0,
        genesis_validators: frozenset[str] = frozenset(),
    ) -> None:
        self.chain_id = chain_id
        self.seated = set(genesis_validators)  # nodes with a validator seat
        self.ca = x509.load_der_x509_certificate(ca_certificate)
        self.verifier = KeyVerifier()
        self._verified: OrderedDict[tuple[bytes, bytes], None] = OrderedDict()  # a cache only
        self.state = SwarmState()
        self.state.contracts[DEFAULT_CONTRACT] = ContractRecord(CreateContract(DEFAULT_CONTRACT))
        self._hash = hashlib.sha256(b"swarmlearn swarm app/1" + chain_id.encode()).digest()
        self._height = 0
        self._now_ms = genesis_time_ms  # block time; until the first block, the genesis time

    # ------------------------------------------------------------ the Application interface

    def app_hash(self) -> bytes:
        return self._hash

    def check_tx(self, tx: bytes) -> str:
        found = self._authorize(tx)
        return found if isinstance(found, str) else ""

    def execute_block(self, block: Block) -> Executed:
        self._height = block.header.height
        self._now_ms = block.header.time_ms
        updates: list[Validator] = []
        digest = hashlib.sha256(self._hash + block.header.height.to_bytes(8, "big"))
        for tx in block.txs:
            outcome = self._execute(tx, updates)
            tx_hash = hashlib.sha256(tx).digest()
            digest.update(tx_hash + outcome.encode())
            self._remember(tx_hash, outcome)
        changed = [self._advance(contract) for contract in self.state.contracts.values()]
        if block.txs or any(changed):  # an empty block that changed nothing keeps the hash
            digest.update(bytes(changed))
            self._hash = digest.digest()
        return Executed(self._hash, tuple(updates))

    def votes_seen(self, height: int, time_ms: int, voters: list[str]) -> None:
        """The validators whose votes decided block ``height``: alive then (LIST NODES)."""
        for voter in voters:
            member = self.state.members.get(voter)
            if member is not None and height > member.alive_height:
                member.alive_height, member.alive_ms = height, time_ms

    def outcome(self, tx: bytes) -> str | None:
        """'ok' or 'refused: why' for a recently executed transaction (None if unknown)."""
        return self.state.outcomes.get(hashlib.sha256(tx).digest())

    def _remember(self, tx_hash: bytes, outcome: str) -> None:
        outcomes = self.state.outcomes
        outcomes[tx_hash] = outcome
        while len(outcomes) > OUTCOMES_KEPT:
            outcomes.popitem(last=False)

    # ------------------------------------------------------------ checking

    def _authorize(self, tx: bytes) -> tuple[str, Message] | str:
        """(sender, body) of a well-formed, correctly signed, permitted transaction, or why not."""
        try:
            signed = decode_header(tx)
            body = signed.decoded_body() if isinstance(signed, SignedTx) else None
        except RemoteProtocolError as error:
            return f"{UNDECODABLE}: {error}"
        if not isinstance(signed, SignedTx) or body is None:
            return NOT_SIGNED
        if isinstance(body, Join):
            problem = self._check_certificate(signed.sender, body.certificate)
            if problem:
                return problem
            key = _public_key(body.certificate)
        else:
            member = self.state.members.get(signed.sender)
            if member is None:
                return f"{signed.sender[:8]} is not a member: join first"
            needed = ROLE_OF.get(type(body))
            if needed is not None and needed not in member.roles:
                return f"{type(body).__name__} needs the {needed.value} role"
            key = member.public_key
        if not self._signature_ok(tx, key, signed):
            return BAD_SIGNATURE
        return signed.sender, body

    def _signature_ok(self, tx: bytes, key: bytes, signed: SignedTx) -> bool:
        """Each transaction's signature is checked once per node (mempool, proposal, block)."""
        seen = (hashlib.sha256(tx).digest(), key)
        if seen in self._verified:
            self._verified.move_to_end(seen)
            return True
        if not self.verifier.verify(key, signed.signature, signed.sign_bytes(self.chain_id)):
            return False
        self._verified[seen] = None
        while len(self._verified) > OUTCOMES_KEPT:
            self._verified.popitem(last=False)
        return True

    def _check_certificate(self, sender: str, der: bytes) -> str:
        try:
            cert = x509.load_der_x509_certificate(der)
            cert.verify_directly_issued_by(self.ca)
            info = describe_certificate(cert)
        except (ValueError, TypeError, InvalidSignature):
            return FOREIGN_CERTIFICATE
        moment = self._now_ms / 1000
        if (
            not cert.not_valid_before_utc.timestamp()
            <= moment
            <= cert.not_valid_after_utc.timestamp()
        ):
            return "the certificate is not valid at this block's time"
        if str(info.peer_id) != sender:
            return NOT_ITSELF
        return ""

    # ------------------------------------------------------------ executing

    def _execute(self, tx: bytes, updates: list[Validator]) -> str:
        found = self._authorize(tx)
        if isinstance(found, str):
            return self._refuse(tx, found)
        sender, body = found
        member = self.state.members.get(sender)
        if member is not None:
            member.last_seen_height, member.last_seen_ms = self._height, self._now_ms
            member.alive_height, member.alive_ms = self._height, self._now_ms
        match body:
            case Join():
                return self._join(sender, body, updates)
            case Leave():
                if refusal := self._leave(sender, body, updates):
                    return self._refuse(tx, refusal, sender)
            case CreateContract(name=name):
                if name in self.state.contracts:
                    return self._refuse(tx, f"contract {name!r} exists", sender)
                if problem := round_method_problem(body.merge_method):
                    return self._refuse(tx, problem, sender)
                self.state.contracts[name] = ContractRecord(body)
            case ResetContract(name=name):
                self._drop_perf(name)  # PERFDATA shows the new run only
                if name not in self.state.contracts:
                    return self._refuse(tx, f"no contract {name!r}", sender)
                old = self.state.contracts[name]  # its rounds end with it, open ones too
                self.state.contracts[name] = ContractRecord(
                    old.params, generation=old.generation + 1
                )
            case CheckIn():
                return self._check_in(tx, sender, body)
            case CheckOut(contract=name, round=number, session=session):
                contract = self.state.contracts.get(name)
                round_ = contract.rounds.get(number) if contract else None
                if round_ is None or not withdraw(round_, sender, self._now_ms, session=session):
                    return self._refuse(tx, f"no open check-in of session {session}", sender)
            case Merged() | Exclude():
                return self._exchange(tx, sender, body)
            case PerfData(contract=contract, round=number):
                self.state.perf[(contract, number, sender)] = body
            case Heartbeat(contract=name) if name in self.state.contracts:
                for record in self.state.contracts[name].rounds.values():
                    if record.status == RoundStatus.EXCHANGING and sender in record.participants:
                        record.alive.add(sender)
            case _ if isinstance(body, OPERATOR_TXS + SWOP_TXS):
                problem = self.state.tasks.apply(sender, body, self._height)
                if problem:
                    return self._refuse(tx, problem, sender)
        return "ok"

    def _drop_perf(self, name: str) -> None:
        if name in self.state.contracts:
            for key in [k for k in self.state.perf if k[0] == name]:
                del self.state.perf[key]

    def _refuse(self, tx: bytes, reason: str, sender: str = "") -> str:
        self.state.refusals.append((self._height, sender, reason))
        self.state.refused[sender] = self.state.refused.get(sender, 0) + 1
        return f"refused: {reason}"

    def _join(self, sender: str, join: Join, updates: list[Validator]) -> str:
        cert = x509.load_der_x509_certificate(join.certificate)
        info = describe_certificate(cert)
        known = self.state.members.get(sender)
        self.state.members[sender] = Member(
            node=sender,
            roles=info.roles,
            address=join.address,
            fingerprint=hashlib.sha256(join.certificate).digest(),
            public_key=_public_key(join.certificate),
            joined_height=known.joined_height if known else self._height,
            last_seen_height=self._height,
            last_seen_ms=self._now_ms,
        )
        if Role.SN in info.roles and sender not in self.seated:
            self.seated.add(sender)
            updates.append(Validator(sender, _public_key(join.certificate), 1))
        return "ok"

    def _leave(self, sender: str, leave: Leave, updates: list[Validator]) -> str:
        """Take ``leave.node`` (or the sender) out of the registry and its seat away; or why
        not (an empty string when done)."""
        node = leave.node or sender
        if node != sender and Role.SWCI not in self.state.members[sender].roles:
            return "only an operator (swci) may remove another node; a node leaves as itself"
        member = self.state.members.get(node)
        if member is None and node not in self.seated:
            return f"{node[:8]} is neither a member nor a validator"
        if node in self.seated:
            if len(self.seated) == 1:
                return f"{node[:8]} holds the last validator seat: the ledger would stop"
            self.seated.discard(node)
            updates.append(Validator(node, member.public_key if member else b"", 0))
        self.state.members.pop(node, None)
        return ""

    def check_in_problem(
        self, name: str, merge_method: str, layout: tuple[TensorSpec, ...]
    ) -> str | None:
        """Why the ledger refuses any check-in to contract ``name`` with this merge method and
        model, whoever sends it and whenever; None if it does not. An SL node asks before it
        checks in, so that its trainer hears the reason at once instead of waiting."""
        contract = self.state.contracts.get(name)
        if contract is None:
            return f"no contract {name!r}"
        if problem := round_method_problem(merge_method):
            return problem
        if contract.layout is not None:
            return layout_difference(contract.layout, layout) or None
        return None

    def _check_in(self, tx: bytes, sender: str, body: CheckIn) -> str:
        contract = self.state.contracts.get(body.contract)
        if contract is None:
            return self._refuse(tx, f"no contract {body.contract!r}", sender)
        if body.generation != contract.generation:
            return self._refuse(tx, _earlier_run(body.contract), sender)
        expected = contract.next_round_number()
        if body.round != expected:
            return self._refuse(
                tx, f"round {body.round} is not open; check in for round {expected}", sender
            )
        if problem := self.check_in_problem(body.contract, body.merge_method, body.layout):
            return self._refuse(tx, problem, sender)
        if contract.layout is None:
            contract.layout, contract.total_bytes = body.layout, body.total_bytes
        round_ = contract.rounds.get(body.round)
        if round_ is None:
            round_ = contract.rounds[body.round] = RoundRecord(
                body.contract, body.round, body.merge_method, self._now_ms
            )
        if body.merge_method != round_.merge_method:
            return self._refuse(
                tx,
                f"merge method {body.merge_method!r}; the round's is {round_.merge_method!r}",
                sender,
            )
        known = round_.checkins.get(sender)
        if known is not None and (known.root, known.session, known.nonce) == (
            body.root,
            body.session,
            body.nonce,
        ):
            return self._refuse(tx, f"already checked in to round {body.round}", sender)
        # A node that checked in already: its trainer gave up at its syncTimeout (or was
        # restarted) and syncs again. Nothing moved yet (the round is open): this replaces it.
        expires_ms = self._now_ms + body.wait_ms if body.wait_ms > 0 else None
        round_.checkins[sender] = CheckInRecord(
            body.root,
            body.weight,
            body.min_peers,
            self._now_ms,
            body.final,
            body.session,
            expires_ms,
            body.nonce,
        )
        try_close(contract, round_, self._now_ms, self._active_learners())
        return "ok"

    def _exchange(self, tx: bytes, sender: str, body: Merged | Exclude) -> str:
        contract = self.state.contracts.get(body.contract)
        round_ = contract.rounds.get(body.round) if contract else None
        if contract is not None and body.generation != contract.generation:
            return self._refuse(tx, _earlier_run(body.contract), sender)
        if contract is None or round_ is None or round_.status != RoundStatus.EXCHANGING:
            return self._refuse(
                tx, f"round {body.round} of {body.contract!r} is not exchanging", sender
            )
        if body.attempt != round_.attempt or sender not in round_.participants:
            return self._refuse(tx, f"not a participant of attempt {round_.attempt}", sender)
        if isinstance(body, Merged):
            record_merged(round_, sender, body.root, self._now_ms)
        elif body.culprit in round_.participants and body.culprit != sender:
            exclude(
                contract,
                round_,
                body.culprit,
                f"{body.reason} (reported by {sender[:8]})",
                self._now_ms,
            )
        else:
            return self._refuse(tx, "the culprit is not another participant", sender)
        return "ok"

    def _advance(self, contract: ContractRecord) -> bool:
        """Time-driven steps of the contract's rounds; True if any round changed."""
        changed = False
        for round_ in list(contract.rounds.values()):
            before = (round_.status, round_.attempt)
            if round_.status == RoundStatus.OPEN:
                expire(round_, self._now_ms)
                try_close(contract, round_, self._now_ms, self._active_learners())
            elif round_.status == RoundStatus.EXCHANGING:
                past_deadline(contract, round_, self._now_ms)
            changed |= (round_.status, round_.attempt) != before
        return changed

    def _active_learners(self) -> int:
        horizon = self._now_ms - ACTIVE_MS
        return sum(
            1
            for m in self.state.members.values()
            if Role.SL in m.roles and m.last_seen_ms >= horizon
        )


def _earlier_run(contract: str) -> str:
    return f"a round of an earlier run of contract {contract!r} (RESET CONTRACT ended it)"


def sign_transaction(identity: Identity, chain_id: str, body: Message) -> bytes:
    """The bytes of a :class:`SignedTx` of ``body`` by ``identity`` on chain ``chain_id``."""
    sender = str(identity.peer_id)
    unsigned = SignedTx(sender, encode_header(body), b"")
    return encode_header(
        SignedTx(sender, unsigned.body, identity.sign(unsigned.sign_bytes(chain_id)))
    )


def _public_key(der: bytes) -> bytes:
    return (
        x509.load_der_x509_certificate(der)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )

"""The ledger over gossip (sans-IO): the consensus core's broadcasts ride gossipsub topics.

Theory of operation
-------------------
:class:`LedgerOverGossip` composes one
:class:`~swarmlearn.consensus.tendermint.core.ConsensusCore` and one
:class:`~swarmlearn.p2p.node.P2PNode` (peer table + gossip) into the core a node runs, the way
malachite runs Tendermint over libp2p gossipsub. Nothing in either core changes; the
adapter only translates:

- **out**: the consensus core's ``Broadcast`` becomes a gossip ``Publish``: a transaction on
  :data:`TOPIC_TXS`, a vote on :data:`TOPIC_VOTES`, a proposal cut into :class:`BlockPart`
  messages on :data:`TOPIC_PROPOSALS` (each part carries the proposer's signed
  :class:`PartSetHeader`, so a part is checked on its own, before it is forwarded). When
  this node built a block that it commits, it publishes the decided block with its commit on
  :data:`TOPIC_BLOCKS`. A consensus ``Send`` (status, catch-up blocks, the proposals and
  votes a peer at our height missed) stays a direct message on the peer's connection: catch-up
  and status are requests, not gossip.
- **in**: gossip's per-topic validation hooks check each message before it is delivered or
  forwarded: it decodes to the topic's type; a vote or part is signed by a member of the
  validator set of its height (a part by that round's proposer); a decided block's commit
  carries a quorum of valid signatures; a transaction passes the application's
  ``check_tx``. Forged or undecodable messages are ``REJECT`` (gossip lowers the forwarding
  peer's score; a forged transaction is also delivered as ``ForgedTx``, for the node's
  police), stale or unverifiable ones (too far ahead) ``IGNORE``. Accepted messages are
  handed to the consensus core as if the forwarding peer had sent them; whole part sets are
  reassembled first, and a decided block one height ahead waits in :attr:`ahead` until the
  core reaches it.
- **direct reach**: a message on a validators' topic published while this node is linked to
  every other validator (of this height and the next) reaches every node that needs it by
  gossip's flood publish alone, so it is published with ``forward=False`` and receivers do
  not forward it: in a swarm whose validators are all linked, each validator receives each
  vote once instead of once per mesh peer. What is lost on the way comes back through the
  status exchange (the proposals and votes a peer at our height missed).
- **seats**: a validator subscribes to all four topics; a member without a seat (a
  *follower*) subscribes to :data:`TOPIC_BLOCKS` only and commits the decided blocks it
  hears, falling back to status catch-up for what gossip missed. After every commit the
  adapter re-reads the validator set and (un)subscribes when the seat changed. A follower's
  status at our height gets no reply (it wants blocks, not votes).

Timers go to the p2p core when their tag names it (``("peers" | "gossip" | "transfer", ...)``),
otherwise to consensus. Everything is bounded: part sets in reassembly
(:attr:`LedgerGossipConfig.part_sets_max`), parts per set, decided blocks held ahead.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from swarmlearn.consensus.tendermint.core import ConsensusCore, ForgedTx
from swarmlearn.consensus.tendermint.events import Committed, SubmitTx
from swarmlearn.consensus.tendermint.types import (
    Block,
    BlockRequest,
    BlockResponse,
    Commit,
    Proposal,
    Status,
    Tx,
    ValidatorSet,
    Vote,
)
from swarmlearn.consensus.tendermint.votekeeper import ROUND_WINDOW
from swarmlearn.errors import RemoteProtocolError
from swarmlearn.p2p.gossip import (
    GossipDelivery,
    Publish,
    Subscribe,
    Unsubscribe,
    Verdict,
)
from swarmlearn.p2p.node import P2PNode
from swarmlearn.p2p.peertable import PeerDown, PeerUp, Prefer
from swarmlearn.p2p.wire import Message, decode_body, encode_body, encode_header
from swarmlearn.sansio import (
    Broadcast,
    Deliver,
    Effect,
    Input,
    NodeId,
    Receive,
    Request,
    Send,
    Start,
    TimerFired,
)

TOPIC_TXS = "ledger/txs"
TOPIC_PROPOSALS = "ledger/proposals"
TOPIC_VOTES = "ledger/votes"
TOPIC_BLOCKS = "ledger/blocks"
VALIDATOR_TOPICS = (TOPIC_BLOCKS, TOPIC_PROPOSALS, TOPIC_TXS, TOPIC_VOTES)
FOLLOWER_TOPICS = (TOPIC_BLOCKS,)
P2P_TIMERS = ("peers", "gossip", "transfer")
M = TypeVar("M", bound=Message)
DIRECT_MESSAGES = (Status, BlockRequest, BlockResponse, Proposal, Vote, Tx)


@dataclass(frozen=True)
class PartSetSignBytes(Message, tag=0x5D):
    chain_id: str
    height: int
    round: int
    size: int
    part_hashes: tuple[bytes, ...]


@dataclass(frozen=True)
class PartSetHeader(Message, tag=0x5E):
    """The proposer's signed list of a proposal's part hashes (in every part)."""

    height: int
    round: int
    proposer: str
    size: int  # bytes of the encoded proposal
    part_hashes: tuple[bytes, ...]
    signature: bytes

    def sign_bytes(self, chain_id: str) -> bytes:
        signed = PartSetSignBytes(chain_id, self.height, self.round, self.size, self.part_hashes)
        return encode_header(signed)

    @property
    def key(self) -> bytes:
        return hashlib.sha256(encode_header(self)).digest()


@dataclass(frozen=True)
class BlockPart(Message, tag=0x5F):
    header: PartSetHeader
    index: int
    data: bytes


@dataclass(frozen=True)
class LedgerGossipConfig:
    part_bytes: int = 256 * 1024
    parts_max: int = 64
    part_sets_max: int = 16  # part sets in reassembly at once (the oldest is dropped)
    ahead_max: int = 4  # decided blocks held for heights the core has not reached

    def __post_init__(self) -> None:
        if self.part_bytes < 1024 or self.parts_max < 1 or self.part_sets_max < 1:
            raise ValueError("need part_bytes >= 1024, parts_max >= 1, part_sets_max >= 1")


@dataclass
class LedgerGossipCounters:
    published: dict[str, int] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)  # forged or undecodable, by topic
    ignored: dict[str, int] = field(default_factory=dict)  # stale or too far ahead
    parts_garbage: int = 0  # a signed part set that did not decode to its proposal
    direct_dropped: int = 0  # a direct message to or from a peer without a connection
    follower_status_ignored: int = 0
    unforwarded: int = 0  # published to every validator directly: receivers need not forward


def encode(message: Message) -> bytes:
    head, payload = encode_body(message)
    return head + bytes(payload)


def decode(data: bytes) -> Message | None:
    try:
        return decode_body(data)
    except RemoteProtocolError:
        return None


def digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


class LedgerOverGossip:
    """Consensus + p2p as one sans-IO core (see the module docstring)."""

    def __init__(
        self,
        consensus: ConsensusCore,
        p2p: P2PNode,
        config: LedgerGossipConfig | None = None,
    ) -> None:
        if p2p.gossip is None:
            raise ValueError("the ledger over gossip needs a gossip core")
        self.consensus = consensus
        self.p2p = p2p
        self.gossip = p2p.gossip
        self.config = config or LedgerGossipConfig()
        self.me = consensus.me
        self.counters = LedgerGossipCounters()
        self.part_sets: dict[bytes, dict[int, bytes]] = {}  # header key -> parts by index
        self.ahead: dict[int, tuple[NodeId, BlockResponse]] = {}
        self._decoded: tuple[bytes, Message] | None = None  # validation -> delivery, one slot
        self._forged: list[ForgedTx] = []  # rejected transactions, delivered after validation
        validators: dict[str, Callable[[NodeId, str, bytes], Verdict]] = {
            TOPIC_TXS: self._check_tx,
            TOPIC_PROPOSALS: self._check_part,
            TOPIC_VOTES: self._check_vote,
            TOPIC_BLOCKS: self._check_block,
        }
        self.gossip.validators.update(validators)
        self.seated = self.me in consensus.validators
        self.preferred: tuple[NodeId, ...] = ()  # told to the peer table (Prefer)

    # ------------------------------------------------------------ the entry point

    def handle(self, event: Input, now: float) -> list[Effect]:
        match event:
            case Start():
                topics = VALIDATOR_TOPICS if self.seated else FOLLOWER_TOPICS
                effects: list[Effect] = []
                for topic in topics:  # before any peer is up: no messages yet
                    effects += self._from_p2p(self.p2p.handle(Request(Subscribe(topic)), now), now)
                effects += self._from_p2p(self.p2p.handle(event, now), now)
                effects += self._prefer(now)
                return effects + self._from_consensus(self.consensus.handle(event, now), now)
            case Receive(sender, message) if isinstance(message, DIRECT_MESSAGES):
                return self._direct(sender, message, now)
            case TimerFired(tag) if isinstance(tag, tuple) and tag and tag[0] in P2P_TIMERS:
                return self._from_p2p(self.p2p.handle(event, now), now)
            case TimerFired():
                return self._from_consensus(self.consensus.handle(event, now), now)
            case Request(SubmitTx()):
                return self._from_consensus(self.consensus.handle(event, now), now)
        return self._from_p2p(self.p2p.handle(event, now), now)

    def _direct(self, sender: NodeId, message: Message, now: float) -> list[Effect]:
        self.p2p.peers.observe(sender, now)
        if sender not in self.p2p.peers.by_peer:
            self.counters.direct_dropped += 1
            return []
        if (
            isinstance(message, Status)
            and message.height >= self.consensus.height
            and sender not in self.consensus.validators
        ):
            self.counters.follower_status_ignored += 1  # a follower wants blocks, not votes
            return []
        return self._from_consensus(self.consensus.handle(Receive(sender, message), now), now)

    # ------------------------------------------------------------ effects of the two cores

    def _from_consensus(self, effects: list[Effect], now: float) -> list[Effect]:
        out: list[Effect] = []
        for effect in effects:
            match effect:
                case Broadcast(Tx() as tx):
                    out += self._publish(TOPIC_TXS, encode(tx), now)
                case Broadcast(Vote() as vote):
                    out += self._publish(TOPIC_VOTES, encode(vote), now)
                case Broadcast(Proposal() as proposal):
                    for part in self._cut(proposal):
                        out += self._publish(TOPIC_PROPOSALS, encode(part), now)
                case Broadcast():
                    pass  # nothing else is broadcast; a new kind would need its topic
                case Send(to, _) if to not in self.p2p.peers.by_peer:
                    self.counters.direct_dropped += 1
                case Deliver(Committed() as committed):
                    out.append(effect)
                    out += self._committed(committed, now)
                case _:
                    out.append(effect)
        return out

    def _from_p2p(self, effects: list[Effect], now: float) -> list[Effect]:
        out: list[Effect] = [Deliver(forged) for forged in self._forged]
        self._forged.clear()
        for effect in effects:
            match effect:
                case Deliver(GossipDelivery(topic, data, _, source)):
                    out += self._delivered(topic, data, source, now)
                case Deliver(PeerUp() | PeerDown()):
                    self.consensus.set_peers(self.p2p.peers.connected())
                    out.append(effect)
                case _:
                    out.append(effect)
        return out

    def _publish(self, topic: str, data: bytes, now: float) -> list[Effect]:
        published = self.counters.published
        published[topic] = published.get(topic, 0) + 1
        forward = not self._reaches_validators(topic)
        if not forward:
            self.counters.unforwarded += 1
        publish = Publish(topic, data, forward)
        return self._from_p2p(self.p2p.handle(Request(publish), now), now)

    def _reaches_validators(self, topic: str) -> bool:
        """Whether publishing on ``topic`` reaches every validator that needs it directly:
        this node is linked to every other validator of this height and the next, and each
        is subscribed. Then nobody needs to forward it (votes, parts, transactions: the
        validators' topics). Decided blocks are for followers too: always forwarded."""
        if topic == TOPIC_BLOCKS:
            return False
        height = self.consensus.height
        needed: set[str] = set()
        for h in (height, height + 1):
            vset = self.consensus.validator_sets.get(h)
            if vset is not None:
                needed.update(v.node for v in vset.validators)
        needed.discard(self.me)
        # The flood's own peers: a validator whose score went negative is a topic peer that
        # the flood skips, and with nobody forwarding it would never hear the message.
        return needed <= set(self.gossip.flood_peers(topic))

    def _consensus_receive(self, source: NodeId, message: Message, now: float) -> list[Effect]:
        return self._from_consensus(self.consensus.handle(Receive(source, message), now), now)

    # ------------------------------------------------------------ commits and seats

    def _committed(self, committed: Committed, now: float) -> list[Effect]:
        effects: list[Effect] = []
        found = self.consensus.blocks.get(committed.height)
        built = found is not None and found[0].header.proposer == self.me
        if found is not None and built and self.seated and not self.consensus.replaying:
            effects += self._publish(TOPIC_BLOCKS, encode(BlockResponse(*found)), now)
        effects += self._reseat(now)
        effects += self._prefer(now)
        height = self.consensus.height
        self.ahead = {h: held for h, held in self.ahead.items() if h >= height}
        waiting = self.ahead.pop(height, None)
        if waiting is not None:
            effects += self._consensus_receive(waiting[0], waiting[1], now)
        return effects

    def _prefer(self, now: float) -> list[Effect]:
        """A seated node links with the other validators first (the peer table's
        :class:`~swarmlearn.p2p.peertable.Prefer`); a follower prefers nobody."""
        seats = self.consensus.validators.validators if self.seated else ()
        preferred = tuple(sorted(v.node for v in seats if v.node != self.me))
        if preferred == self.preferred:
            return []
        self.preferred = preferred
        return self._from_p2p(self.p2p.handle(Request(Prefer(preferred)), now), now)

    def _reseat(self, now: float) -> list[Effect]:
        seated = self.me in self.consensus.validators
        if seated == self.seated:
            return []
        self.seated = seated
        request = Subscribe if seated else Unsubscribe
        effects: list[Effect] = []
        for topic in VALIDATOR_TOPICS:
            if topic not in FOLLOWER_TOPICS:
                effects += self._from_p2p(self.p2p.handle(Request(request(topic)), now), now)
        return effects

    # ------------------------------------------------------------ deliveries

    def _delivered(self, topic: str, data: bytes, source: NodeId, now: float) -> list[Effect]:
        message = self._take_decoded(data)
        if message is None:
            return []
        if isinstance(message, BlockPart):
            proposal = self._assemble(message)
            return [] if proposal is None else self._consensus_receive(source, proposal, now)
        if isinstance(message, BlockResponse):
            height = message.block.header.height
            if height > self.consensus.height:
                self.ahead[height] = (source, message)
                while len(self.ahead) > self.config.ahead_max:
                    del self.ahead[max(self.ahead)]
                return []
        return self._consensus_receive(source, message, now)

    def _take_decoded(self, data: bytes) -> Message | None:
        cached, self._decoded = self._decoded, None
        if cached is not None and cached[0] is data:
            return cached[1]
        return decode(data)

    # ------------------------------------------------------------ block parts

    def _cut(self, proposal: Proposal) -> list[BlockPart]:
        data = encode(proposal)
        size = self.config.part_bytes
        chunks = [data[i : i + size] for i in range(0, len(data), size)]
        hashes = tuple(digest(chunk) for chunk in chunks)
        unsigned = PartSetHeader(proposal.height, proposal.round, self.me, len(data), hashes, b"")
        signature = self.consensus.signer.sign(unsigned.sign_bytes(self.consensus.chain_id))
        header = dataclasses.replace(unsigned, signature=signature)
        return [BlockPart(header, index, chunk) for index, chunk in enumerate(chunks)]

    def _assemble(self, part: BlockPart) -> Proposal | None:
        key = part.header.key
        parts = self.part_sets.get(key)
        if parts is None:
            while len(self.part_sets) >= self.config.part_sets_max:
                del self.part_sets[next(iter(self.part_sets))]
            parts = self.part_sets[key] = {}
        parts[part.index] = part.data
        header = part.header
        if len(parts) < len(header.part_hashes):
            return None
        del self.part_sets[key]
        proposal = decode(b"".join(parts[i] for i in range(len(header.part_hashes))))
        if not isinstance(proposal, Proposal) or (
            proposal.height,
            proposal.round,
            proposal.proposer,
        ) != (header.height, header.round, header.proposer):
            self.counters.parts_garbage += 1  # signed by the proposer: its fault, not a peer's
            return None
        return proposal

    # ------------------------------------------------------------ validation (gossip's hooks)

    def _verdict(self, topic: str, verdict: Verdict) -> Verdict:
        if verdict is not Verdict.ACCEPT:
            tally = self.counters.rejected if verdict is Verdict.REJECT else self.counters.ignored
            tally[topic] = tally.get(topic, 0) + 1
        return verdict

    def _decode_as(self, data: bytes, kind: type[M]) -> M | None:
        """Decode for validation; the delivery that follows an ACCEPT reuses the object."""
        message = decode(data)
        if not isinstance(message, kind):
            return None
        self._decoded = (data, message)
        return message

    def _set_for(self, height: int) -> ValidatorSet | None:
        """The validator set of ``height`` if this node knows it and the height is live (the
        last committed height still counts: its late votes help slower validators)."""
        if height < self.consensus.height - 1:
            return None
        return self.consensus.validator_sets.get(height)

    def _signed_by(self, vset: ValidatorSet, node: str, signature: bytes, data: bytes) -> bool:
        member = vset.by_node.get(node)
        return member is not None and self.consensus.verifier.verify(
            member.public_key, signature, data
        )

    def _check_vote(self, source: NodeId, topic: str, data: bytes) -> Verdict:
        vote = self._decode_as(data, Vote)
        if vote is None:
            return self._verdict(topic, Verdict.REJECT)
        vset = self._set_for(vote.height)
        if vset is None or vote.round > self._round() + ROUND_WINDOW:
            return self._verdict(topic, Verdict.IGNORE)
        chain = self.consensus.chain_id
        if not self._signed_by(vset, vote.validator, vote.signature, vote.sign_bytes(chain)):
            return self._verdict(topic, Verdict.REJECT)  # forged, or not a validator's
        return Verdict.ACCEPT

    def _check_part(self, source: NodeId, topic: str, data: bytes) -> Verdict:
        part = self._decode_as(data, BlockPart)
        if part is None:
            return self._verdict(topic, Verdict.REJECT)
        header = part.header
        hashes = header.part_hashes
        if (
            not 0 < len(hashes) <= self.config.parts_max
            or not 0 <= part.index < len(hashes)
            or digest(part.data) != hashes[part.index]
        ):
            return self._verdict(topic, Verdict.REJECT)
        vset = self._set_for(header.height)
        if vset is None or header.round > self._round() + ROUND_WINDOW:
            return self._verdict(topic, Verdict.IGNORE)
        signed = header.sign_bytes(self.consensus.chain_id)
        if header.proposer != vset.proposer(header.height, header.round) or not self._signed_by(
            vset, header.proposer, header.signature, signed
        ):
            return self._verdict(topic, Verdict.REJECT)
        return Verdict.ACCEPT

    def _check_block(self, source: NodeId, topic: str, data: bytes) -> Verdict:
        response = self._decode_as(data, BlockResponse)
        if response is None:
            return self._verdict(topic, Verdict.REJECT)
        block, commit = response.block, response.commit
        height = block.header.height
        vset = self._set_for(height)
        if vset is None or height > self.consensus.height + 1:
            return self._verdict(topic, Verdict.IGNORE)
        ours = self.consensus.blocks.get(height)
        if ours is not None and ours[0].hash != block.hash:
            return self._verdict(topic, Verdict.REJECT)  # not the block this node committed
        if ours is not None and ours[1] == commit:
            return Verdict.ACCEPT  # this node's own block and commit: checked when committed
        if commit_problem(vset, self.consensus, block, commit):
            return self._verdict(topic, Verdict.REJECT)
        return Verdict.ACCEPT

    def _check_tx(self, source: NodeId, topic: str, data: bytes) -> Verdict:
        tx = self._decode_as(data, Tx)
        if tx is None:
            return self._verdict(topic, Verdict.REJECT)
        reason = self.consensus.app.check_tx(tx.data)
        if not reason:
            return Verdict.ACCEPT
        is_forgery = self.consensus.is_forgery
        forged = is_forgery is not None and is_forgery(reason)
        if forged:
            self._forged.append(ForgedTx(source, reason))
        return self._verdict(topic, Verdict.REJECT if forged else Verdict.IGNORE)

    def _round(self) -> int:
        return max(self.consensus.machine.state.round, 0)

    # ------------------------------------------------------------ statistics

    def statistics(self) -> dict[str, object]:
        gossip = self.gossip.counters
        state = self.consensus.machine.state
        return {
            "height": self.consensus.height,
            # where this height stands (a swarm whose chain pauses shows it here: rounds that
            # grow, a step that does not move, a mesh that is empty)
            "round": max(state.round, 0),
            "step": state.step.name.lower(),
            "mesh": {topic: len(peers) for topic, peers in sorted(self.gossip.mesh.items())},
            "seated": self.seated,
            "connections": len(self.p2p.peers.by_peer),
            "published": dict(sorted(self.counters.published.items())),
            "rejected": dict(sorted(self.counters.rejected.items())),
            "ignored": dict(sorted(self.counters.ignored.items())),
            "gossip_copies": gossip.copies,
            "gossip_duplicates": gossip.duplicates,
            "gossip_invalid": gossip.invalid,
        }


def commit_problem(vset: ValidatorSet, core: ConsensusCore, block: Block, commit: Commit) -> str:
    """Why ``commit`` does not prove ``block`` decided under ``vset`` ("" when it does)."""
    if commit.value != block.hash or commit.height != block.header.height:
        return "the commit is for another block"
    seen: set[str] = set()
    power = 0
    for vote in commit.votes():
        member = vset.by_node.get(vote.validator)
        if vote.validator in seen or member is None:
            return f"bad signer {vote.validator!r}"
        if not core.verifier.verify(
            member.public_key, vote.signature, vote.sign_bytes(core.chain_id)
        ):
            return f"bad signature by {vote.validator}"
        seen.add(vote.validator)
        power += vset.power(vote.validator)
    return "" if vset.is_quorum(power) else "not signed by a quorum"

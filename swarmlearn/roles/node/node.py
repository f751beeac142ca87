"""A swarm network (SN) node: a ledger validator, composed from the core, the driver, the disk
store and the peer network; the sentinel is the SN that creates the chain.

Bootstrap, as HPE's users know it:

- ``--sentinel``: the first node makes the genesis (chain id, creation time, the SHA-256 of
  its CA certificate, itself as the only validator), persists it, and records its own
  address on the ledger;
- ``--bootstrap HOST:PORT``: any other node fetches the genesis from there, refuses it if
  the CA is not its own CA, persists it, catches up on the blocks, and joins: a signed
  ``Join`` transaction carrying its certificate records it in the swarm's registry with the
  roles the certificate grants, and gives SN members a validator seat (effective two heights
  after it is committed). It repeats the request until the ledger shows it.

A node leaves with :meth:`ValidatorNode.leave` (``swarm-node --leave-on-exit`` on SIGTERM):
a signed ``Leave`` takes it out of the registry and, for SN, its seat away; it waits (a few
seconds at most) until the seat is gone from the current height's validator set, so that it
never stops while the others still need its vote.

A restarted node needs neither flag: its data directory holds the genesis, the blocks, the
WAL of the height it was working on and the peers it knew (``p2p-peers.json``).

The node is one p2p host (:class:`~swarmlearn.roles.node.host.NodeHost`) on ``--listen``:
its core (:class:`~swarmlearn.roles.node.core.SwarmNodeCore` around a
:class:`~swarmlearn.consensus.tendermint.over_gossip.LedgerOverGossip` around the host's
peer table and gossip) runs under the host's driver. The ledger's transactions, proposals,
votes and decided blocks ride gossip topics; status and catch-up are direct messages on a
peer's link; the members' recorded addresses seed the peer table.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import trio
from cryptography.hazmat.primitives import serialization

from swarmlearn.consensus.ledger.app import SwarmApp, is_forgery, sign_transaction
from swarmlearn.consensus.ledger.batching import expects_more
from swarmlearn.consensus.ledger.rounds import RoundStatus
from swarmlearn.consensus.ledger.txs import Join, Leave
from swarmlearn.consensus.tendermint.core import ConsensusConfig, ConsensusCore, ForgedTx
from swarmlearn.consensus.tendermint.crypto import KeySigner, KeyVerifier, VerifiedCache
from swarmlearn.consensus.tendermint.events import Committed, Genesis, SubmitTx, TxRefused
from swarmlearn.consensus.tendermint.over_gossip import VALIDATOR_TOPICS, LedgerOverGossip
from swarmlearn.consensus.tendermint.store import DiskStore, store_fault
from swarmlearn.consensus.tendermint.types import Validator
from swarmlearn.errors import ConfigError, RemoteProtocolError
from swarmlearn.p2p.bulk_push import RoundLanes
from swarmlearn.p2p.certs import write_atomically
from swarmlearn.p2p.identity import NODE_ROLES, Identity, Role
from swarmlearn.p2p.messages import Ping, Pong
from swarmlearn.p2p.multiaddr import PeerAddress
from swarmlearn.p2p.peertable import PeerTableConfig
from swarmlearn.p2p.service import ServiceConfig
from swarmlearn.p2p.transport import Connection
from swarmlearn.p2p.wire import Message, decode_header, encode_header, payload_of
from swarmlearn.roles.api import views
from swarmlearn.roles.api.messages import (
    GenesisReply,
    GenesisRequest,
    LedgerQuery,
    LedgerReply,
    NodeStatus,
    StatusRequest,
    SubmitReply,
    SubmitRequest,
)
from swarmlearn.roles.api.requests import NETWORK_ERRORS as NETWORK_ERRORS
from swarmlearn.roles.api.requests import REQUEST_TIMEOUT_S as REQUEST_TIMEOUT_S
from swarmlearn.roles.api.requests import ask as ask
from swarmlearn.roles.api.requests import network_reason as network_reason
from swarmlearn.roles.api.server import serve_api
from swarmlearn.roles.local.endpoint import LocalEndpoint
from swarmlearn.roles.local.handover import shed_pages
from swarmlearn.roles.local.trainers import ToJoiner, Trainers
from swarmlearn.roles.node.core import SwarmNodeCore
from swarmlearn.roles.node.datadir import GENESIS_FILE, DataDirLock, check_genesis_beside_ledger
from swarmlearn.roles.node.host import NodeHost, member_addresses
from swarmlearn.roles.sl.core import (
    Hashed,
    MergedPiece,
    NeedRefill,
    Progress,
    RoundChunk,
    RoundDone,
    RoundFailed,
    RoundManifest,
)
from swarmlearn.roles.sl.messages import PeerFault, ShedPages
from swarmlearn.roles.sl.state import held_by_sender
from swarmlearn.sansio import Input, Receive, Request, Start

log = logging.getLogger(__name__)

JOIN_RETRY_S = 2.0
LEAVE_WAIT_S = 8.0  # how long a leaving node waits for its Leave to take effect
ROUNDS_KEPT = 2  # the latest rounds of each contract whose participants the host links to
#: What travels on round lanes rather than on the message connections.
LANE_MESSAGES = (RoundManifest, RoundChunk, MergedPiece)
#: Bytes queued on one peer's link, not yet taken by its mux: a round's weights fall back to
#: the link when the peer's lane cannot be reached.
LINK_QUEUE_BYTES_MAX = 512 * 1024 * 1024


@dataclass(frozen=True)
class ValidatorOptions:
    data_dir: Path
    listen: tuple[str, int]
    sentinel: bool = False
    bootstrap: tuple[str, int] | None = None
    chain_id: str | None = None
    advertise: tuple[str, int] | None = None
    api: tuple[str, int] | None = None  # the HTTP API (HPE's 30304); None: none
    lane_port: int | None = None  # None: round lanes on the --listen port; a number: a
    #                               port of their own on its host (0: any free one)
    consensus: ConsensusConfig = field(default_factory=ConsensusConfig)
    peers: PeerTableConfig = field(default_factory=PeerTableConfig)  # the host's limits


def ca_certificate(identity: Identity) -> bytes:
    """The DER certificate of the CA that issued this node's certificate."""
    return identity.issuing_ca().public_bytes(serialization.Encoding.DER)


def ca_fingerprint(identity: Identity) -> bytes:
    """SHA-256 of :func:`ca_certificate`."""
    return hashlib.sha256(ca_certificate(identity)).digest()


#: Hidden, for tests of a host whose clock is off: seconds added to the clock this node's
#: cores read (its vote times, its timers). Block time does not follow one clock (BFT time).
CLOCK_OFFSET_ENV = "SWARMLEARN_CLOCK_OFFSET_S"


def node_clock() -> Callable[[], float]:
    """The host's clock, shifted by ``SWARMLEARN_CLOCK_OFFSET_S`` when that is set."""
    text = os.environ.get(CLOCK_OFFSET_ENV, "").strip()
    try:
        offset_s = float(text) if text else 0.0
    except ValueError:
        raise ConfigError(
            f"{CLOCK_OFFSET_ENV}: expected seconds (e.g. 600), got {text!r}"
        ) from None
    if not offset_s:
        return time.time
    return lambda: time.time() + offset_s


def host_config(options: ValidatorOptions, seed: int) -> ServiceConfig:
    """The p2p host on ``--listen``: seeded with ``--bootstrap``, its peers file in the data
    directory, the ledger's topics urgent."""
    host, port = options.listen
    advertise = options.advertise
    bootstrap = options.bootstrap
    return ServiceConfig(
        host=host,
        port=port,
        advertise_host=advertise[0] if advertise is not None else None,
        advertise_port=advertise[1] if advertise is not None else 0,
        seeds=(str(PeerAddress(*bootstrap)),) if bootstrap is not None else (),
        data_dir=options.data_dir,
        urgent_topics=VALIDATOR_TOPICS,
        queue_bytes_max=LINK_QUEUE_BYTES_MAX,
        rng_seed=seed,
        table=options.peers,
    )


def own_validator(identity: Identity) -> Validator:
    signer = KeySigner(identity)
    return Validator(signer.node_id, signer.public_key, 1)


async def obtain_genesis(identity: Identity, options: ValidatorOptions) -> Genesis:
    """The chain's genesis: persisted, made (sentinel) or fetched (bootstrap), in that order."""
    path = options.data_dir / GENESIS_FILE
    check_genesis_beside_ledger(options.data_dir, sentinel=options.sentinel)
    if path.exists():
        found = read_genesis(path)
        if options.sentinel and options.chain_id not in (None, found.chain_id):
            raise ConfigError(
                f"--chain-id {options.chain_id}: {options.data_dir} holds chain "
                f"{found.chain_id!r}; a sentinel never starts a chain over another: give a "
                f"fresh --data-dir, or leave out --chain-id to restart {found.chain_id!r}"
            )
        if options.bootstrap is not None:
            await check_same_chain(identity, options, found)
        return found
    if options.sentinel:
        chain_id = options.chain_id or f"swarm-{random.SystemRandom().getrandbits(32):08x}"
        validators = (own_validator(identity),)
        genesis = Genesis(
            chain_id,
            int(time.time() * 1000),
            validators,
            ca_fingerprint(identity),
            ca_certificate(identity),
        )
    elif options.bootstrap is not None:
        genesis = await fetch_genesis(identity, *options.bootstrap)
    else:
        raise ConfigError(
            f"{options.data_dir}: no ledger here; start the first node with --sentinel, "
            "the others with --bootstrap HOST:PORT of a running node"
        )
    try:
        options.data_dir.mkdir(parents=True, exist_ok=True)
        write_atomically(path, encode_header(genesis), overwrite=True)
    except OSError as error:
        raise store_fault(path, "write", error) from None
    return genesis


def read_genesis(path: Path) -> Genesis:
    """The genesis stored at ``path``, or one line saying why it cannot be used."""
    try:
        found = decode_header(path.read_bytes())
    except OSError as error:
        raise ConfigError(f"{path}: cannot be read ({error.strerror or error})") from None
    except (RemoteProtocolError, ValueError):
        found = None
    if not isinstance(found, Genesis):
        raise ConfigError(
            f"{path}: not a genesis file (damaged?); restore it from a backup, or move the "
            "data directory away and --bootstrap afresh"
        )
    return found


async def check_same_chain(identity: Identity, options: ValidatorOptions, stored: Genesis) -> None:
    """Refuse a data directory that holds another chain than the ``--bootstrap`` node's (an
    unreachable bootstrap node is no reason to refuse: the stored chain is used)."""
    host, port = options.bootstrap or ("", 0)
    try:
        theirs = await fetch_genesis(identity, host, port)
    except ConfigError as error:
        log.warning("%s; starting from the chain in %s", error, options.data_dir)
        return
    if encode_header(theirs) != encode_header(stored):
        same = " (same id, another genesis)" if theirs.chain_id == stored.chain_id else ""
        raise ConfigError(
            f"--data-dir {options.data_dir}: holds chain {stored.chain_id!r}, but --bootstrap "
            f"{host}:{port} runs chain {theirs.chain_id!r}{same}; use a fresh --data-dir, or "
            f"remove {options.data_dir / 'ledger'} and {options.data_dir / 'genesis.cbor'}"
        )


async def fetch_genesis(identity: Identity, host: str, port: int) -> Genesis:
    try:
        reply = await ask(identity, host, port, GenesisRequest(), GenesisReply)
    except NETWORK_ERRORS as error:
        raise ConfigError(
            f"--bootstrap {host}:{port}: cannot fetch the genesis: {network_reason(error)}"
        ) from None
    genesis = reply.genesis
    theirs = {genesis.ca_fingerprint, hashlib.sha256(genesis.ca_certificate).digest()}
    if theirs != {ca_fingerprint(identity)}:
        raise ConfigError(
            f"--bootstrap {host}:{port}: refused its genesis: chain {genesis.chain_id!r} "
            "was made under another CA than ours"
        )
    return genesis


class ValidatorNode:
    def __init__(
        self,
        identity: Identity,
        options: ValidatorOptions,
        genesis: Genesis,
        store: DiskStore,
        *,
        on_ready: Callable[[str], None] = print,
    ) -> None:
        self.identity = identity
        self.options = options
        self.me = str(identity.peer_id)
        self.on_ready = on_ready
        self.store = store
        seated = frozenset(v.node for v in genesis.validators)
        self.app = SwarmApp(genesis.chain_id, genesis.ca_certificate, genesis.time_ms, seated)
        seed = int.from_bytes(identity.peer_id.digest[:8], "big")
        signer, verifier = KeySigner(identity), VerifiedCache(KeyVerifier())  # checked once
        self.core = ConsensusCore(
            genesis,
            signer,
            verifier,
            self.app,
            random.Random(seed),
            [],
            options.consensus,
            awaits=partial(expects_more, self.app),
            is_forgery=is_forgery,
        )
        self.lanes = RoundLanes(identity, self._on_lane_message, self._lane_fallback)
        self.network = NodeHost(  # the node's one p2p host
            identity,
            host_config(options, seed),
            self._on_request,
            self.lanes,
            LANE_MESSAGES,
        )
        self.ledger = LedgerOverGossip(self.core, self.network.node)
        self.node = SwarmNodeCore(
            self.ledger,
            self.app,
            lambda body: sign_transaction(identity, genesis.chain_id, body),
            identity.certificate.public_bytes(serialization.Encoding.DER),
            join_at_start=False,  # _join does it, through the bootstrap node when there is one
        )
        self.driver = self.network.drive(
            self.node,
            store=store,
            on_deliver=self._on_deliver,
            clock=node_clock(),
            on_handled=self._on_handled,
        )
        self.trainers = Trainers(self.driver.submit)  # trainers.py: the local glue
        sock = options.data_dir / "sl.sock"
        self.local = LocalEndpoint(
            sock,
            self.trainers.on_contribute,
            self.trainers.on_refilled,
            self.trainers.on_latest,
            on_perf=self.trainers.on_perf,
            on_closed=self.trainers.on_closed,
        )
        self.address = options.listen
        self._waiters: dict[bytes, list[tuple[trio.Event, list[SubmitReply]]]] = {}
        self._committed = trio.Event()  # set (and replaced) at every committed block
        self._round_links: set[str] = set()  # the nodes of this node's open rounds
        self.leaving = False
        self.lock: DataDirLock | None = None  # held from open() until run() ends
        self.persisted: dict[str, tuple[Any, ...]] | None = None  # the store, read by open()

    @classmethod
    async def open(
        cls,
        identity: Identity,
        options: ValidatorOptions,
        *,
        on_ready: Callable[[str], None] = print,
    ) -> ValidatorNode:
        """Lock the data directory (:mod:`~swarmlearn.roles.node.datadir`), then read what it holds:
        the genesis and the ledger, checked before anything listens."""
        lock = DataDirLock.acquire(options.data_dir)
        try:
            genesis = await obtain_genesis(identity, options)
            store = DiskStore(options.data_dir / "ledger")
            try:
                persisted = store.load(genesis.chain_id)
            except BaseException:
                store.close()
                raise
        except BaseException:
            lock.release()
            raise
        node = cls(identity, options, genesis, store, on_ready=on_ready)
        node.lock, node.persisted = lock, persisted
        return node

    async def run(
        self, *, task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        with self._holding_lock(), self.store:  # the store closes before the lock goes
            async with trio.open_nursery() as nursery:
                lane_host, lane_port = self.options.listen[0], self.options.lane_port
                await nursery.start(self.lanes.serve, lane_host, lane_port)
                first = Start(self._take_persisted())
                address = await nursery.start(self.network.run, first)
                host, port = self.options.listen[0], address.port
                self.address = self.options.advertise or (host, port)
                await nursery.start(self.local.serve)
                self._learn_addresses()
                api = ""
                if self.options.api is not None:
                    api_host, api_port = await nursery.start(
                        serve_api, self, self.identity, *self.options.api
                    )
                    api = f", api https://{api_host}:{api_port}"
                self.on_ready(self._ready_line(host, port, api))
                task_status.started((host, port))
                nursery.start_soon(self._join)

    @contextlib.contextmanager
    def _holding_lock(self) -> Iterator[None]:
        """The data directory stays this node's until run() ends, however it ends."""
        try:
            yield
        finally:
            if self.lock is not None:
                self.lock.release()

    def _take_persisted(self) -> dict[str, tuple[Any, ...]]:
        """What open() read from the store (or, for a node built without it, read now)."""
        persisted = self.persisted if self.persisted is not None else self.store.load()
        self.persisted = None  # the core holds it from here
        return persisted

    def _ready_line(self, host: str, port: int, api: str) -> str:
        """What the node prints once it listens: its roles, chain, height and address."""
        roles = ",".join(role.value for role in Role if role in self.identity.info.roles)
        name = self.identity.info.name + (" sentinel" if self.options.sentinel else "")
        return (
            f"swarm-node {name} ({roles or 'no roles'}) chain {self.core.chain_id} height "
            f"{self.core.height - 1} listening on {PeerAddress(host, port, self.me)}{api}"
        )

    # ------------------------------------------------------------ joining

    def _join_transaction(self) -> bytes:
        host, port = self.address
        join = Join(
            f"{host}:{port}", self.identity.certificate.public_bytes(serialization.Encoding.DER)
        )
        return sign_transaction(self.identity, self.core.chain_id, join)

    async def _join(self) -> None:
        """Until the ledger records this node (its address and, for SN members, a seat)."""
        while not self.joined() and not self.leaving:
            tx = self._join_transaction()
            if self.options.bootstrap is not None:
                await self._submit_remote(*self.options.bootstrap, tx)
            else:
                self.driver.submit(Request(SubmitTx(tx)))
            await trio.sleep(JOIN_RETRY_S)

    def joined(self) -> bool:
        """Whether the ledger records this node at its address (and, for SN, its seat)."""
        member = self.app.state.members.get(self.me)
        if member is None or member.address != "{}:{}".format(*self.address):
            return False
        seats = self.core.validator_sets.get(self.core.height + 1, self.core.validators)
        return Role.SN not in member.roles or self.me in seats

    async def leave(self, reason: str = "", wait_s: float = LEAVE_WAIT_S) -> str:
        """Leave the swarm (registry and seat); wait until no height needs this node's vote.
        What happened, in words, for the log and the console."""
        self.leaving = True
        body = Leave("", reason, nonce=time.time_ns())
        tx = sign_transaction(self.identity, self.core.chain_id, body)
        with trio.move_on_after(wait_s):
            reply = await self.submit(tx, wait_s)
            if not reply.accepted:
                return f"leave not done: {reply.reason}"
            while self.me in self.core.validators:  # the seat goes two heights later
                await self._committed.wait()
            return f"left the swarm at height {reply.height}"
        return f"leave not done within {wait_s:g} s"

    async def wait_committed(self) -> None:
        """Wait for this node's next committed block (no deadline: the caller's)."""
        await self._committed.wait()

    async def _submit_remote(self, host: str, port: int, tx: bytes) -> None:
        try:  # the bootstrap node is a seed of the peer table: catching up runs meanwhile
            await ask(self.identity, host, port, SubmitRequest(tx), SubmitReply)
        except NETWORK_ERRORS as error:
            log.warning("join request to %s:%d failed: %s", host, port, error)

    # ------------------------------------------------------------ callbacks

    def _lane_fallback(self, peer: str, message: Message) -> None:
        self.network.send_direct(peer, message)

    def _on_lane_message(self, peer: str, message: Message, digest: bytes | None) -> None:
        """A round message from a lane (lanes.py), its payload already hashed there. The
        lanes' receive budget gets the payload back once the core handled it (or now)."""
        if isinstance(message, RoundChunk | MergedPiece) and digest is not None:
            if not self.driver.submit(Request(Hashed(peer, message, digest))):
                self.lanes.release(len(message.data), peer)
        elif isinstance(message, LANE_MESSAGES):
            self.driver.submit(Receive(peer, message))
        else:
            log.info("dropped a %s from %s's round lane", type(message).__name__, peer[:8])
            self.lanes.release(len(payload_of(message)), peer)

    def _on_handled(self, event: Input) -> None:
        """Back to the lanes' budgets: the payload handled, and the chunks held now; and
        links kept with the peers a merged-model fetch asks now."""
        if isinstance(event, Request) and isinstance(event.value, Hashed):
            self.lanes.release(len(event.value.message.data), event.value.sender)
        self.lanes.set_held(held_by_sender(self.node.sl.rounds, self.me))
        self._keep_links()

    def _keep_links(self) -> None:
        """The host holds links with the nodes of this node's open rounds (as of the last
        block) and with the sources of its running merged-model fetches."""
        self.network.keep(self._round_links | self.node.sl.fetch_sources())

    async def submit(self, data: bytes, wait_s: float = 0.0) -> SubmitReply:
        """Queue a transaction; with ``wait_s``, wait (that long at most) until it is committed."""
        if not self.driver.submit(Request(SubmitTx(data))):
            return SubmitReply(False, "node overloaded")
        if wait_s <= 0:
            return SubmitReply(True, "")
        # Registered before the next checkpoint, so the commit cannot slip past the waiter.
        waiter: tuple[trio.Event, list[SubmitReply]] = (trio.Event(), [])
        self._waiters.setdefault(data, []).append(waiter)
        with trio.move_on_after(wait_s):
            await waiter[0].wait()
        if waiter[1]:
            return waiter[1][0]
        self._waiters[data].remove(waiter)
        if not self._waiters[data]:
            del self._waiters[data]
        return SubmitReply(False, f"not committed within {wait_s:g} s")

    def _wake(self, data: bytes, reply: SubmitReply) -> None:
        for event, outcome in self._waiters.pop(data, ()):
            outcome.append(reply)
            event.set()

    def _on_deliver(self, value: Any) -> None:
        if isinstance(value, Progress | RoundDone | RoundFailed | NeedRefill | ToJoiner):
            log.info("%s", value.text if isinstance(value, Progress) else type(value).__name__)
            self.trainers.deliver(value)
        elif isinstance(value, Committed):
            self._committed.set()
            self._committed = trio.Event()
            self._learn_addresses()
            self._round_links = self._round_peers()
            self._keep_links()  # before the round's messages go out
            for tx in value.txs:
                outcome = self.app.outcome(tx) or "ok"
                accepted = outcome == "ok"
                self._wake(tx, SubmitReply(accepted, "" if accepted else outcome, value.height))
        elif isinstance(value, ForgedTx):
            self.network.report_forged(value.sender, value.reason)
        elif isinstance(value, TxRefused):
            log.info("transaction refused: %s", value.reason)
            self._wake(value.data, SubmitReply(False, value.reason))
        elif isinstance(value, ShedPages):
            shed_pages(value.view)  # merged bytes written into the trainer's handover file
        elif isinstance(value, PeerFault):
            self.network.report_forged(value.peer, value.reason)

    def _learn_addresses(self) -> None:
        """The members' recorded addresses seed the host's peer table."""
        members = {
            node: member.address
            for node, member in self.app.state.members.items()
            if member.roles & NODE_ROLES and node != self.me
        }
        self.network.learn(member_addresses(members))

    def _round_peers(self) -> set[str]:
        """The other nodes of the open rounds this node checked in to or takes part in (the
        host holds links with them)."""
        peers: set[str] = set()
        for contract in self.app.state.contracts.values():
            for number in sorted(contract.rounds)[-ROUNDS_KEPT:]:
                record = contract.rounds[number]
                if record.status not in (RoundStatus.OPEN, RoundStatus.EXCHANGING):
                    continue
                if self.me in record.checkins or self.me in record.participants:
                    peers.update(record.checkins, record.participants)
        return peers

    async def _on_request(self, connection: Connection, message: Message) -> bool:
        match message:
            case Ping(nonce):
                await connection.send(Pong(nonce))
            case GenesisRequest():
                await connection.send(GenesisReply(self.core.genesis))
            case StatusRequest():
                await connection.send(self.status())
            case SubmitRequest(data, wait_s):
                await connection.send(await self.submit(data, wait_s))
            case LedgerQuery(what) if what in views.VIEWS:
                await connection.send(LedgerReply(json.dumps(views.view(self.app, what))))
            case _:
                return False
        return True

    def status(self) -> NodeStatus:
        core = self.core
        last = core.blocks.get(core.height - 1)
        return NodeStatus(
            node=self.me,
            chain_id=core.chain_id,
            height=core.height - 1,
            last_block_hash=last[0].hash if last else b"",
            app_hash=core.app.app_hash(),
            validators=tuple(v.node for v in core.validators.validators),
            peers=tuple(self.network.peers()),
            blocks_with_txs=sum(1 for block, _ in core.blocks.values() if block.txs),
            txs=sum(len(block.txs) for block, _ in core.blocks.values()),
        )

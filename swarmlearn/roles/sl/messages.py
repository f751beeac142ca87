"""What the SL round core (:mod:`swarmlearn.roles.sl.core`) speaks: its wire messages, its
inputs, deliveries and effect, and the byte-level helpers it uses on the merged model.

Round messages (tags 0xA0-0xA3, 0xA5-0xA7, 0xBA) travel between nodes: manifests, chunks and
merged pieces on round lanes where a node has them (:mod:`swarmlearn.p2p.bulk_push`), the
rest (small) on the message connections. :class:`ResendRound` and :class:`ResendUnheld` are
the loss repair's ask and its "cannot" (:mod:`swarmlearn.roles.sl.repair`).
:class:`Contribute`, :class:`Hashed` and :class:`Refilled` are local inputs from the node;
:class:`Progress`, :class:`RoundDone`, :class:`RoundFailed` and :class:`NeedRefill` are
delivered to the trainer (which answers the last with :class:`Refilled`); a trainer that
joins late asks :class:`FetchLatest` and hears :class:`LatestProgress`, then
:class:`LatestModel` or :class:`LatestFailed`; :class:`SubmitSigned` asks the node to put a
transaction on the ledger.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np

from swarmlearn.consensus.ledger.txs import TensorSpec
from swarmlearn.digest import content_digest
from swarmlearn.merge import Layout
from swarmlearn.merge.manifest import manifest_root
from swarmlearn.p2p.wire import Message, Payload
from swarmlearn.sansio import Effect, NodeId

# ---------------------------------------------------------------- messages (0xA0-0xA7, 0xBA)


@dataclass(frozen=True)
class RoundManifest(Message, tag=0xA0):
    contract: str
    round: int
    attempt: int
    chunk_hashes: tuple[bytes, ...]


@dataclass(frozen=True)
class RoundChunk(Message, tag=0xA1):
    contract: str
    round: int
    attempt: int
    index: int
    data: Payload


@dataclass(frozen=True)
class MergedPiece(Message, tag=0xA2):
    contract: str
    round: int
    attempt: int
    start: int  # byte offset in the flat layout
    data: Payload


@dataclass(frozen=True)
class FetchMerged(Message, tag=0xA3):
    """Ask a peer for a round's merged model (:mod:`swarmlearn.roles.sl.fetch`): its
    manifest (``RoundManifest``, attempt -1) when ``manifest``, then one ``MergedPiece``
    (attempt -1) per chunk of ``indexes``; or ``MergedUnavailable``."""

    contract: str
    round: int
    manifest: bool = True
    indexes: tuple[int, ...] = ()


@dataclass(frozen=True)
class MergedUnavailable(Message, tag=0xA5):
    """The answer to FetchMerged from a node that no longer holds (or never held) that
    round's merged model; it keeps a copy of the contract's next one for the asker."""

    contract: str
    round: int


@dataclass(frozen=True)
class MergePartials(Message, tag=0xA6):
    """An owner's partial sums for one step of a global merge method (geometric median, Krum):
    per float piece of its range, a row of float64 numbers (little-endian), pieces in layout
    order (:mod:`swarmlearn.roles.sl.global_merge`). Small: rows x (N + 2) or N(N-1)/2."""

    contract: str
    round: int
    attempt: int
    step: int
    rows: bytes


class RoundPart(enum.IntEnum):
    """What of an attempt a participant asks a peer to send again (:class:`ResendRound`)."""

    MANIFEST = 1  # the peer's manifest (indexes: none)
    CHUNKS = 2  # the peer's chunks of the asker's range (indexes: chunk indexes)
    PIECES = 3  # the peer's merged range (indexes: the byte offsets of its chunk-cut pieces)
    PARTIALS = 4  # the peer's partial sums of a global method's step (indexes: the step)


@dataclass(frozen=True)
class ResendRound(Message, tag=0xA7):
    """A participant of the attempt lacks these parts of the receiver's: send them again
    (a message was lost). Answered with the parts, or :class:`ResendUnheld` for those the
    receiver no longer holds; an ask for what the receiver has not sent yet is ignored (it
    comes when ready)."""

    contract: str
    round: int
    attempt: int
    what: RoundPart
    indexes: tuple[int, ...]


@dataclass(frozen=True)
class ResendUnheld(Message, tag=0xBA):
    """The answer to :class:`ResendRound` for parts the sender can send no more (its weights
    were written over, the round ended there): the asker stops asking for them, and the
    attempt waits for its deadline (the ledger re-plans)."""

    contract: str
    round: int
    attempt: int
    what: RoundPart
    indexes: tuple[int, ...]


# ---------------------------------------------------------------- inputs and deliveries


@dataclass(frozen=True)
class Contribute:
    """Request from the trainer: these weights, for the contract's next round."""

    contract: str
    flat: bytes | bytearray | memoryview
    layout: Layout
    weight: int = 1
    min_peers: int = 2
    merge_method: str = "mean"
    #: HPE's PERFDATA for this round, when the trainer reports it: loss, metric, epochs
    #: done, epochs in all.
    perf: tuple[float, float, int, int] | None = None
    #: The trainer's own training is over: these are its final weights (said in the check-in).
    final: bool = False
    #: The hash of each chunk of ``flat``, when the node already computed them off the event
    #: loop (local, so trusted); hashed here otherwise.
    chunk_hashes: tuple[bytes, ...] | None = None
    #: The trainer's syncTimeout: a round that has not closed by then fails here (None: wait).
    wait_s: float | None = None
    #: The trainer can write these weights into ``flat`` again when asked (:class:`NeedRefill`):
    #: an attempt after merged bytes landed over them (in its handover file) then goes on.
    refill: bool = False
    #: The trainer session (a connection to the node's local endpoint) these weights came
    #: from: what the round delivers goes to that session only (0: no session, one trainer).
    session: int = 0


@dataclass(frozen=True)
class SessionClosed:
    """Input from the node: a trainer session went away. Its queued weights are dropped, and
    its check-ins in rounds still open are withdrawn on the ledger (``CheckOut``); a round
    past its check-ins goes on without a listener (the other participants need its weights)."""

    session: int


@dataclass(frozen=True)
class Hashed:
    """Input from the node: a round message that came on a lane, with the hash of its
    payload, computed off the event loop by the node's own lane thread (so trusted, unlike
    the message). The core compares it with the commitment instead of hashing again."""

    sender: NodeId
    message: RoundChunk | MergedPiece
    digest: bytes


@dataclass(frozen=True)
class ReportPerf:
    """Request from the trainer: PERFDATA for a round that is over (the final round's,
    measured on the final merged model); it replaces what came with the check-in."""

    contract: str
    round: int
    loss: float
    metric: float
    epochs_done: int
    epochs_total: int


@dataclass(frozen=True)
class Refilled:
    """Input from the node: the trainer wrote its weights into its handover file again
    (``ok``), or could not (``reason``). ``chunk_hashes``: those of the file's bytes, hashed
    by the node off the event loop; hashed here when None. They must be the committed ones."""

    contract: str
    round: int
    ok: bool
    reason: str = ""
    chunk_hashes: tuple[bytes, ...] | None = None
    session: int = 0  # the trainer session that wrote it (only the round's own counts)


@dataclass(frozen=True)
class LedgerChanged:
    """Input from the node: a block was committed; look at the rounds again."""


@dataclass(frozen=True)
class Progress:
    contract: str
    round: int
    text: str
    session: int = 0  # the trainer session it is for (that of the round's contribution)


@dataclass(frozen=True)
class RoundDone:
    contract: str
    round: int
    root: bytes
    flat: bytes | bytearray | memoryview
    training_over: bool = False  # every participant of this round has finished training
    participants: int = 0  # how many nodes' weights the merge holds
    session: int = 0


@dataclass(frozen=True)
class RoundFailed:
    contract: str
    round: int
    reason: str
    #: Merged bytes were written over the contribution (the trainer's handover file): what
    #: the file holds now is no one's weights. The trainer keeps the weights it has.
    overwritten: bool = False
    session: int = 0
    #: The ledger refused the trainer's check-in (``reason`` is the ledger's): syncing these
    #: weights again cannot help; the trainer's sync fails with it.
    refused: bool = False


@dataclass(frozen=True)
class NeedRefill:
    """Delivered to the trainer: write your weights (those of this round's contribution) into
    the handover file again, then say so (:class:`Refilled`); an attempt of the round needs
    them after merged bytes were written over them."""

    contract: str
    round: int
    attempt: int
    session: int = 0


@dataclass(frozen=True)
class FetchLatest:
    """Request from a trainer: the contract's latest merged model, for a model of this
    layout (it joins late, or restarted); answered within ``wait_s``."""

    contract: str
    layout: Layout
    wait_s: float


@dataclass(frozen=True)
class LatestProgress:
    contract: str
    text: str


@dataclass(frozen=True)
class LatestModel:
    """Delivered to the trainers that asked: the model of round ``round``, whose root is the
    ledger's; round 0: no round of the contract has finished yet."""

    contract: str
    round: int
    root: bytes
    flat: bytes | bytearray | memoryview


@dataclass(frozen=True)
class LatestFailed:
    contract: str
    reason: str
    mismatch: bool = False  # the trainer's model differs from the contract's


@dataclass(frozen=True)
class PeerFault:
    """Delivered to the node: ``peer`` broke the round's protocol (a chunk twice, one outside
    the owner's range): the node's policing counts it against the peer, as it counts forged
    transactions (enough of them and the peer is banned)."""

    peer: str
    reason: str


@dataclass(frozen=True)
class ShedPages:
    """Delivered to the node: the round wrote bytes ``[start, start + size)`` of the trainer's
    handover file through ``view``; the node's mapping may forget those pages
    (:func:`swarmlearn.roles.local.handover.shed_pages`: an ``madvise``, which the core leaves to
    its driver). The view stays out of ``repr``, so a simulator's fingerprint is the same run
    after run."""

    start: int
    size: int
    view: memoryview = field(repr=False, compare=False)


@dataclass(frozen=True)
class SubmitSigned:
    """Effect for the node: put this signed transaction on the ledger."""

    tx: bytes


#: The SL core's effects: the sans-IO vocabulary plus one of its own, handled by the node.
SLEffect = Effect | SubmitSigned


# ---------------------------------------------------------------- helpers of the core


def handover_file(flat: bytes | bytearray | memoryview, size: int) -> memoryview | None:
    """The contribution as a writable byte view of a shared mapping (the trainer's handover
    file, :mod:`swarmlearn.roles.local.handover`) that the round may assemble the merged model in;
    None for any other buffer (a socket frame, bytes), which the round must not write."""
    # The exporter's type names a mapping: the core imports no mmap (tools/check_boundary.py).
    if not isinstance(flat, memoryview) or flat.readonly or type(flat.obj).__module__ != "mmap":
        return None
    if not flat.c_contiguous or flat.nbytes != size:
        return None
    return flat.cast("B") if flat.format != "B" or flat.ndim != 1 else flat


def range_out(buffer: bytearray | memoryview, start: int, stop: int) -> memoryview | None:
    """The owner's range of the merged model's buffer, for its merge to write in place (when
    the buffer sits at the layout's 8-byte phase, as the merge kernels need)."""
    if np.frombuffer(buffer, np.uint8).ctypes.data % 8:
        return None
    return memoryview(buffer)[start:stop]


def note_digest(
    digests: dict[int, bytes], layout: Layout, start: int, size: int, digest: bytes | None
) -> None:
    """Bytes ``[start, start + size)`` of the merged model were just written: forget the digests
    of the chunks they touch, and keep ``digest`` when they are exactly one whole chunk."""
    if size == 0:
        return
    first, last = start // layout.chunk_bytes, (start + size - 1) // layout.chunk_bytes
    for chunk in range(first, last + 1):
        digests.pop(chunk, None)
    if digest is not None and first == last and layout.chunk_span(first) == (start, start + size):
        digests[first] = digest


def merged_root(layout: Layout, merged: bytearray | memoryview, digests: dict[int, bytes]) -> bytes:
    """The manifest root of the merged model, hashing only the chunks no lane hashed."""
    return manifest_root(layout, merged_hashes(layout, merged, digests))


def merged_hashes(
    layout: Layout, merged: bytearray | memoryview, digests: dict[int, bytes]
) -> tuple[bytes, ...]:
    """The chunk hashes of the merged model, hashing only the chunks no lane hashed."""
    view = memoryview(merged)
    hashes = []
    for chunk in range(layout.chunk_count):
        known = digests.get(chunk)
        if known is None:
            start, stop = layout.chunk_span(chunk)
            known = content_digest(view[start:stop])
        hashes.append(known)
    return tuple(hashes)


def chunk_cuts(layout: Layout, start: int, stop: int) -> list[tuple[int, int]]:
    """Bytes ``[start, stop)`` cut at chunk boundaries: ``(cut, end)`` pairs, in order."""
    first = (start // layout.chunk_bytes + 1) * layout.chunk_bytes
    cuts = [start, *range(first, stop, layout.chunk_bytes)]
    return list(zip(cuts, [*cuts[1:], stop], strict=True))


def cuts_within(
    layout: Layout, start: int, stop: int, piece_start: int, piece_stop: int
) -> list[tuple[int, int]] | None:
    """The chunk cuts of range ``[start, stop)`` (:func:`chunk_cuts`) that the piece
    ``[piece_start, piece_stop)`` covers, or None when it does not begin and end on cuts."""
    size = layout.chunk_bytes
    if start == stop == piece_start == piece_stop:  # an empty range: one empty piece
        return [(start, stop)]

    def on_cut(at: int) -> bool:
        return at in (start, stop) or (start < at < stop and at % size == 0)

    if not (start <= piece_start < piece_stop <= stop) or not (
        on_cut(piece_start) and on_cut(piece_stop)
    ):
        return None
    first = (piece_start // size + 1) * size
    cuts = [piece_start, *range(first, piece_stop, size)]
    return list(zip(cuts, [*cuts[1:], piece_stop], strict=True))


def specs_of(layout: Layout) -> tuple[TensorSpec, ...]:
    return tuple(TensorSpec(t.name, t.dtype, tuple(t.shape)) for t in layout.tensors)

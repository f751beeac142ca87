"""The local endpoint's messages: what a training process and its node say over the Unix
socket of :mod:`swarmlearn.roles.local.endpoint` (tags 0xB0-0xBF).

A trainer hands over its weights (:class:`LocalContribute`) and hears :class:`LocalProgress`
lines, then :class:`LocalRoundDone` or :class:`LocalRoundFailed`; the node may ask it to write
its weights into its handover file again (:class:`LocalRefill`, answered with
:class:`LocalRefilled`). A trainer that joins late asks for the contract's latest merged model
(:class:`LocalLatest`) and hears :class:`LocalProgress` lines, then :class:`LocalLatestReply`.
"""

from __future__ import annotations

from dataclasses import dataclass

from swarmlearn.merge.manifest import Layout, TensorSpec
from swarmlearn.p2p.wire import Message, Payload


@dataclass(frozen=True)
class LocalTensor(Message, tag=0xB0):
    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int


@dataclass(frozen=True)
class LocalContribute(Message, tag=0xB1):
    contract: str
    weight: int
    min_peers: int
    merge_method: str
    tensors: tuple[LocalTensor, ...]
    total_bytes: int
    chunk_bytes: int
    data: Payload
    #: HPE's PERFDATA for this round (loss, metric, epochs done, epochs in all), if known.
    perf: tuple[float, float, int, int] | None = None
    final: bool = False  # the trainer's own training is over
    shared: str = ""  # the weights are in this handover file, not in ``data`` (handover.py)
    sync_timeout_s: float = 0.0  # the round fails at the node if not closed by then (0: never)
    refill: bool = False  # the trainer answers LocalRefill (writes its weights again)

    def layout(self) -> Layout:
        specs = tuple(TensorSpec(t.name, t.dtype, t.shape, t.offset) for t in self.tensors)
        return Layout(specs, self.total_bytes, self.chunk_bytes)

    @classmethod
    def of(
        cls,
        contract: str,
        layout: Layout,
        flat: bytes | bytearray | memoryview,
        *,
        weight: int,
        min_peers: int,
        merge_method: str,
        perf: tuple[float, float, int, int] | None = None,
        final: bool = False,
        shared: str = "",
        sync_timeout_s: float = 0.0,
        refill: bool = False,
    ) -> LocalContribute:
        tensors = tuple(
            LocalTensor(t.name, t.dtype, tuple(t.shape), t.offset) for t in layout.tensors
        )
        return cls(
            contract,
            weight,
            min_peers,
            merge_method,
            tensors,
            layout.total_bytes,
            layout.chunk_bytes,
            flat,
            perf,
            final,
            shared,
            sync_timeout_s,
            refill,
        )


@dataclass(frozen=True)
class LocalProgress(Message, tag=0xB2):
    round: int
    text: str


@dataclass(frozen=True)
class LocalRoundDone(Message, tag=0xB3):
    round: int
    root: bytes
    data: Payload
    training_over: bool = False
    participants: int = 0
    shared: bool = False  # the merged weights are in the contribution's handover file


@dataclass(frozen=True)
class LocalRoundFailed(Message, tag=0xB4):
    round: int
    reason: str
    overwritten: bool = False  # the handover file holds a partial merge, no one's weights
    refused: bool = False  # the ledger refused the check-in (reason: the ledger's)


@dataclass(frozen=True)
class LocalRefill(Message, tag=0xB5):
    """Node -> trainer: write this round's weights into the handover file again."""

    round: int
    attempt: int


@dataclass(frozen=True)
class LocalRefilled(Message, tag=0xB6):
    """Trainer -> node: the weights are in the handover file again (or, not ok, why not)."""

    round: int
    ok: bool
    reason: str = ""


def local_tensors(layout: Layout) -> tuple[LocalTensor, ...]:
    return tuple(LocalTensor(t.name, t.dtype, tuple(t.shape), t.offset) for t in layout.tensors)


@dataclass(frozen=True)
class LocalLatest(Message, tag=0xB7):
    """Trainer -> node: the contract's latest merged model, for a model of this layout (a
    trainer that joins late, or restarts, starts from it). Answered with LocalLatestReply."""

    contract: str
    tensors: tuple[LocalTensor, ...]
    total_bytes: int
    chunk_bytes: int
    wait_s: float  # the node gives up (and says why) after this long
    shared: str = ""  # write the model into this handover file, not into the reply

    def layout(self) -> Layout:
        specs = tuple(TensorSpec(t.name, t.dtype, t.shape, t.offset) for t in self.tensors)
        return Layout(specs, self.total_bytes, self.chunk_bytes)

    @classmethod
    def of(cls, contract: str, layout: Layout, wait_s: float, shared: str = "") -> LocalLatest:
        tensors = local_tensors(layout)
        return cls(contract, tensors, layout.total_bytes, layout.chunk_bytes, wait_s, shared)


@dataclass(frozen=True)
class LocalLatestReply(Message, tag=0xB8):
    """Node -> trainer: the model of round ``round`` (its root is the ledger's); round 0 with
    no reason: no round of the contract has finished yet; a reason: why there is none."""

    round: int
    root: bytes
    data: Payload
    reason: str = ""
    mismatch: bool = False  # the trainer's model differs from the contract's (reason: where)
    shared: bool = False  # the model is in the trainer's handover file


@dataclass(frozen=True)
class LocalPerf(Message, tag=0xB9):
    """Trainer -> node: HPE's PERFDATA for round ``round``, measured after it (the final
    round's, on the final merged model); the node puts it on the ledger. No reply."""

    contract: str
    round: int
    loss: float
    metric: float
    epochs_done: int
    epochs_total: int

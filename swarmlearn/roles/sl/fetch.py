"""Fetching a merged model the ledger settled on, from several peers at once (sans-IO).

Two parts of the SL core need a round's merged model they do not hold: a participant that
missed the merge (paused, late, dissenting: :mod:`~swarmlearn.roles.sl.ends`) and a trainer
that joins late (:mod:`~swarmlearn.roles.sl.latest`). Both run a :class:`ModelFetch`. The
core decides everything here; the driver only moves the messages (``FetchMerged`` on a peer's
link, the manifest and the chunks on its round lanes, hashed there as they arrive).

Theory of operation
-------------------
The ledger holds the model's manifest root, the contract its layout. The fetch works with
the bulk path's sans-IO pieces (:mod:`swarmlearn.p2p.transfer`, as the p2p blob fetch of
:mod:`swarmlearn.p2p.bulk` does over its own lanes): an :class:`~swarmlearn.p2p.transfer.
Assembler` checks every chunk (index, exact size, hash as in the manifest) before it lands
in the buffer, and a :class:`~swarmlearn.p2p.transfer.ChunkScheduler` splits the chunks
among the sources.

1. *Manifest.* Up to ``SOURCES_AT_ONCE`` sources are asked at once (``FetchMerged`` with
   ``manifest``); a source answers with the model's chunk hashes (``RoundManifest``, attempt
   -1) or ``MergedUnavailable``. A manifest whose root is not the ledger's gets its sender
   dropped for good (*banned*); the first good one fixes the hashes.
2. *Chunks.* The missing chunks are split among the sources asked (lowest first, a window
   of ``ceil(missing / sources)`` each, at most ``IN_FLIGHT_BYTES_MAX`` in flight in all,
   plus one chunk per source in the endgame),
   each asked with ``FetchMerged(indexes=...)`` and answered one ``MergedPiece`` (attempt
   -1) per chunk. Each delivered chunk frees a slot of its source's window, which asks for
   the next; at the end an idle source duplicates one chunk still out elsewhere (endgame),
   so one slow source does not hold up the last chunks. A chunk that does not match the
   manifest bans its sender; its chunks go back to the pool for the others.
3. *Stalls, passes, deadline.* One timer per fetch ticks every ``STALL_S``: a source with
   something outstanding that sent nothing since the last tick is dropped, its chunks go
   back to the pool, and a source not asked yet takes its place. A source that answers
   ``MergedUnavailable`` is dropped the same way. When every source is dropped with chunks
   still missing, the pass is over: after a backoff (doubling from ``BACKOFF_S``) the next
   pass asks again every source not banned, up to ``passes`` passes; then, or at the
   deadline, the fetch has failed (:attr:`ModelFetch.failure` says why).

Every chunk matched a manifest whose root is the ledger's, so the assembled model is the
ledger's: it is not hashed again. A chunk the fetch did not ask that source for (a stale
answer of a dropped source, an endgame duplicate that came second) is not taken
(:meth:`ModelFetch.expects`: the core drops it).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import Any

from swarmlearn.merge.manifest import Layout, Manifest, manifest_root
from swarmlearn.p2p.transfer import Assembler, BlobManifest, ChunkScheduler, Verdict
from swarmlearn.roles.sl.merged import REQUEST_CHUNKS_MAX
from swarmlearn.roles.sl.messages import (
    FetchMerged,
    MergedPiece,
    MergedUnavailable,
    RoundManifest,
    SLEffect,
)
from swarmlearn.sansio import Log, NodeId, Send, SetTimer

#: What a source answers a fetch with.
Fetched = RoundManifest | MergedPiece | MergedUnavailable
#: Sources asked at once; the others wait for one of them to drop out.
SOURCES_AT_ONCE = 4
#: Chunk bytes asked of all sources together and not arrived yet.
IN_FLIGHT_BYTES_MAX = 64 * 1024 * 1024
#: A source with something outstanding that sends nothing for this long is dropped.
STALL_S = 10.0
#: After a pass that every source dropped out of, the next one after this (doubling).
BACKOFF_S = 1.0
#: A fetch's deadline: this, plus the model's size at ``RATE_MIN_BYTES_S`` (whole seconds).
DEADLINE_BASE_S = 30.0
RATE_MIN_BYTES_S = 1024 * 1024


def deadline_s(total_bytes: int) -> float:
    """How long a fetch of a model of ``total_bytes`` may take in all."""
    return DEADLINE_BASE_S + math.ceil(total_bytes / RATE_MIN_BYTES_S)


class ModelFetch:
    """One merged model fetched from several sources (see the module docstring).

    The owner feeds it the inputs that concern it (:meth:`manifest`, :meth:`piece`,
    :meth:`unavailable`, the timer ``tag`` it chose, fired: :meth:`tick`) and reads
    :attr:`complete` (the model is in :attr:`buffer`) or :attr:`failure` after each.
    """

    def __init__(
        self,
        contract: str,
        number: int,
        root: bytes,
        layout: Layout,
        sources: Sequence[NodeId],
        tag: Hashable,
        *,
        passes: int = 1,
        deadline: float | None = None,
    ) -> None:
        self.contract, self.number, self.root, self.layout = contract, number, root, layout
        self.sources = tuple(sources)
        self.tag = tag
        self.passes = passes
        self.deadline = deadline
        self.buffer = bytearray(layout.total_bytes)
        self.assembler: Assembler | None = None  # once a manifest matched the ledger's root
        self.scheduler: ChunkScheduler | None = None
        self.waiting: list[NodeId] = []  # sources not asked yet in this pass
        self.active: list[NodeId] = []  # asked in this pass, not dropped
        self.banned: dict[NodeId, str] = {}  # sent what the ledger's root rules out: why
        self.heard: dict[NodeId, int] = {}  # answers from each source
        self.seen: dict[NodeId, int] = {}  # ``heard`` at the last tick
        self.pass_number = 0
        self.backing_off = False
        self.failure = ""
        self.chunks_from: dict[NodeId, int] = {}
        self.wasted_bytes = 0

    # ------------------------------------------------------------ what the owner reads

    @property
    def complete(self) -> bool:
        return self.assembler is not None and self.assembler.complete

    @property
    def over(self) -> bool:
        return self.complete or bool(self.failure)

    def hashes(self) -> tuple[bytes, ...] | None:
        """The model's chunk hashes, once a manifest matched the ledger's root."""
        return None if self.assembler is None else self.assembler.manifest.chunk_hashes

    def asking(self) -> list[NodeId]:
        """The sources asked now, in the order they were asked."""
        return list(self.active)

    def expects(self, sender: NodeId, message: Fetched) -> bool:
        """Whether ``message`` from ``sender`` answers an ask of this fetch (a chunk: one
        asked of ``sender`` and not arrived yet)."""
        if self.over or sender not in self.active:
            return False
        if not isinstance(message, MergedPiece):
            return True
        if self.scheduler is None:
            return False
        index, cut = divmod(message.start, self.layout.chunk_bytes)
        return not cut and index in self.scheduler.in_flight.get(sender, [])

    # ------------------------------------------------------------ inputs

    def start(self, now: float) -> list[SLEffect]:
        """The first pass: ask the first sources for the manifest."""
        return self._next_pass(now)

    def receive(
        self, sender: NodeId, message: Fetched, digest: bytes | None, now: float
    ) -> list[SLEffect]:
        """An answer from ``sender`` (``digest``: a chunk's hash, computed by a lane)."""
        match message:
            case RoundManifest(chunk_hashes=hashes):
                return self.manifest(sender, hashes, now)
            case MergedPiece(start=start, data=data):
                return self.piece(sender, start, data, digest, now)
            case MergedUnavailable():
                return self.unavailable(sender, now)

    def manifest(self, sender: NodeId, hashes: tuple[bytes, ...], now: float) -> list[SLEffect]:
        """``sender``'s manifest of the model (``RoundManifest``, attempt -1)."""
        if self.over or sender not in self.active:
            return []
        self._heard(sender)
        try:
            good = manifest_root(self.layout, hashes) == self.root
        except ValueError:  # not one hash per chunk
            good = False
        if not good:
            return self._ban(
                sender, "its manifest of the model does not match the ledger's root", now
            )
        if self.assembler is not None:
            return []  # a second source's, alike
        blob = BlobManifest.from_merge(Manifest(self.layout, hashes, self.root))
        self.assembler = Assembler(blob, bytes_max=self.layout.total_bytes, buffer=self.buffer)
        window = self._window(blob.chunk_count, len(self.active))
        self.scheduler = ChunkScheduler(range(blob.chunk_count), self.active, window)
        return self._ask_chunks()

    def piece(
        self, sender: NodeId, start: int, data: Any, digest: bytes | None, now: float
    ) -> list[SLEffect]:
        """A chunk from ``sender`` (``MergedPiece``, attempt -1; ``digest``: hashed by a lane)."""
        if self.over or self.scheduler is None or self.assembler is None:
            return []
        index, size = divmod(start, self.layout.chunk_bytes)[0], len(data)
        asked = self.scheduler.in_flight.get(sender, [])
        if start % self.layout.chunk_bytes or index not in asked:
            self.wasted_bytes += size  # not asked of it (a stale or duplicate answer)
            return []
        self._heard(sender)
        verdict = self.assembler.offer(index, data, digest)
        if verdict.is_fault:
            why = f"its chunk {index} does not match the ledger's root ({verdict.value})"
            return self._ban(sender, why, now)
        self.scheduler.delivered(sender, index)
        if verdict == Verdict.ACCEPTED:
            self.chunks_from[sender] = self.chunks_from.get(sender, 0) + 1
        else:
            self.wasted_bytes += size
        if self.complete:
            return []
        return self._ask_chunks()

    def unavailable(self, sender: NodeId, now: float) -> list[SLEffect]:
        """``sender`` does not hold the model (``MergedUnavailable``)."""
        if self.over or sender not in self.active:
            return []
        return self._drop(sender, now)

    def tick(self, now: float) -> list[SLEffect]:
        """The fetch's timer fired: a backoff ended, or a stall period (or the deadline)."""
        if self.over:
            return []
        if self.deadline is not None and now >= self.deadline - 1e-6:
            return self._fail(f"not complete by its deadline ({self._sources_text()})")
        if self.backing_off:
            return self._next_pass(now)
        effects: list[SLEffect] = []
        for source in list(self.active):
            if self.heard.get(source, 0) == self.seen.get(source, 0) and self._owes(source):
                text = (
                    f"round {self.number}: {source[:8]} sent nothing of the merged model"
                    f" in {STALL_S:g} s; asking the others"
                )
                effects += [Log(text, "warning"), *self._drop(source, now, refill=False)]
        self.seen = dict(self.heard)
        return effects + self._refill(now)

    # ------------------------------------------------------------ the passes and the sources

    def _next_pass(self, now: float) -> list[SLEffect]:
        self.backing_off = False
        self.pass_number += 1
        self.waiting = [s for s in self.sources if s not in self.banned]
        self.active = []
        self.seen = dict(self.heard)
        return self._refill(now)

    def _refill(self, now: float) -> list[SLEffect]:
        """Ask sources not asked yet until ``SOURCES_AT_ONCE`` are; none left: the pass is
        over. Then the stall timer (or the backoff before the next pass)."""
        effects: list[SLEffect] = []
        while len(self.active) < SOURCES_AT_ONCE and self.waiting:
            source = self.waiting.pop(0)
            self.active.append(source)
            if self.scheduler is None:
                effects.append(Send(source, FetchMerged(self.contract, self.number, True, ())))
            else:
                self.scheduler.add_source(source)
        if self.scheduler is not None:
            effects += self._ask_chunks()
        if self.active:
            return [*effects, self._timer(STALL_S, now)]
        if self.pass_number >= self.passes:
            return effects + self._fail(f"no source sent it ({self._sources_text()})")
        self.backing_off = True
        return [*effects, self._timer(BACKOFF_S * 2 ** (self.pass_number - 1), now)]

    def _ask_chunks(self) -> list[SLEffect]:
        """Fill every active source's window with chunks from the pool."""
        assert self.scheduler is not None
        effects: list[SLEffect] = []
        for source in self.active:
            indexes = self.scheduler.assign(source)
            for at in range(0, len(indexes), REQUEST_CHUNKS_MAX):
                ask = tuple(indexes[at : at + REQUEST_CHUNKS_MAX])
                effects.append(Send(source, FetchMerged(self.contract, self.number, False, ask)))
        return effects

    def _window(self, chunks: int, sources: int) -> int:
        """Chunks in flight per source: an even share, within the bytes bound."""
        by_bytes = IN_FLIGHT_BYTES_MAX // self.layout.chunk_bytes // SOURCES_AT_ONCE
        return max(1, min(math.ceil(chunks / max(1, sources)), by_bytes))

    def _owes(self, source: NodeId) -> bool:
        """Whether ``source`` has something outstanding: the manifest, or chunks."""
        if self.scheduler is None:
            return True
        return bool(self.scheduler.in_flight.get(source))

    def _heard(self, source: NodeId) -> None:
        self.heard[source] = self.heard.get(source, 0) + 1

    def _drop(self, source: NodeId, now: float, *, refill: bool = True) -> list[SLEffect]:
        """Stop asking ``source`` in this pass; its chunks go back to the pool."""
        self.active.remove(source)
        if self.scheduler is not None:
            self.scheduler.remove(source)
        return self._refill(now) if refill else []

    def _ban(self, source: NodeId, why: str, now: float) -> list[SLEffect]:
        """``source`` sent what the ledger's root rules out: never asked again."""
        self.banned[source] = why
        self.waiting = [s for s in self.waiting if s != source]
        self.active.remove(source)
        if self.scheduler is not None:
            self.scheduler.remove(source, ban=True)
        text = f"round {self.number}: {source[:8]}: {why}; asking the others"
        return [Log(text, "warning"), *self._refill(now)]

    def _fail(self, why: str) -> list[SLEffect]:
        self.failure = why
        self.active, self.waiting = [], []
        return []

    def _timer(self, delay_s: float, now: float) -> SetTimer:
        if self.deadline is not None:
            delay_s = max(0.0, min(delay_s, self.deadline - now))
        return SetTimer(self.tag, delay_s)

    def _sources_text(self) -> str:
        held = 0 if self.assembler is None else self.assembler.held_count
        return (
            f"{held}/{self.layout.chunk_count} chunks from {len(self.sources)} peer(s)"
            f" in {self.pass_number} pass(es)"
        )

"""The SwarmCallback core, shared by the PyTorch and Keras adapters.

HPE Swarm Learning's documented API (``SwarmCallback(syncFrequency, minPeers,
trainingContract='defaultbb.cqdb.sml.hpe', **kwargs)``) with its options, validated the same
way, except that an unknown keyword is an error naming the valid ones (with a did-you-mean),
where HPE silently ignores it. The adapters only translate between their framework's weights
and a :class:`~swarmlearn.merge.ModelState`; this core decides when to sync and talks to the
node:

- ``on_train_begin``: the contract's latest merged model, when rounds ran before this node
  joined (HPE: a node that joins late, or restarts, starts from the swarm's current model;
  fetched by the node and verified against the ledger), then one sync at once, so every
  node starts from the same merged weights;
- ``on_batch_end``: every ``syncFrequency`` batches, a sync;
- ``on_epoch_end``: counts epochs (progress, PERFDATA);
- ``on_train_end``: this node is done; it keeps taking part (``checkinModelOnTrainEnd``)
  until every node has finished, then the last merged weights are loaded.

Modes: *daemon* (the default when a node's local endpoint is found: ``SWARM_NODE_SOCKET``,
or ``sl.sock`` in ``SWARM_DATA_DIR``/``./swarm-data``): the weights go to the local
``swarm-node``; *embedded* (``nodeConfig=FILE`` or ``SWARM_NODE_CONFIG``, swarm-node's TOML
config): the node runs in this process (``swarmlearn.callback.embedded``); *loopback*
(``SWARM_LOOPBACK=True``, as in HPE): no swarm at all, the script runs alone. A sync whose
round fails keeps the local weights and says why; a sync the ledger refuses, or one that
does not end within ``syncTimeout`` (counted from the sync's start), raises
:class:`SwarmError` with the reason.
"""

from __future__ import annotations

import difflib
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from swarmlearn.callback.node_wait import NODE_WAIT_S, connect_when_ready
from swarmlearn.errors import ConfigError, ModelMismatchError
from swarmlearn.merge import ModelState, flatten, layout_of, round_method_problem, unpack
from swarmlearn.merge.manifest import Layout

if TYPE_CHECKING:
    from swarmlearn.roles.local.endpoint import RoundOutcome

DEFAULT_TRAINING_CONTRACT = "defaultbb.cqdb.sml.hpe"
CHECKIN_MODES = ("inactive", "snapshot", "active")
COMMON_OPTIONS = (
    "useAdaptiveSync",
    "adsValData",
    "adsValBatchSize",
    "checkinModelOnTrainEnd",
    "nodeWeightage",
    "mergeMethod",
    "totalEpochs",
    "logger",
    "mlPlatform",
    "ml_platform",
    "nodeSocket",
    "nodeConfig",
    "syncTimeout",
)
#: SwarmCallback's named arguments (HPE's signature), offered for a misspelt keyword too.
NAMED_ARGUMENTS = ("syncFrequency", "minPeers", "trainingContract")
SYNC_TIMEOUT_S = 3600.0
#: The longest the first sync waits for the swarm's latest model (syncTimeout if shorter);
#: without it, this node starts from its own weights (and says why).
LATEST_TIMEOUT_S = 60.0
PROGRESS_BAR_WIDTH = 20


class SwarmError(ConfigError):
    """HPE's name for a bad SwarmCallback argument (a ConfigError here: one clear line).
    Uncaught, it ends the script with that line, without a traceback (:func:`one_line_hook`)."""


def mismatch_line(contract: str, detail: str) -> str:
    """What a trainer hears when its model is not its contract's, and what to do."""
    detail = detail.removeprefix(f"trainingContract {contract!r}: ")
    return (
        f"trainingContract {contract!r} holds another model ({detail}): give this model"
        " its own contract (SwarmCallback(..., trainingContract='NAME'), after SWCI's"
        f" CREATE CONTRACT NAME), or start this one over with SWCI's RESET CONTRACT {contract}"
    )


def one_line_hook(previous: Callable[..., Any]) -> Callable[..., Any]:
    """A ``sys.excepthook`` that prints an uncaught :class:`SwarmError` as one line (a user's
    mistake, said in full by its message) and hands anything else to ``previous``."""

    def hook(kind: type[BaseException], error: BaseException, tb: Any) -> None:
        if isinstance(error, SwarmError):
            print(f"SwarmError: {error}", file=sys.stderr)
        else:
            previous(kind, error, tb)

    hook.swarm_one_line = True  # type: ignore[attr-defined]
    return hook


def install_one_line_hook() -> None:
    if not getattr(sys.excepthook, "swarm_one_line", False):
        sys.excepthook = one_line_hook(sys.excepthook)


@dataclass(frozen=True)
class ModelHooks:
    """What the core needs of an adapter's model (Keras, PyTorch, Lightning, Transformers):
    its weights as a :class:`ModelState`, merged weights loaded into it, and HPE's PERFDATA
    figures (loss, metric) on ``adsValData`` (None, None without it)."""

    state: Callable[[], ModelState]
    load: Callable[[ModelState], None]
    evaluate: Callable[[], tuple[float | None, float | None]]


@dataclass(frozen=True)
class RoundTiming:
    """Where the latest sync's time went, in seconds: the handover to and from the node
    (``flatten_s + send_s + receive_s + unpack_s``, and the adapter's ``load_s``), and the
    node's own part (``node_s``: check-in, exchange and merge among the peers)."""

    flatten_s: float = 0.0
    send_s: float = 0.0
    node_s: float = 0.0
    receive_s: float = 0.0
    unpack_s: float = 0.0
    load_s: float = 0.0

    @property
    def handover_s(self) -> float:
        return self.flatten_s + self.send_s + self.receive_s + self.unpack_s + self.load_s


@dataclass(frozen=True)
class Options:
    sync_frequency: int
    min_peers: int
    contract: str
    use_adaptive_sync: bool
    val_data: Any
    val_batch_size: int | None
    checkin_on_train_end: str
    node_weightage: int
    merge_method: str
    total_epochs: int
    logger: logging.Logger
    loopback: bool
    socket: Path | None
    node_config: Path | None  # embedded mode: swarm-node's TOML config, run in this process
    sync_timeout_s: float
    extra: Mapping[str, Any]


def _int(name: str, value: Any, low: int, high: int | None = None) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise SwarmError(f"{name} must be an integer, got {value!r}") from None
    if number < low or (high is not None and number > high):
        valid = f"{low}..{high}" if high is not None else f">= {low}"
        raise SwarmError(f"{name} must be {valid}, got {number}")
    return number


def parse_options(
    sync_frequency: Any,
    min_peers: Any,
    contract: Any,
    kwargs: Mapping[str, Any],
    platform_options: tuple[str, ...],
) -> Options:
    """HPE's validation of the constructor's arguments, with clear errors (one line each, also
    uncaught: the hook goes in before the first check)."""
    install_one_line_hook()
    valid = sorted((*COMMON_OPTIONS, *platform_options))
    for key in kwargs:
        if key not in valid:
            # a misspelt argument (minPeer=3) is named like any other misspelt option
            close = difflib.get_close_matches(key, [*NAMED_ARGUMENTS, *valid], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise SwarmError(
                f"SwarmCallback got an unknown option {key!r}{hint} Valid: {', '.join(valid)}"
            )
    for name, value in zip(NAMED_ARGUMENTS, (sync_frequency, min_peers), strict=False):
        if value is None:
            raise SwarmError(f"SwarmCallback needs {name} (an integer >= 1)")
    if contract is None or not isinstance(contract, str) or not contract:
        raise SwarmError("trainingContract must be a contract name")
    mode = kwargs.get("checkinModelOnTrainEnd", "snapshot")
    if mode not in CHECKIN_MODES:
        raise SwarmError(
            f"checkinModelOnTrainEnd must be one of {', '.join(CHECKIN_MODES)}, got {mode!r}"
        )
    method = str(kwargs.get("mergeMethod", "mean")).lower()
    problem = round_method_problem(method)
    if problem is not None:
        raise SwarmError(f"mergeMethod: {problem}")
    adaptive = bool(kwargs.get("useAdaptiveSync", False))
    if adaptive and kwargs.get("adsValData") is None:
        raise SwarmError("useAdaptiveSync needs adsValData (validation data for the loss)")
    total = kwargs.get("totalEpochs")
    logger = kwargs.get("logger") or _default_logger()
    if not isinstance(logger, logging.Logger):
        raise SwarmError(f"logger must be a logging.Logger, got {type(logger).__name__}")
    batch = kwargs.get("adsValBatchSize")
    return Options(
        sync_frequency=_int("syncFrequency", sync_frequency, 1),
        min_peers=_int("minPeers", min_peers, 1),
        contract=contract,
        use_adaptive_sync=adaptive,
        val_data=kwargs.get("adsValData"),
        val_batch_size=None if batch is None else _int("adsValBatchSize", batch, 1),
        checkin_on_train_end=mode,
        node_weightage=_int("nodeWeightage", kwargs.get("nodeWeightage", 1), 1, 100),
        merge_method=method,
        total_epochs=0 if total is None else _int("totalEpochs", total, 1),
        logger=logger,
        loopback=os.environ.get("SWARM_LOOPBACK", "").strip().lower() in ("true", "1", "yes"),
        socket=_socket(kwargs.get("nodeSocket")),
        node_config=_node_config(kwargs.get("nodeConfig"), kwargs.get("nodeSocket")),
        sync_timeout_s=float(kwargs.get("syncTimeout", SYNC_TIMEOUT_S)),
        extra={k: v for k, v in kwargs.items() if k in platform_options},
    )


def _default_logger() -> logging.Logger:
    logger = logging.getLogger("SwarmCallback")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(
            logging.Formatter("%(asctime)s SwarmCallback %(levelname)s %(message)s")
        )
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    return logger


def _node_config(explicit: Any, socket: Any) -> Path | None:
    """Embedded mode's config: ``nodeConfig``, else ``SWARM_NODE_CONFIG`` unless a daemon's
    socket is named (``nodeSocket`` or ``SWARM_NODE_SOCKET``)."""
    if explicit:
        if socket:
            raise SwarmError("give nodeSocket (daemon mode) or nodeConfig (embedded), not both")
        path = Path(explicit)
    elif socket or os.environ.get("SWARM_NODE_SOCKET"):
        return None
    elif os.environ.get("SWARM_NODE_CONFIG"):
        path = Path(os.environ["SWARM_NODE_CONFIG"])
    else:
        return None
    if not path.is_file():
        raise SwarmError(f"nodeConfig {path}: no such file (swarm-node's TOML config)")
    return path


def _socket(explicit: Any) -> Path | None:
    if explicit:
        return Path(explicit)
    if os.environ.get("SWARM_NODE_SOCKET"):
        return Path(os.environ["SWARM_NODE_SOCKET"])
    data = Path(os.environ.get("SWARM_DATA_DIR", "swarm-data"))
    return data / "sl.sock"


class SwarmCore:
    """When to sync, and the syncs themselves; adapters supply and load the weights."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.logger = options.logger
        self.syncFrequency = options.sync_frequency
        self.currentSyncFrequency = options.sync_frequency
        self.stepsBeforeNextSync = options.sync_frequency
        self.minPeers = options.min_peers
        self.trainingContract = options.contract
        self.totalEpochs = options.total_epochs
        self.epochsCompleted = 0
        self.nodeWeightage = options.node_weightage
        self.mergeMethod = options.merge_method
        self.checkinModelOnTrainEnd = options.checkin_on_train_end
        self.useAdaptiveSync = options.use_adaptive_sync
        self.loopback = options.loopback
        self.isSwarmTrainingOver = False
        self.rounds_done = 0
        self.last_round: RoundOutcome | None = None  # the latest round that merged
        self.last_round_s = 0.0  # its wall time, from handing over to holding the merged model
        self.last_timing = RoundTiming()
        self._layout: Layout | None = None
        self._client: Any = None
        self._embedded: Any = None
        self._started = time.monotonic()
        self._best_loss: float | None = None
        self._asked_latest = False
        install_one_line_hook()
        if not self.loopback:
            self._connect()

    def _connect(self) -> None:
        from swarmlearn.roles.local.endpoint import LocalClient

        path = self.options.socket
        if self.options.node_config is not None:
            from swarmlearn.callback.embedded import EmbeddedNode

            self._embedded = EmbeddedNode(self.options.node_config, self.logger)
            path = self._embedded.start()
        assert path is not None
        timeout_s = self.options.sync_timeout_s

        def connect(at: Path) -> LocalClient:
            return LocalClient(at, timeout_s=timeout_s, on_progress=self._progress)

        wait_s = min(timeout_s, NODE_WAIT_S)  # a script may start before its node
        try:
            self._client = connect_when_ready(path, connect, wait_s, self.logger.info)
        except ConfigError as error:
            raise SwarmError(str(error)) from None

    def _progress(self, text: str) -> None:
        self.logger.info(text)

    # ------------------------------------------------------------ the hooks' logic

    def batch_done(self) -> bool:
        """Count a batch; True when it is time to sync."""
        if self.isSwarmTrainingOver:
            return False
        self.stepsBeforeNextSync -= 1
        return self.stepsBeforeNextSync <= 0

    def epoch_done(self) -> None:
        self.epochsCompleted += 1
        if self.totalEpochs:
            elapsed = time.monotonic() - self._started
            eta = elapsed / self.epochsCompleted * (self.totalEpochs - self.epochsCompleted)
            filled = min(
                PROGRESS_BAR_WIDTH, PROGRESS_BAR_WIDTH * self.epochsCompleted // self.totalEpochs
            )
            bar = "#" * filled + "." * (PROGRESS_BAR_WIDTH - filled)
            self.logger.info(
                f"[{bar}] epoch {self.epochsCompleted}/{self.totalEpochs},"
                f" {self.rounds_done} rounds, ETA {eta:.0f} s"
            )

    def latest_once(self, state_now: Callable[[], ModelState]) -> ModelState | None:
        """Before the first sync: the contract's latest merged model, to load into the model
        (None: loopback, no round has finished yet, or it could not be had: then this node
        starts from its own weights, and the log says why). A model whose tensors differ from
        the contract's raises :class:`SwarmError`, naming the tensor and the fixes."""
        if self._asked_latest or self.loopback or self.isSwarmTrainingOver:
            return None
        self._asked_latest = True
        layout = self._layout_of(state_now())
        wait_s = min(self.options.sync_timeout_s, LATEST_TIMEOUT_S)
        try:
            found = self._client.latest(self.trainingContract, layout, timeout_s=wait_s)
        except ModelMismatchError as error:  # every round would refuse it: stop here
            raise SwarmError(mismatch_line(self.trainingContract, str(error))) from None
        except ConfigError as error:
            self.logger.warning(f"not loading the swarm's model: {error}")
            return None
        if found.merged is None:
            if found.reason:
                self.logger.warning(f"starting from this node's own weights: {found.reason}")
            return None
        self.logger.info(
            f"loaded the swarm's model of round {found.round}, hash {found.root.hex()[:12]}"
        )
        return unpack(found.merged, layout)  # loaded at once, before the next flatten

    def sync(
        self,
        state: ModelState,
        *,
        loss: float | None = None,
        metric: float | None = None,
    ) -> ModelState | None:
        """One sync round: the merged state, or None (loopback, or the round failed)."""
        self.stepsBeforeNextSync = self.currentSyncFrequency
        if self.loopback or self.isSwarmTrainingOver:
            return None
        started = time.perf_counter()
        flat = self._flat_for_node(state)
        flattened = time.perf_counter()
        # The model stays as it is until the round succeeds: if the node needs the weights
        # again (merged bytes landed over them in the handover file and a node died), they
        # are flattened into the file once more.
        layout = self._layout_of(state)

        def refill(out: memoryview) -> None:
            flatten(state, layout, out=out)

        outcome = self._round(flat, self.nodeWeightage, loss, metric, final=False, refill=refill)
        if outcome is None or outcome.merged is None:
            return None
        self._adapt(loss)
        unpacking = time.perf_counter()
        merged = unpack(outcome.merged, self._layout_of(state))
        client = self._client
        self.last_timing = RoundTiming(
            flatten_s=flattened - started,
            send_s=client.last_send_s,
            node_s=self.last_round_s - client.last_send_s - client.last_receive_s,
            receive_s=client.last_receive_s,
            unpack_s=time.perf_counter() - unpacking,
        )
        return merged

    def finish(
        self, state: ModelState, *, loss: float | None = None, metric: float | None = None
    ) -> ModelState | None:
        """The end of this node's training (HPE's ``on_train_end``): tell the swarm, then keep
        taking part in rounds until every node of a round has finished, so the slower nodes
        still have this one's weights to merge with. What it contributes meanwhile is
        ``checkinModelOnTrainEnd``: ``snapshot``, its weights as they were when it stopped;
        ``active``, the latest merged weights; ``inactive``, its snapshot at the smallest
        weight the ledger takes (1; HPE uses 0). Returns the last merged state, or None when
        there was none (loopback, or the first round failed); a failed round ends the wait
        with the last merged state, and says why."""
        if self.loopback or self.isSwarmTrainingOver:
            return None
        snapshot = self._flat(state)  # a copy: the caller may go on changing its model
        weight = 1 if self.checkinModelOnTrainEnd == "inactive" else self.nodeWeightage
        contribution: bytes | bytearray | memoryview = snapshot
        merged: bytes | bytearray | memoryview | None = None
        while True:
            outcome = self._round(contribution, weight, loss, metric, final=True)
            if outcome is None or outcome.merged is None:
                break
            # A copy: the merged weights are a view of the handover file, which the next
            # round's weights (and, if that round fails, a partial merge) are written over.
            merged = bytes(outcome.merged)
            if outcome.training_over:
                self.logger.info(f"round {outcome.round}: every node has finished training")
                break
            self.logger.info("waiting for the other nodes to finish training")
            if self.checkinModelOnTrainEnd == "active":
                contribution = merged
        self.isSwarmTrainingOver = True
        return None if merged is None else unpack(merged, self._layout_of(state))

    def sync_model(self, model: ModelHooks) -> None:
        """One sync point of an adapter's training loop: a late joiner first loads the
        swarm's latest model (once), then the round; the merged weights go into the model."""
        latest = self.latest_once(model.state)
        if latest is not None:
            model.load(latest)
        loss, metric = model.evaluate()
        merged = self.sync(model.state(), loss=loss, metric=metric)
        if merged is not None:
            started = time.perf_counter()
            model.load(merged)
            self.last_timing = replace(self.last_timing, load_s=time.perf_counter() - started)

    def finish_model(self, model: ModelHooks) -> None:
        """An adapter's end of training: the final rounds, the swarm's final model loaded,
        its PERFDATA measured on it, and the node's session closed."""
        loss, metric = model.evaluate()
        merged = self.finish(model.state(), loss=loss, metric=metric)
        if merged is not None:
            model.load(merged)
            self.report_final(*model.evaluate())  # PERFDATA of the final model
        self.close()

    def report_final(self, loss: float | None, metric: float | None) -> None:
        """HPE's PERFDATA of the last merged round, measured on its merged model (loaded by
        ``finish``): it replaces what came with the check-in, measured on this node's own
        weights, so every node reports its figure for the same, final model."""
        if loss is None or self.last_round is None or self._client is None:
            return
        perf = (float(loss), float(metric or 0.0), self.epochsCompleted, self.totalEpochs)
        self._client.report_perf(self.trainingContract, self.last_round.round, perf)

    def _layout_of(self, state: ModelState) -> Layout:
        if self._layout is None:
            self._layout = layout_of(state)
        return self._layout

    def _flat_for_node(self, state: ModelState) -> bytearray | memoryview:
        """The state flattened straight into the node's handover buffer when there is one."""
        layout = self._layout_of(state)
        staging = self._client.staging(layout.total_bytes)
        return self._flat(state) if staging is None else flatten(state, layout, out=staging)

    def _flat(self, state: ModelState) -> bytearray | memoryview:
        return flatten(state, self._layout_of(state))  # a new buffer: the model may go on

    def _round(
        self,
        flat: bytes | bytearray | memoryview,
        weight: int,
        loss: float | None,
        metric: float | None,
        *,
        final: bool,
        refill: Callable[[memoryview], object] | None = None,
    ) -> RoundOutcome | None:
        """Hand ``flat`` to the node and wait for the round; None (and a warning) if it failed."""
        assert self._layout is not None
        perf = None
        if loss is not None:
            perf = (float(loss), float(metric or 0.0), self.epochsCompleted, self.totalEpochs)
        started = time.monotonic()
        try:
            outcome: RoundOutcome = self._client.sync_round(
                self.trainingContract,
                self._layout,
                flat,
                weight=weight,
                min_peers=self.minPeers,
                merge_method=self.mergeMethod,
                perf=perf,
                final=final,
                refill=refill,
            )
        except ConfigError as error:  # syncTimeout passed, or the node went away
            raise SwarmError(str(error)) from None
        if outcome.refused:  # the same weights would be refused again: say so, do not go on
            raise SwarmError(f"round {outcome.round}: {outcome.reason}")
        took = time.monotonic() - started
        if outcome.merged is None:  # the model's own weights stay: never the handover file's
            self.logger.warning(
                f"round {outcome.round} failed ({outcome.reason}): keeping the local weights"
            )
            return None
        self.rounds_done += 1
        self.last_round, self.last_round_s = outcome, took
        self.logger.info(
            f"round {outcome.round}: {outcome.participants} peers, {_size(len(flat))},"
            f" merged in {took:.2f} s, hash {outcome.root.hex()[:12]}"
        )
        return outcome

    def _adapt(self, loss: float | None) -> None:
        """Adaptive sync: while the validation loss keeps falling, sync half as often (up to
        8x the base interval); when it stops falling, go back to the base interval."""
        if not self.useAdaptiveSync or loss is None:
            return
        if self._best_loss is None or loss < self._best_loss:
            self._best_loss = loss
            self.currentSyncFrequency = min(self.currentSyncFrequency * 2, self.syncFrequency * 8)
        else:
            self.currentSyncFrequency = self.syncFrequency
        self.stepsBeforeNextSync = self.currentSyncFrequency

    def close(self) -> None:
        self.isSwarmTrainingOver = True
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._embedded is not None:
            self._embedded.close()
            self._embedded = None


def _size(count: int) -> str:
    """A round's bytes for the log, exact (small models, PEFT adapters), and in MB from 1 MB."""
    return f"{count} bytes" if count < 1_000_000 else f"{count / 1e6:.1f} MB ({count} bytes)"

"""Embedded mode: the swarm node runs inside the training process.

With no ``swarm-node`` on the host, ``SwarmCallback`` starts one itself: a background thread
runs trio and, in it, the same :class:`~swarmlearn.roles.node.node.ValidatorNode` a daemon
runs (ledger, peers, sync rounds, API). It is configured by a TOML file in ``swarm-node``'s
own format (``nodeConfig=...`` or ``SWARM_NODE_CONFIG``; identity from the file or the
``SWARM_ID_*`` variables), so moving from embedded to daemon mode is moving that file. The
callback then talks to the node through the node's local socket, exactly as in daemon mode.

Starting waits, within ``start_timeout_s``, until the ledger records the node; a node that
fails to start is one clear line (the same messages as ``swarm-node``). Closing cancels the
node and joins the thread, bounded by ``stop_timeout_s``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from pathlib import Path

import trio

from swarmlearn.errors import ConfigError, config_error_in

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
JOIN_POLL_S = 0.05


class EmbeddedNode:
    def __init__(
        self,
        config: Path,
        logger: logging.Logger,
        *,
        start_timeout_s: float = START_TIMEOUT_S,
        stop_timeout_s: float = STOP_TIMEOUT_S,
    ) -> None:
        from swarmlearn.cli.common import ArgumentParser, identity_from_arguments
        from swarmlearn.roles.node.config import resolve
        from swarmlearn.roles.node.daemon import add_node_arguments, node_options

        parser = ArgumentParser(prog="nodeConfig")
        add_node_arguments(parser)
        try:
            args = resolve(parser.parse_args(["--config", str(config)]))
            self.options = node_options(args)
            self.identity = identity_from_arguments(args)
        except ConfigError as error:
            raise ConfigError(f"nodeConfig {config}: {error}") from None
        self.logger = logger
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._scope: trio.CancelScope | None = None
        self._thread = threading.Thread(target=self._run, name="swarm-node", daemon=True)

    @property
    def socket(self) -> Path:
        return self.options.data_dir / "sl.sock"

    def start(self) -> Path:
        """Start the node; its local socket once the ledger records it."""
        self._thread.start()
        if not self._ready.wait(self.start_timeout_s):
            self.close()
            raise ConfigError(
                f"embedded swarm node: not joined within {self.start_timeout_s:g} s"
                " (is the sentinel or bootstrap node reachable?)"
            )
        if self._error is not None:
            if isinstance(self._error, ConfigError):
                raise ConfigError(f"embedded swarm node: {self._error}") from None
            raise ConfigError(
                f"embedded swarm node failed to start: {self._error!r}"
            ) from self._error
        return self.socket

    def close(self) -> None:
        if self._token is not None and self._scope is not None:
            with contextlib.suppress(trio.RunFinishedError):  # it had stopped by itself
                trio.from_thread.run_sync(self._scope.cancel, trio_token=self._token)
        self._thread.join(self.stop_timeout_s)
        if self._thread.is_alive():
            self.logger.warning(f"embedded swarm node did not stop in {self.stop_timeout_s:g} s")

    # ------------------------------------------------------------ the node's thread

    def _run(self) -> None:
        try:
            trio.run(self._serve)
        except BaseException as error:  # reported to start(); the thread ends here
            fault = config_error_in(error)  # one line, not trio's nursery groups
            self._error = fault if fault is not None else error
            if fault is not None and self._ready.is_set():  # mid-run: start() is not waiting
                self.logger.error(f"embedded swarm node stopped: {fault}")
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        from swarmlearn.roles.node.node import ValidatorNode

        node = await ValidatorNode.open(self.identity, self.options, on_ready=self.logger.info)
        async with trio.open_nursery() as nursery:
            self._token, self._scope = trio.lowlevel.current_trio_token(), nursery.cancel_scope
            await nursery.start(node.run)
            # the ledger's state changes block by block, with no event to wait on: poll it
            while not node.joined():  # noqa: ASYNC110
                await trio.sleep(JOIN_POLL_S)
            self._ready.set()
            await trio.sleep_forever()

"""Run one p2p service as a process: ``python -m swarmlearn.p2p.service_cli``.

It listens, joins the swarm through ``--seed`` (the sentinel's address, ``host:port`` or a
multiaddr; repeatable) or the peers kept in ``--data-dir``, and prints one JSON line per
change on stdout: ``{"event": "listening", "address": ...}`` once, then ``{"event": "peers",
"connected": [...], "known": [...]}`` whenever a peer comes up or goes down, and
``{"event": "stopped", ...}`` with the statistics on SIGTERM or Ctrl-C (known peers are
persisted first). A bad argument is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

import trio

from swarmlearn.errors import ConfigError
from swarmlearn.p2p.address import parse_host_port
from swarmlearn.p2p.identity import identity_paths_from_env, load_identity
from swarmlearn.p2p.multiaddr import parse_address
from swarmlearn.p2p.service import P2PService, ServiceConfig


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m swarmlearn.p2p.service_cli")
    parser.add_argument("--cert", type=Path, help="certificate (or SWARM_ID_CERT)")
    parser.add_argument("--key", type=Path, help="private key (or SWARM_ID_KEY)")
    parser.add_argument("--cacert", type=Path, help="CA certificates (or SWARM_ID_CACERT)")
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (0: any free port)")
    parser.add_argument("--advertise", help="the host others dial (default: the listen host)")
    parser.add_argument("--seed", action="append", default=[], help="sentinel address")
    parser.add_argument("--data-dir", type=Path, help="keeps known peers across restarts")
    parser.add_argument("--topic", action="append", default=[], help="gossip topic to join")
    return parser.parse_args(argv)


def emit(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


async def serve(service: P2PService) -> None:
    async with trio.open_nursery() as nursery:
        address = await nursery.start(service.run)
        emit("listening", address=str(address), peer_id=service.me)

        async def report() -> None:
            while True:
                emit("peers", connected=service.connected(), known=service.known())
                await service.wait_changed()

        async def stop_on_signal() -> None:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    service.stop()
                    nursery.cancel_scope.cancel()
                    return

        nursery.start_soon(report)
        nursery.start_soon(stop_on_signal)


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        paths = identity_paths_from_env(
            os.environ, cert=args.cert, key=args.key, cacert=args.cacert
        )
        identity = load_identity(paths)
        host, port = parse_host_port(args.listen, field="--listen")
        for seed in args.seed:
            parse_address(seed, field="--seed")
        config = ServiceConfig(
            host=host,
            port=port,
            advertise_host=args.advertise,
            seeds=tuple(args.seed),
            data_dir=args.data_dir,
            topics=tuple(args.topic),
        )
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    service = P2PService(identity, config)
    trio.run(serve, service)
    emit("stopped", statistics=service.statistics().to_json())
    return 0


if __name__ == "__main__":
    sys.exit(main())

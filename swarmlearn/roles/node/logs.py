"""The swarm-node's log output: text for people, or one JSON object per line for machines.

``swarm-node --log-format json`` (TOML ``log-format``, env ``SWARM_LOG_FORMAT``) makes every
record on stderr one JSON object: ``time`` (ISO 8601, UTC, milliseconds), ``level``,
``logger``, ``message``, the node's ``node`` name (its certificate's common name) and
``peer_id``, and ``exception`` (the formatted traceback) when there is one. Text, the
default, is the ``asctime name level message`` line it always was. Either way every logger
goes through the one root handler (the API server's too: it is given its logger), and
Python's warnings become log records.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys

TEXT_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, naming the node it comes from."""

    def __init__(self, node: str, peer_id: str) -> None:
        super().__init__()
        self.node = node
        self.peer_id = peer_id

    def format(self, record: logging.LogRecord) -> str:
        moment = dt.datetime.fromtimestamp(record.created, dt.UTC)
        entry: dict[str, object] = {
            "time": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "node": self.node,
            "peer_id": self.peer_id,
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False)


def configure(log_format: str, level: str, node: str = "", peer_id: str = "") -> None:
    """Send every log record to stderr, as ``log_format`` (text or json) says, from ``level``."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter(node, peer_id))
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    logging.captureWarnings(True)

"""Text for people: aligned tables, short node ids, times and durations from ledger fields."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

SHORT_ID = 12


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], empty: str = "(none)") -> str:
    """Columns aligned to their widest cell; ``empty`` when there are no rows."""
    if not rows:
        return empty
    cells = [[cell(value) for value in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


def fields(pairs: Sequence[tuple[str, Any]]) -> str:
    """``name  value`` lines, names aligned."""
    width = max(len(name) for name, _ in pairs)
    return "\n".join(f"{name.ljust(width)}  {cell(value)}" for name, value in pairs)


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ",".join(cell(v) for v in value) or "-"
    return str(value)


def short(node_id: str | None) -> str:
    return "-" if not node_id else node_id[:SHORT_ID]


def when(ms: int | None) -> str:
    """A ledger time (ms since the epoch) as UTC ``YYYY-MM-DD HH:MM:SS``."""
    if not ms:
        return "-"
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def duration_s(start_ms: int | None, end_ms: int | None) -> float | None:
    if start_ms is None or end_ms is None:
        return None
    return round((end_ms - start_ms) / 1000, 3)

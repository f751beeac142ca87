"""Line charts as inline SVG, drawn by hand: one polyline per node, axes with round ticks.

No plotting library and no JavaScript: the server writes the ``<svg>`` element into the page
and the browser draws it. Values are scaled into a fixed viewBox; the y range is padded so a
flat series still shows as a line, and ticks are "nice" numbers (1, 2 or 5 times a power of 10).
"""

from __future__ import annotations

import math
from html import escape

from swarmlearn.dashboard.model import Series, short

WIDTH, HEIGHT = 640, 260
LEFT, RIGHT, TOP, BOTTOM = 56, 150, 16, 34
PALETTE = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777")


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round numbers covering ``[low, high]``."""
    if high <= low:
        high = low + 1
    raw = (high - low) / max(count - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    ticks = [round(math.floor(low / step) * step, 12)]
    while ticks[-1] < high - step * 1e-9:
        ticks.append(round(ticks[-1] + step, 12))
    return ticks


def _label(value: float) -> str:
    return f"{value:.4g}"


def line_chart(title: str, series: list[Series], y_label: str) -> str:
    """An ``<svg>`` of ``series`` (x: round, y: value) with a legend; a note if empty."""
    if not series:
        return f'<p class="empty">no {escape(y_label)} reported yet</p>'
    xs = [x for s in series for x, _ in s.points]
    ys = [y for s in series for _, y in s.points]
    x_ticks = nice_ticks(min(xs), max(xs))
    y_ticks = nice_ticks(min(ys), max(ys))
    x0, x1 = x_ticks[0], max(x_ticks[-1], x_ticks[0] + 1)
    y0, y1 = y_ticks[0], max(y_ticks[-1], y_ticks[0] + 1e-12)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def px(x: float) -> float:
        return LEFT + (x - x0) / (x1 - x0) * plot_w

    def py(y: float) -> float:
        return TOP + plot_h - (y - y0) / (y1 - y0) * plot_h

    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(title)}"><title>{escape(title)}</title>',
        f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" class="plot"/>',
    ]
    for y in y_ticks:
        parts.append(
            f'<line x1="{LEFT}" x2="{LEFT + plot_w}" y1="{py(y):.1f}" y2="{py(y):.1f}" '
            f'class="grid"/><text x="{LEFT - 6}" y="{py(y) + 4:.1f}" class="tick" '
            f'text-anchor="end">{_label(y)}</text>'
        )
    for x in x_ticks:
        if x == int(x):
            parts.append(
                f'<text x="{px(x):.1f}" y="{TOP + plot_h + 16}" class="tick" '
                f'text-anchor="middle">{int(x)}</text>'
            )
    parts.append(
        f'<text x="{LEFT + plot_w / 2}" y="{HEIGHT - 2}" class="axis" '
        f'text-anchor="middle">round</text>'
    )
    for index, s in enumerate(series):
        color = PALETTE[index % len(PALETTE)]
        points = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in s.points)
        parts.append(
            f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="2" '
            f'data-node="{escape(s.node)}"/>'
        )
        for x, y in s.points:
            parts.append(
                f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{color}">'
                f"<title>{escape(short(s.node))} round {int(x)}: {_label(y)}</title></circle>"
            )
        ly = TOP + 14 + index * 18
        parts.append(
            f'<rect x="{LEFT + plot_w + 12}" y="{ly - 9}" width="12" height="4" fill="{color}"/>'
            f'<text x="{LEFT + plot_w + 30}" y="{ly}" class="legend">'
            f"{escape(short(s.node))}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)

"""Small bar charts as inline SVG, drawn on the server (no JavaScript, no chart library).

Values are integers per minute; bar heights are scaled to the series' maximum. Class names are
escaped; everything else in the markup is numbers this module computed.
"""

from __future__ import annotations

from markupsafe import Markup, escape

WIDTH = 300
HEIGHT = 60
#: Colours per error class, in ErrorCategory order; unknown classes get the last one.
PALETTE = ("#c0392b", "#d35400", "#8e44ad", "#2c3e50", "#16a085", "#7f8c8d", "#b7950b",
           "#2e86c1", "#95a5a6")


def _frame(label: str, total: int, body: str, legend: str = "") -> Markup:
    title = escape(f"{label}: {total} in the last hour")
    return Markup(
        f'<svg class="chart" role="img" viewBox="0 0 {WIDTH} {HEIGHT + 14}" '
        f'width="{WIDTH}" height="{HEIGHT + 14}" xmlns="http://www.w3.org/2000/svg">'
        f"<title>{title}</title>"
        f'<line x1="0" y1="{HEIGHT}" x2="{WIDTH}" y2="{HEIGHT}" stroke="#bbb"/>'
        f"{body}"
        f'<text x="0" y="{HEIGHT + 12}" font-size="10">{escape(label)}: {total}</text>'
        f"{legend}</svg>")


def _rects(values: list[int], peak: int, base: list[float], colour: str) -> str:
    step = WIDTH / max(len(values), 1)
    parts = []
    for index, value in enumerate(values):
        if value <= 0:
            continue
        height = value / peak * (HEIGHT - 2)
        top = HEIGHT - base[index] - height
        parts.append(f'<rect x="{index * step:.1f}" y="{top:.1f}" width="{max(step - 1, 1):.1f}"'
                     f' height="{height:.1f}" fill="{colour}"><title>{value}</title></rect>')
        base[index] += height
    return "".join(parts)


def bars(values: list[int], *, label: str, colour: str = "#2e86c1") -> Markup:
    """One series as bars, one per minute."""
    peak = max(max(values, default=0), 1)
    return _frame(label, sum(values), _rects(values, peak, [0.0] * len(values), colour))


def stacked(series: dict[str, list[int]], *, label: str) -> Markup:
    """Several series (error classes) stacked per minute, with a legend."""
    length = max((len(values) for values in series.values()), default=0)
    totals = [sum(values[i] for values in series.values() if i < len(values))
              for i in range(length)]
    peak = max(max(totals, default=0), 1)
    base = [0.0] * length
    body, legend = [], []
    for index, (name, values) in enumerate(series.items()):
        colour = PALETTE[min(index, len(PALETTE) - 1)]
        body.append(_rects(values, peak, base, colour))
        legend.append(f'<text x="{120 + index * 60}" y="{HEIGHT + 12}" font-size="9" '
                      f'fill="{colour}">{escape(name)} {sum(values)}</text>')
    return _frame(label, sum(totals), "".join(body), "".join(legend))

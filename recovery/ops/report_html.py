"""`recovery-cli report --html`: the report as one self-contained page.

Inline CSS and SVG only (no scripts, fonts or images from anywhere), so the file can be mailed,
archived or opened offline. Every value from the audit trail is HTML-escaped: paths and error
messages come from callers and upstreams and must not be able to inject markup.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import Any

CLASS_COLOURS = {
    "network": "#d62728", "authentication": "#9467bd", "rate_limit": "#ff7f0e",
    "server_error": "#8c564b", "client_error": "#1f77b4", "transient": "#e377c2",
    "unknown": "#7f7f7f",
}
CHART_W, CHART_H, PAD_L, PAD_R, PAD_B, PAD_T = 900, 260, 48, 40, 42, 12

_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px;color:#222;
max-width:1000px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}
.meta{color:#666;font-size:13px}.cards{display:flex;gap:12px;margin:16px 0}
.card{border:1px solid #ddd;border-radius:6px;padding:10px 14px;min-width:120px}
.card b{display:block;font-size:22px}table{border-collapse:collapse;font-size:13px}
th,td{border-bottom:1px solid #eee;padding:4px 10px;text-align:left}
td.n,th.n{text-align:right}.empty{color:#888;font-style:italic}
svg text{font-size:11px;fill:#444}.legend span{display:inline-block;margin-right:14px;
font-size:12px}.legend i{display:inline-block;width:10px;height:10px;margin-right:4px}
"""


def render_html(report: dict[str, Any]) -> str:
    """The whole page for a `recovery.ops.report.build_report` result."""
    window, totals = report["window"], report["totals"]
    scope = escape(window["integration"] or "all integrations")
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<title>API recovery report</title>", f"<style>{_STYLE}</style></head><body>",
        "<h1>API recovery report</h1>",
        f"<p class='meta'>{scope} &middot; {escape(window['since'])} to "
        f"{escape(window['until'])} (UTC)</p>",
        _cards([("Calls", totals["calls"]), ("Failed calls", totals["failures"]),
                ("Jobs", totals["jobs"]),
                ("Succeeded after retry", totals["succeeded_after_retry"]),
                ("Parked dead letters", report["dlq"]["parked"])]),
        f"<h2>Failed calls per {escape(report['failures_over_time']['bucket'])}</h2>",
        timeline_svg(report["failures_over_time"]["buckets"]),
        _legend(report["failures_over_time"]["buckets"]),
        "<h2>Failed calls by integration</h2>", integration_bars_svg(report["attempts"]),
        _section("Attempts by integration", report["attempts"],
                 ["integration", "calls", "failures", "failure_rate", "jobs"]),
        _section("Failures by error class", report["failures_by_class"],
                 ["integration", "error_class", "failures"]),
        _section("Success after retry", report["retry_success"],
                 ["integration", "jobs", "succeeded", "succeeded_first_try",
                  "succeeded_after_retry", "degraded", "dead_or_failed"]),
        _section("Time to recover (first failure to next success)", report["recovery"],
                 ["integration", "recoveries", "mean_ms", "max_ms", "failing_since"]),
        _section("Fallback use", report["fallbacks"], ["integration", "fallback", "jobs"]),
        _section("Dead-letter queue (parked now)", report["dlq"]["by_integration"],
                 ["integration", "parked", "oldest_dead_at", "oldest_age_s"],
                 "No dead letters are parked."),
        _section("Slowest endpoints", report["slowest_endpoints"],
                 ["integration", "method", "path", "calls", "p95_ms", "max_ms"]),
        _section("Workflow runs", report["workflow_runs"], ["workflow", "status", "runs"]),
        "</body></html>",
    ]
    return "\n".join(parts)


def _cards(items: Sequence[tuple[str, Any]]) -> str:
    cards = "".join(f"<div class='card'><b>{escape(str(value))}</b>{escape(label)}</div>"
                    for label, value in items)
    return f"<div class='cards'>{cards}</div>"


def _section(title: str, rows: Sequence[dict[str, Any]], columns: Sequence[str],
             empty: str = "Nothing in this window.") -> str:
    return f"<h2>{escape(title)}</h2>{table(rows, columns, empty)}"


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str],
          empty: str = "Nothing in this window.") -> str:
    """An HTML table of `rows` (numbers right-aligned); the `empty` note when there are none."""
    if not rows:
        return f"<p class='empty'>{escape(empty)}</p>"

    def cell(tag: str, value: Any, numeric: bool) -> str:
        css = " class='n'" if numeric else ""
        shown = "-" if value is None else (f"{value:.1%}" if isinstance(value, float) else value)
        return f"<{tag}{css}>{escape(str(shown))}</{tag}>"

    numeric = {c for c in columns if all(isinstance(r.get(c), int | float | type(None))
                                         for r in rows)}
    head = "".join(cell("th", c.replace("_", " "), c in numeric) for c in columns)
    body = "".join("<tr>" + "".join(cell("td", r.get(c), c in numeric) for c in columns)
                   + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _ticks(top: int) -> list[int]:
    if top <= 0:
        return [0]
    step = max(1, -(-top // 4))
    return list(range(0, top + step, step))


def timeline_svg(buckets: Sequence[dict[str, Any]]) -> str:
    """Stacked bars of failed calls per bucket, coloured by error class."""
    ticks = _ticks(max((b["failures"] for b in buckets), default=0))
    top = ticks[-1] or 1
    plot_w, plot_h = CHART_W - PAD_L - PAD_R, CHART_H - PAD_B - PAD_T
    slot = plot_w / max(len(buckets), 1)
    out = [_svg_open(CHART_W, CHART_H, "Failed calls over time")]
    for tick in ticks:
        y = PAD_T + plot_h - plot_h * tick / top
        out.append(f"<line x1='{PAD_L}' x2='{CHART_W - PAD_R}' y1='{y:.1f}' y2='{y:.1f}' "
                   f"stroke='#eee'/><text x='{PAD_L - 6}' y='{y + 4:.1f}' "
                   f"text-anchor='end'>{tick}</text>")
    label_every = max(1, len(buckets) // 8)
    for i, bucket in enumerate(buckets):
        x = PAD_L + i * slot
        y = PAD_T + plot_h
        for error_class, n in sorted(bucket["by_class"].items()):
            h = plot_h * n / top
            y -= h
            out.append(f"<rect x='{x + slot * 0.1:.1f}' y='{y:.1f}' width='{slot * 0.8:.1f}' "
                       f"height='{h:.1f}' fill='{CLASS_COLOURS.get(error_class, '#7f7f7f')}'>"
                       f"<title>{escape(bucket['start'])}: {n} {escape(error_class)}</title>"
                       "</rect>")
        if i % label_every == 0:
            out.append(f"<text x='{x + slot / 2:.1f}' y='{CHART_H - PAD_B + 16}' "
                       f"text-anchor='middle'>{escape(_clock(bucket['start']))}</text>")
    out.append(f"<line x1='{PAD_L}' x2='{CHART_W - PAD_R}' y1='{PAD_T + plot_h}' "
               f"y2='{PAD_T + plot_h}' stroke='#999'/></svg>")
    return "".join(out)


def _clock(start: str) -> str:
    """'2024-05-01T13:05:00+00:00' -> '05-01 13:05'."""
    return f"{start[5:10]} {start[11:16]}"


def _legend(buckets: Sequence[dict[str, Any]]) -> str:
    seen = sorted({c for b in buckets for c in b["by_class"]})
    items = "".join(f"<span><i style='background:{CLASS_COLOURS.get(c, '#7f7f7f')}'></i>"
                    f"{escape(c)}</span>" for c in seen)
    return f"<p class='legend'>{items}</p>" if seen else ""


def integration_bars_svg(rows: Sequence[dict[str, Any]]) -> str:
    """Horizontal bars: failed calls per integration, with the call count beside them."""
    if not rows:
        return "<p class='empty'>No calls in this window.</p>"
    bar_h, label_w = 22, 220
    height = bar_h * len(rows) + 10
    top = max(r["failures"] for r in rows) or 1
    out = [_svg_open(CHART_W, height, "Failed calls by integration")]
    for i, row in enumerate(rows):
        y = 5 + i * bar_h
        width = (CHART_W - label_w - 160) * row["failures"] / top
        out.append(f"<text x='{label_w - 8}' y='{y + 15}' text-anchor='end'>"
                   f"{escape(row['integration'][:32])}</text>"
                   f"<rect x='{label_w}' y='{y + 3}' width='{width:.1f}' height='{bar_h - 6}' "
                   "fill='#d62728'/>"
                   f"<text x='{label_w + width + 6:.1f}' y='{y + 15}'>{row['failures']} of "
                   f"{row['calls']} calls</text>")
    out.append("</svg>")
    return "".join(out)


def _svg_open(width: int, height: int, title: str) -> str:
    return (f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
            f"viewBox='0 0 {width} {height}' role='img' aria-label='{escape(title)}'>"
            f"<title>{escape(title)}</title>")

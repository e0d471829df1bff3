"""The HTML report page: self-contained, escaped, charts drawn from the numbers; and the pure
helpers of the report (window parsing, error class)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from recovery.ops.report import parse_window, primary_class
from recovery.ops.report_html import CLASS_COLOURS, render_html, table, timeline_svg

HOSTILE = "/orders/<script>alert('x')</script>?a=1&b=2"


def report(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "window": {"since": "2024-05-01T10:00:00+00:00", "until": "2024-05-01T13:00:00+00:00",
                   "integration": None},
        "totals": {"calls": 12, "failures": 5, "jobs": 7, "succeeded_after_retry": 2},
        "attempts": [{"integration": "pay", "calls": 10, "failures": 4, "jobs": 5,
                      "failure_rate": 0.4},
                     {"integration": "crm<img>", "calls": 2, "failures": 1, "jobs": 2,
                      "failure_rate": 0.5}],
        "failures_by_class": [{"integration": "pay", "error_class": "network", "failures": 4}],
        "retry_success": [],
        "recovery": [{"integration": "pay", "recoveries": 1, "mean_ms": 1500, "max_ms": 1500,
                      "failing_since": None}],
        "fallbacks": [],
        "dlq": {"parked": 0, "oldest_dead_at": None, "oldest_age_s": None, "by_integration": []},
        "slowest_endpoints": [{"integration": "pay", "method": "GET", "path": HOSTILE,
                               "calls": 3, "p95_ms": 900, "max_ms": 1200}],
        "workflow_runs": [{"workflow": "order<u>", "status": "degraded", "runs": 2}],
        "failures_over_time": {"bucket": "hour", "buckets": [
            {"start": "2024-05-01T10:00:00+00:00", "failures": 3,
             "by_class": {"network": 2, "server_error": 1}},
            {"start": "2024-05-01T11:00:00+00:00", "failures": 0, "by_class": {}},
            {"start": "2024-05-01T12:00:00+00:00", "failures": 2, "by_class": {"network": 2}},
        ]},
    }
    data.update(overrides)
    return data


class Tags(HTMLParser):
    """Collects start tags and their attributes, to check what the page would load."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def parsed(page: str) -> Tags:
    tags = Tags()
    tags.feed(page)
    return tags


def test_page_is_self_contained() -> None:
    tags = parsed(render_html(report())).tags
    names = {tag for tag, _ in tags}
    assert {"svg", "rect", "table", "style"} <= names
    assert not names & {"script", "img", "link", "iframe", "object", "embed"}
    for _, attrs in tags:
        assert "src" not in attrs and "href" not in attrs
        assert not any(name.startswith("on") for name in attrs)


def test_values_from_the_audit_trail_are_escaped() -> None:
    page = render_html(report())
    assert "<script>" not in page and "<img>" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;?a=1&amp;b=2" in page
    assert "crm&lt;img&gt;" in page
    assert "order&lt;u&gt;" in page and "<u>" not in page


def test_timeline_draws_one_bar_segment_per_class_and_bucket() -> None:
    svg = timeline_svg(report()["failures_over_time"]["buckets"])
    fills = re.findall(r"<rect [^>]*fill='(#[0-9a-f]{6})'", svg)
    assert sorted(fills) == sorted([CLASS_COLOURS["network"], CLASS_COLOURS["server_error"],
                                    CLASS_COLOURS["network"]])
    heights = [float(h) for h in re.findall(r"<rect [^>]*height='([0-9.]+)'", svg)]
    # 3 failures is the top tick (ticks 0, 1, 2, 3): network 2 of 3, server_error 1 of 3.
    plot_h = 260 - 42 - 12
    assert sorted(heights) == pytest.approx(sorted([plot_h * 2 / 3, plot_h / 3, plot_h * 2 / 3]),
                                            abs=0.06)
    assert svg.count("<text") == 4 + 3  # y ticks, one label per bucket


def test_empty_window_still_renders() -> None:
    empty = report(attempts=[], failures_by_class=[], recovery=[], slowest_endpoints=[],
                   workflow_runs=[],
                   failures_over_time={"bucket": "minute", "buckets": [
                       {"start": "2024-05-01T10:00:00+00:00", "failures": 0, "by_class": {}}]})
    page = render_html(empty)
    assert "No calls in this window." in page and "No dead letters are parked." in page
    assert "<rect" not in page


def test_table_formats_rates_and_missing_values() -> None:
    html = table([{"name": "a", "rate": 0.125, "since": None}], ["name", "rate", "since"])
    assert "<td class='n'>12.5%</td>" in html and "<td class='n'>-</td>" in html
    assert table([], ["x"], "Nothing here.") == "<p class='empty'>Nothing here.</p>"


def test_primary_class_follows_the_taxonomy_priority() -> None:
    assert primary_class(["server_error", "transient"]) == "server_error"
    assert primary_class(["transient", "network"]) == "network"
    assert primary_class(["authentication", "rate_limit"]) == "authentication"
    assert primary_class([]) == "unknown" and primary_class(["bogus"]) == "unknown"


def test_parse_window_accepts_ages_and_iso_times() -> None:
    now = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert parse_window("30m", now=now).since == now - timedelta(minutes=30)
    assert parse_window("7d", "pay", now=now).integration == "pay"
    assert parse_window("2024-05-01T10:00:00Z", now=now).since == now - timedelta(hours=2)
    assert parse_window("2024-05-01T10:00:00", now=now).since.tzinfo is not None


@given(st.text(max_size=12))
def test_parse_window_fails_only_with_a_sentence(text: str) -> None:
    now = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    try:
        window = parse_window(text, now=now)
    except ValueError as exc:
        message = str(exc)
        assert message.endswith(".") and "\n" not in message
    else:
        assert window.since < window.until == now


def test_parse_window_refuses_the_future_and_blank_integrations() -> None:
    now = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    with pytest.raises(ValueError, match="not in the past"):
        parse_window("2024-05-02T00:00:00Z", now=now)
    with pytest.raises(ValueError, match="must name an integration"):
        parse_window("1h", "  ", now=now)

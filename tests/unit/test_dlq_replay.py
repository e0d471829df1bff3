"""The replay decisions, the token bucket and the report (no Redis needed)."""

from __future__ import annotations

import json
from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from recovery.core.message import JobSpec
from recovery.dlq.envelope import LEGACY_KIND, Envelope, UnreadableOriginalError
from recovery.dlq.replay import PlanItem, ReplayReport, TokenBucket, decide
from recovery.dlq.store import EntryFilter, decode_entry
from recovery.dlq.validate import UnreplayableError
from tests.unit.test_dlq_store import envelope, kombu


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.now += seconds


def acquire_times(rate: float, gaps: list[float]) -> list[float]:
    clock = FakeClock()
    bucket = TokenBucket(rate, clock, clock.sleep)
    times = []
    for gap in gaps:
        clock.now += gap
        bucket.acquire()
        times.append(clock.now)
    return times


def test_n_acquisitions_take_at_least_n_over_rate() -> None:
    times = acquire_times(200, [0.0] * 1000)
    assert times[-1] - 100.0 == pytest.approx(5.0)


@given(st.floats(min_value=0.5, max_value=5000),
       st.lists(st.floats(min_value=0, max_value=2), min_size=1, max_size=200))
def test_no_burst_acquisitions_are_never_closer_than_one_interval(
        rate: float, gaps: list[float]) -> None:
    times = acquire_times(rate, gaps)
    spacing = [later - earlier for earlier, later in pairwise(times)]
    assert times[0] - 100.0 >= 1 / rate - 1e-9
    assert all(step >= 1 / rate - 1e-9 for step in spacing)


@pytest.mark.parametrize("rate", [0, -1.0, float("nan")])
def test_a_bucket_needs_a_positive_rate(rate: float) -> None:
    with pytest.raises(ValueError, match="above 0"):
        TokenBucket(rate)


def opened(env: Envelope) -> JobSpec:
    try:
        return env.job(None)
    except UnreadableOriginalError as exc:
        raise UnreplayableError(f"unreadable: {exc}") from exc


def plan(raw: bytes, flt: EntryFilter | None = None, *, open_for: float | None = None,
         known: tuple[str, ...] = ("shop", "crm"), max_replays: int = 3) -> PlanItem | None:
    planned = decide(decode_entry(raw), flt or EntryFilter(), known=known,
                     max_replays=max_replays, open_for=lambda _: open_for, prepare=opened)
    if planned is None:
        return None
    item, job = planned
    assert (job is not None) == (item.action == "replay")
    return item


def test_decide_replays_a_healthy_entry() -> None:
    item = plan(kombu(envelope(replay_count=1).sealed_message()))
    assert item == PlanItem("job-1", "shop", "replay", "replay", "replay 2 of 3")


def test_decide_leaves_non_matching_entries_alone() -> None:
    assert plan(kombu(envelope().sealed_message()), EntryFilter(integration="crm")) is None


def test_decide_quarantines_malformed_whatever_the_filter() -> None:
    item = plan(b"junk", EntryFilter(integration="crm"))
    assert item is not None and (item.action, item.cause) == ("quarantine", "malformed")
    assert item.reason.startswith("malformed: ")


def test_decide_quarantines_at_the_replay_cap_before_looking_at_the_breaker() -> None:
    item = plan(kombu(envelope(replay_count=3).sealed_message()), open_for=12.0)
    assert item is not None and (item.action, item.cause) == ("quarantine", "replay-cap")
    assert "DLQ_MAX_RETRIES is 3" in item.reason


def test_decide_skips_open_breakers_and_unknown_integrations() -> None:
    item = plan(kombu(envelope().sealed_message()), open_for=12.0)
    assert item is not None and (item.action, item.cause) == ("skip", "breaker-open")
    assert "next probe in 12.0 s" in item.reason
    item = plan(kombu(envelope(integration="gone").sealed_message()))
    assert item is not None and (item.action, item.cause) == ("skip", "unknown-integration")


def test_decide_quarantines_an_old_envelope_without_its_original() -> None:
    legacy = envelope().view() | {"kind": LEGACY_KIND}
    item = plan(kombu(legacy))
    assert item is not None and (item.action, item.cause) == ("quarantine", "unreplayable")
    assert item.reason == (
        "unreadable: the entry was dead-lettered by an older version that kept only the "
        "redacted request; replaying it would send redacted values, so enqueue the job again "
        "from its source")


def test_decide_quarantines_an_original_of_another_job() -> None:
    swapped = envelope().sealed_message() | {"job_id": "job-2"}
    item = plan(kombu(swapped))
    assert item is not None and (item.action, item.cause) == ("quarantine", "unreplayable")
    assert item.reason == "unreadable: the original request belongs to another job than the " \
        "envelope"


def test_the_original_never_shows_in_reprs_or_views() -> None:
    env = envelope(body={"password": "[REDACTED]"})
    assert repr(env.original) == "<original hidden>" and "original" not in repr(env)
    assert "original" not in env.view()
    with pytest.raises(TypeError):
        json.dumps(env.original)


@given(st.integers(min_value=0, max_value=20), st.integers(min_value=1, max_value=20))
def test_replayed_iff_under_the_cap(replay_count: int, max_replays: int) -> None:
    item = plan(kombu(envelope(replay_count=replay_count).sealed_message()),
                max_replays=max_replays)
    assert item is not None
    assert (item.action == "replay") == (replay_count < max_replays)


def test_report_counts_and_exit_codes() -> None:
    report = ReplayReport(dry_run=False, items=[
        PlanItem("a", "shop", "replay", "replay", ""),
        PlanItem("b", "shop", "skip", "breaker-open", ""),
        PlanItem(None, None, "quarantine", "malformed", "")])
    assert report.summary() == {"dry_run": False, "replayed": 1, "skipped": 1,
                                "quarantined": 1, "failed": 0, "errors": []}
    assert report.exit_code == 0
    report.items.append(PlanItem("c", "shop", "failed", "publish-failed", ""))
    assert report.exit_code == 1
    assert json.loads(json.dumps(report.to_dict()))["entries"][3]["action"] == "failed"
    assert ReplayReport(dry_run=False, errors=["stopped"]).exit_code == 1

"""The console's workflow-run pieces that need no services: the list filter, a step's job key
read back to its run, and the steps' bars on the run's time line."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from recovery.engine.workflows.keys import step_key, step_of_key
from recovery.ops.console.jobsearch import SearchError
from recovery.ops.console.workflowview import parse_filter, step_bars


@pytest.mark.parametrize(("form", "sentence"), [
    ({"status": "done"}, "Unknown run status 'done'; use one of running, failing, compensating, "
                         "succeeded, degraded, compensated, dead."),
    ({"since": "yesterday"}, "From must be an ISO 8601 time such as 2026-05-01T12:00 (UTC unless "
                             "it names a zone), got 'yesterday'."),
    ({"since": "2026-05-02", "until": "2026-05-01"}, "From must not be later than Until."),
])
def test_bad_run_filters_are_refused_with_a_sentence(form: dict[str, str],
                                                     sentence: str) -> None:
    with pytest.raises(SearchError) as caught:
        parse_filter(form)
    assert str(caught.value) == sentence


def test_run_filter_reads_status_workflow_and_times_as_utc() -> None:
    flt = parse_filter({"status": "dead", "workflow": " order ", "since": "2026-05-01T12:00",
                        "until": "2026-05-01T14:00+02:00"})
    assert (flt.status, flt.workflow) == ("dead", "order")
    assert flt.since == datetime(2026, 5, 1, 12, tzinfo=UTC)
    assert flt.until is not None and flt.until.astimezone(UTC) == datetime(2026, 5, 1, 12,
                                                                           tzinfo=UTC)
    empty = parse_filter({"status": "", "workflow": "  "})
    assert (empty.status, empty.workflow, empty.since, empty.until) == (None, None, None, None)


def test_a_steps_job_key_names_its_run_and_step_and_no_other_key_does() -> None:
    run_id = str(uuid.uuid4())
    assert step_of_key(step_key(run_id, "charge-card")) == (run_id, "charge-card")
    for key in (None, "", "order-17", f"wf-{run_id}", f"wf-{run_id}-", f"wf-{run_id}x-a",
                "wf-not-a-uuid-at-all-but-36-chars-long-x-step"):
        assert step_of_key(key) is None, key


def test_step_bars_are_placed_in_percent_of_the_runs_span() -> None:
    run = {"created_at": "2026-05-01T12:00:00+00:00", "steps": [
        {"step": "a", "started_at": "2026-05-01T12:00:00+00:00",
         "finished_at": "2026-05-01T12:00:01+00:00"},
        {"step": "b", "started_at": "2026-05-01T12:00:01+00:00",
         "finished_at": "2026-05-01T12:00:04+00:00"},
        {"step": "c", "started_at": "2026-05-01T12:00:04+00:00",
         "finished_at": "2026-05-01T12:00:04+00:00"},
        {"step": "d", "started_at": None, "finished_at": None}]}
    assert step_bars(run) == {"a": {"left_pct": 0.0, "width_pct": 25.0},
                          "b": {"left_pct": 25.0, "width_pct": 75.0},
                          "c": {"left_pct": 100.0, "width_pct": 0.5}}
    assert step_bars({**run, "steps": run["steps"][3:]}) == {}

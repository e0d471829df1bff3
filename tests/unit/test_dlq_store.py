"""Decoding DLQ entries, filters and time arguments (no Redis needed)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from recovery.core.message import JobSpec
from recovery.dlq.envelope import Envelope, UnreadableOriginalError, envelope_for
from recovery.dlq.quarantine import QuarantineRecord
from recovery.dlq.store import EntryFilter, decode_entry, envelope_view
from recovery.dlq.timeargs import parse_age, parse_since

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def envelope(**changes: Any) -> Envelope:
    job = JobSpec(job_id="job-1", integration="shop", method="POST", path="/orders",
                  json={"n": 1}, params={"page": "1"}, headers={"X-Team": "blue"},
                  idempotency_key="key-1", enqueued_at=NOW.isoformat())
    made = envelope_for(job, categories=["server_error"], last_status=503, message="HTTP 503",
                        attempts=3, dead_at=NOW.isoformat())
    return Envelope(**(made.view() | changes), original=made.original)


def kombu(body: Any, *, encode: bool = True) -> bytes:
    text = body if isinstance(body, str) else json.dumps(body)
    return json.dumps({"body": base64.b64encode(text.encode()).decode() if encode else text,
                       "content-type": "application/json", "content-encoding": "utf-8",
                       "properties": {"body_encoding": "base64"} if encode else {}}).encode()


def test_a_kombu_message_with_our_envelope_decodes() -> None:
    entry = decode_entry(kombu(envelope().sealed_message()))
    assert entry.problem is None and entry.envelope == envelope()
    assert entry.job_id == "job-1"


@pytest.mark.parametrize(("raw", "problem"), [
    (b"plain text", "not JSON"),
    (b'{"no": "body"}', "not a kombu message"),
    (kombu("{broken", encode=True), "broken JSON"),
    (kombu('{"hello": 1}', encode=False), "not a dead-letter envelope"),
    (json.dumps({"body": "%%%", "properties": {"body_encoding": "base64"}}).encode(), "base64"),
    (kombu({"kind": "api-recovery.dead-letter/1", "job_id": "x"}), "lacks the field"),
    (kombu(envelope().sealed_message() | {"attempts": "3"}), "'attempts'"),
    (kombu(envelope().sealed_message() | {"replay_count": True}), "'replay_count'"),
    (kombu(envelope().sealed_message() | {"headers": {"A": 1}}), "'headers'"),
    (kombu(envelope().sealed_message() | {"error_categories": [None]}), "'error_categories'"),
])
def test_malformed_entries_carry_a_reason(raw: bytes, problem: str) -> None:
    entry = decode_entry(raw)
    assert entry.envelope is None and entry.problem is not None and problem in entry.problem


def test_a_malformed_entry_still_names_its_job_when_it_can() -> None:
    entry = decode_entry(kombu({"job_id": "job-9", "something": "else"}))
    assert entry.envelope is None and entry.job_id == "job-9"


@given(st.binary(max_size=300))
def test_any_bytes_decode_to_an_envelope_or_a_reason(raw: bytes) -> None:
    entry = decode_entry(raw)
    assert (entry.envelope is None) != (entry.problem is None)


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=10),
                           lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                           max_leaves=10)


@given(st.dictionaries(st.sampled_from(sorted(envelope().sealed_message())), json_values))
def test_envelope_shaped_garbage_never_raises(changes: dict[str, Any]) -> None:
    entry = decode_entry(kombu(envelope().sealed_message() | changes))
    assert (entry.envelope is None) != (entry.problem is None)
    if entry.envelope is not None:
        assert isinstance(entry.envelope.replay_count, int)
        try:
            job = entry.envelope.job()
        except UnreadableOriginalError:
            return
        assert job.job_id == entry.envelope.job_id


def test_filter_matches_each_field() -> None:
    env = envelope()
    assert EntryFilter().matches(env) and EntryFilter().is_empty
    assert EntryFilter(integration="shop", error_class="server_error", job_id="job-1").matches(env)
    assert not EntryFilter(integration="crm").matches(env)
    assert not EntryFilter(error_class="rate_limit").matches(env)
    assert not EntryFilter(job_id="job-2").matches(env)
    assert EntryFilter(since=NOW - timedelta(seconds=1)).matches(env)
    assert EntryFilter(since=NOW).matches(env)
    assert not EntryFilter(since=NOW + timedelta(seconds=1)).matches(env)
    assert EntryFilter(older_than=NOW + timedelta(seconds=1)).matches(env)
    assert not EntryFilter(older_than=NOW).matches(env)
    assert not EntryFilter(since=NOW).matches(envelope(dead_at="not a time"))


@pytest.mark.parametrize(("text", "seconds"), [
    ("90s", 90), ("30m", 1800), ("2h", 7200), ("7d", 604800), ("1w", 604800), (" 3H ", 10800),
])
def test_parse_age(text: str, seconds: int) -> None:
    assert parse_age(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "h", "2", "2y", "-2h", "1.5h", "99999999w", "٣h"])
def test_parse_age_refuses_with_a_sentence(text: str) -> None:
    with pytest.raises(ValueError, match=r"duration|years"):
        parse_age(text)


def test_parse_since_takes_ages_and_iso_times() -> None:
    assert parse_since("2h", NOW) == NOW - timedelta(hours=2)
    assert parse_since("2024-04-30T10:00:00Z", NOW) == datetime(2024, 4, 30, 10, tzinfo=UTC)
    assert parse_since("2024-04-30T10:00:00", NOW) == datetime(2024, 4, 30, 10, tzinfo=UTC)
    with pytest.raises(ValueError, match="neither a duration"):
        parse_since("yesterday", NOW)
    with pytest.raises(ValueError, match="neither a duration"):
        parse_since("   ", NOW)


@given(st.text(max_size=40))
def test_parse_since_returns_an_aware_time_or_a_value_error(text: str) -> None:
    try:
        parsed = parse_since(text, NOW)
    except ValueError as exc:
        assert str(exc).endswith(".")
    else:
        assert parsed.tzinfo is not None


def test_listing_view_redacts_an_envelope_that_kept_secrets() -> None:
    leaky = envelope(headers={"Authorization": "Bearer abc.def.ghi", "X-Team": "blue"},
                     body={"password": "hunter2"}, params={"token": "t0k"},
                     message="failed with api_key=zzz-secret")
    shown = json.dumps(envelope_view(leaky))
    for secret in ("abc.def.ghi", "hunter2", "t0k", "zzz-secret"):
        assert secret not in shown
    assert envelope_view(leaky)["headers"] == {"Authorization": "Bearer [REDACTED]",
                                               "X-Team": "[REDACTED]"}  # names only by default


def test_quarantine_record_round_trips_and_redacts_raw_text() -> None:
    good = QuarantineRecord.of(decode_entry(kombu(envelope().sealed_message())), "replay cap")
    assert QuarantineRecord.from_message(good.to_message()) == good
    assert good.envelope == envelope().view() and good.raw is None
    assert "original" not in json.dumps(good.view())
    assert good.original == envelope().original.stored()
    bad = QuarantineRecord.of(decode_entry(b"token=s3cr3t-value oops"), "malformed: not JSON")
    assert bad.envelope is None and bad.raw is not None and "s3cr3t-value" not in bad.raw
    wrong = envelope().sealed_message() | {"attempts": "three"}
    odd = QuarantineRecord.of(decode_entry(kombu(wrong)), "malformed: wrong type")
    assert odd.raw is not None and "original" not in odd.raw and "key-1" in odd.raw
    assert odd.original == envelope().original.stored()

"""Every display path uses the one redacted view: log fields, Sentry events, Flower reprs."""

from __future__ import annotations

import json
from typing import Any

import pytest
import structlog

from recovery.core.message import JobSpec, Progress, job_message_view, task_reprs
from recovery.core.redact import HIDE_ALL, REDACTED, AuditPolicy, describe_body
from recovery.telemetry.logging import configure_logging
from recovery.telemetry.sentry import scrub_event

SECRETS = {"Ocp-Apim-Subscription-Key": "ocp-0001", "X-Hub-Signature-256": "sha256=hub-0002",
           "Authorization": "Token tok-0003"}
BODY = {"client_assertion": "eyJ-0004", "card": {"number": "4111-0005"}, "iban": "DE-0006",
        "max_tokens": 9}
PARAMS = {"jwt": "jwt-0007", "sid": "sid-0008", "page": "2"}
VALUES = ["ocp-0001", "hub-0002", "tok-0003", "eyJ-0004", "4111-0005", "DE-0006", "jwt-0007",
          "sid-0008"]
SHOWS = AuditPolicy.of(show_params=["page"], show_body_fields=["max_tokens"])
JOB = JobSpec(job_id="job-1", integration="shop", method="POST", path="/orders", json=BODY,
              params=PARAMS, headers=SECRETS, idempotency_key="k-1")


@pytest.fixture(autouse=True)
def shop_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    """The registry's `shop` integration shows `page` and `max_tokens`; others nothing."""
    monkeypatch.setattr("recovery.core.message.policy_for",
                        lambda ident: SHOWS if ident == "shop" else HIDE_ALL)


def hidden(text: str) -> bool:
    return not [value for value in VALUES if value in text]


def test_a_job_message_in_free_form_data_becomes_its_redacted_view() -> None:
    view = job_message_view(JOB.to_message())
    assert view == JOB.redacted(SHOWS)
    assert view["json"] == {"max_tokens": 9, REDACTED: describe_body(BODY)}
    assert view["params"] == {"jwt": REDACTED, "sid": REDACTED, "page": "2"}
    assert view["headers"]["Authorization"] == "Token [REDACTED]"
    assert job_message_view({"job_id": "x", "integration": 3, "method": "GET",
                             "path": "/"}) == REDACTED  # malformed: nothing of it is shown
    assert job_message_view({"job_id": "x", "token": "t"}) is None  # not a job


def test_the_flower_reprs_show_the_integrations_view() -> None:
    reprs = task_reprs(JOB, Progress())
    assert reprs["argsrepr"] == "()" and hidden(reprs["kwargsrepr"])
    assert "'max_tokens': 9" in reprs["kwargsrepr"] and "'page': '2'" in reprs["kwargsrepr"]


def test_sentry_shows_a_failed_tasks_job_as_its_redacted_view() -> None:
    event: dict[str, Any] = {
        "extra": {"celery-job": {"task_name": "tasks.integration.call", "args": [],
                                 "kwargs": {"job": JOB.to_message(), "progress": {}}}},
        "exception": {"values": [{"value": f"failed for {JOB!r}"}]},
        "breadcrumbs": {"values": [{"data": {"card": {"number": "4111-0005"}}}]},
    }
    clean = scrub_event(event)
    assert hidden(json.dumps(clean))
    assert clean["extra"]["celery-job"]["kwargs"]["job"] == JOB.redacted(SHOWS)
    assert clean["breadcrumbs"]["values"][0]["data"] == {"card": {"number": REDACTED}}


def test_log_fields_holding_a_job_or_secrets_are_redacted(
        capsys: pytest.CaptureFixture[str]) -> None:
    saved = structlog.get_config()
    try:
        configure_logging("debug", json=True)
        log = structlog.get_logger("test")
        log.debug("job_in", job=JOB.to_message(), spec=JOB, extra={"iban": "DE-0006"},
                  note="Authorization: Token tok-0003", count=3)
        (line,) = [json.loads(text) for text in capsys.readouterr().err.splitlines()]
    finally:
        structlog.configure(**saved)
    assert hidden(json.dumps(line))
    assert line["job"]["json"]["max_tokens"] == 9 and "'max_tokens': 9" in line["spec"]
    assert line["extra"] == {"iban": REDACTED} and line["count"] == 3
    assert line["note"] == "Authorization: Token [REDACTED]"

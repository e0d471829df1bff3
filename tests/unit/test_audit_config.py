"""An integration's `audit:` block: what displays may show of its requests, checked at load."""

from __future__ import annotations

from pathlib import Path

import pytest

from recovery.config.loader import reset_registry
from recovery.config.settings import reset_settings
from recovery.core.redact import HIDE_ALL, REDACTED, AuditPolicy, policy_for
from tests.unit.test_registry import entry, error_for, load, write


def test_without_an_audit_block_nothing_but_names_is_shown(tmp_path: Path) -> None:
    assert load(tmp_path, entry("")).get("shop").audit is HIDE_ALL


def test_the_audit_block_is_read(tmp_path: Path) -> None:
    registry = load(tmp_path, entry("""
        audit:
          show_params: [page, per_page]
          show_headers: [X-Request-Id, Accept]
          show_body_fields: [max_tokens, order.amount]
    """))
    assert registry.get("shop").audit == AuditPolicy(
        show_params=frozenset({"page", "per_page"}),
        show_headers=frozenset({"x-request-id", "accept"}),
        show_body_fields=(("max_tokens",), ("order", "amount")))


def test_an_empty_audit_block_shows_nothing(tmp_path: Path) -> None:
    assert load(tmp_path, entry("audit: {}")).get("shop").audit == HIDE_ALL


KNOWN = "known keys: show_body_fields, show_headers, show_params"


@pytest.mark.parametrize(("extra", "problem"), [
    ("audit: {show_bodies: [a]}", f"unknown key 'audit.show_bodies' ({KNOWN})."),
    ("audit: {show_params: [page], hide: [x]}", f"unknown key 'audit.hide' ({KNOWN})."),
    ("audit: [page]", "key 'audit' must be a mapping, got a list."),
    ("audit: {show_params: page}",
     "key 'audit.show_params' must be a list of names such as [page], got 'page'."),
    ("audit: {show_params: ['']}",
     "key 'audit.show_params' must list names such as page, got ''."),
    ("audit: {show_headers: [3]}",
     "key 'audit.show_headers' must list names such as X-Request-Id, got 3."),
    ("audit: {show_headers: ['X Request']}",
     "key 'audit.show_headers' must list names such as X-Request-Id, got 'X Request'."),
    ("audit: {show_body_fields: [order..amount]}",
     "key 'audit.show_body_fields' must list names such as order.amount, got 'order..amount'."),
    ("audit: {show_body_fields: [.amount]}",
     "key 'audit.show_body_fields' must list names such as order.amount, got '.amount'."),
    ("audit: {show_headers: [Authorization]}",
     "key 'audit.show_headers' lists 'authorization', a header that carries credentials and is "
     "never shown (an Authorization value shows its scheme only); remove it."),
    ("audit: {show_headers: [Cookie]}",
     "key 'audit.show_headers' lists 'cookie', a header that carries credentials and is "
     "never shown (an Authorization value shows its scheme only); remove it."),
])
def test_a_bad_audit_block_is_refused_naming_file_integration_and_key(
        tmp_path: Path, extra: str, problem: str) -> None:
    assert error_for(tmp_path, entry(extra)) == f"integration 'shop': {problem}"


def test_policy_for_reads_the_process_registry(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, entry("audit: {show_params: [page]}"))
    monkeypatch.setenv("RECOVERY_INTEGRATIONS", path)
    reset_settings()
    reset_registry()
    try:
        assert policy_for("shop").show_params == frozenset({"page"})
        assert policy_for("other") is HIDE_ALL
        from recovery.core.message import JobSpec

        job = JobSpec("j", "shop", "GET", "/x", params={"page": 2, "sid": "s"},
                      idempotency_key="k")
        assert job.redacted()["params"] == {"page": 2, "sid": REDACTED}
        monkeypatch.setenv("RECOVERY_INTEGRATIONS", str(tmp_path / "gone.yaml"))
        reset_settings()
        reset_registry()
        assert policy_for("shop") is HIDE_ALL  # a registry that cannot load shows nothing
    finally:
        reset_settings()
        reset_registry()

"""Metric names, labels, histogram buckets, the on/off switch and the scrape-time gauges."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from recovery.config.settings import reset_settings
from recovery.telemetry import exposition, metric_labels, metrics


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> Iterator[metrics.MemoryStore]:
    monkeypatch.setenv("METRICS_ENABLED", "true")
    reset_settings()
    memory = metrics.MemoryStore()
    metrics.use_store(memory)
    yield memory
    metrics.use_store(None)
    reset_settings()


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_calls_are_counted_by_integration_endpoint_method_and_status(
    store: metrics.MemoryStore,
) -> None:
    metrics.observe_call("payments", "post", "/orders/123?token=x", 201, 0.2)
    metrics.observe_call("payments", "POST", "/orders/456", 201, 0.3)
    metrics.observe_call("payments", "GET", "/orders", "network", 1.5)

    found = samples(exposition.render(store))

    labels = (("endpoint", "/orders/:id"), ("integration", "payments"), ("method", "POST"),
              ("status", "201"))
    assert found[("api_calls_total", labels)] == 2
    network = (("endpoint", "/orders"), ("integration", "payments"), ("method", "GET"),
               ("status", "network"))
    assert found[("api_calls_total", network)] == 1


def test_duration_histogram_has_the_original_buckets_and_is_cumulative(
    store: metrics.MemoryStore,
) -> None:
    for seconds in (0.05, 0.7, 0.7, 45.0):
        metrics.observe_call("crm", "GET", "/contacts", 200, seconds)

    found = samples(exposition.render(store))

    base = (("endpoint", "/contacts"), ("integration", "crm"), ("method", "GET"))
    buckets = {le: found[("api_call_duration_seconds_bucket", tuple(sorted(
        (*base, ("le", le)))))] for le in ("0.1", "0.5", "1.0", "2.0", "5.0", "10.0", "30.0",
                                           "+Inf")}
    assert buckets == {"0.1": 1, "0.5": 1, "1.0": 3, "2.0": 3, "5.0": 3, "10.0": 3,
                       "30.0": 3, "+Inf": 4}
    assert found[("api_call_duration_seconds_count", base)] == 4
    assert found[("api_call_duration_seconds_sum", base)] == pytest.approx(46.45)


def test_recoveries_retries_and_health_checks_are_counted(store: metrics.MemoryStore) -> None:
    metrics.observe_recovery("network-retry", True)
    metrics.observe_recovery("network-retry", True)
    metrics.observe_recovery("dead-letter-queue", False)
    metrics.observe_retry_scheduled("crm", "retry-after")
    metrics.observe_health_check("crm", False)

    found = samples(exposition.render(store))

    assert found[("error_recovery_attempts_total",
                  (("strategy", "network-retry"), ("success", "true")))] == 2
    assert found[("error_recovery_attempts_total",
                  (("strategy", "dead-letter-queue"), ("success", "false")))] == 1
    assert found[("retries_scheduled_total",
                  (("integration", "crm"), ("source", "retry-after")))] == 1
    assert found[("health_checks_total", (("integration", "crm"), ("ok", "false")))] == 1


def test_metrics_enabled_false_turns_observations_off(
    store: metrics.MemoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("METRICS_ENABLED", "false")
    reset_settings()

    metrics.observe_call("crm", "GET", "/contacts", 200, 0.1)
    metrics.observe_recovery("network-retry", True)

    assert metrics.current_store() is None
    assert store.read("api_calls_total") == {}
    assert store.read("error_recovery_attempts_total") == {}


def test_a_failing_store_never_fails_the_caller(store: metrics.MemoryStore) -> None:
    class Broken(metrics.MemoryStore):
        def add(self, updates: object) -> None:
            raise ConnectionError("Redis is gone")

    metrics.use_store(Broken())
    metrics._last_warning = 0.0
    with capture_logs() as logs:
        metrics.observe_call("crm", "GET", "/x", 500, 0.1)

    assert [entry["event"] for entry in logs] == ["metrics_write_failed"]


def test_live_gauges_show_breaker_states_and_queue_depths(store: metrics.MemoryStore) -> None:
    live = exposition.LiveStateCollector(
        lambda: {"crm": "open", "payments": "closed", "ids": "half_open", "off": "disabled"},
        lambda: {"integrations": 4, "dlq": 7},
    )

    found = samples(exposition.render(store, live))

    assert found[("circuit_breaker_state", (("integration", "crm"),))] == 1
    assert found[("circuit_breaker_state", (("integration", "payments"),))] == 0
    assert found[("circuit_breaker_state", (("integration", "ids"),))] == 2
    assert ("circuit_breaker_state", (("integration", "off"),)) not in found
    assert found[("dlq_depth", ())] == 7
    assert found[("queue_depth", (("queue", "integrations"),))] == 4


def test_a_failing_live_source_is_left_out_and_the_rest_still_renders(
    store: metrics.MemoryStore,
) -> None:
    def broker_down() -> dict[str, int]:
        raise OSError("connection refused")

    metrics.observe_recovery("network-retry", True)
    live = exposition.LiveStateCollector(lambda: {"crm": "closed"}, broker_down)
    with capture_logs() as logs:
        found = samples(exposition.render(store, live))

    assert found[("circuit_breaker_state", (("integration", "crm"),))] == 0
    assert ("dlq_depth", ()) not in found
    assert any(entry["event"] == "metrics_source_failed" for entry in logs)
    assert found[("error_recovery_attempts_total",
                  (("strategy", "network-retry"), ("success", "true")))] == 1


@pytest.mark.parametrize(("path", "label"), [
    ("/users/42", "/users/:id"),
    ("/users/42/orders/9f1c2a3b-1d2e-4f5a-8b9c-0d1e2f3a4b5c", "/users/:id/orders/:id"),
    ("/v1/customers/cus_9aZ3kLm0pQr7sTu2", "/v1/customers/:id"),
    ("/mail/ana@example.com", "/mail/:id"),
    ("/search?q=1&token=s3cret", "/search"),
    ("/", "/"),
    ("/a/b/c/d/e/f/g/h", "/a/b/c/d/e/f/*"),
])
def test_endpoint_labels_hide_ids_and_query_strings(path: str, label: str) -> None:
    assert metrics.endpoint_label(path) == label


@given(st.text(max_size=400))
def test_endpoint_labels_stay_small_and_stable_for_any_path(path: str) -> None:
    label = metrics.endpoint_label(path)

    assert label.startswith("/")
    assert len(label) <= 1 + (metrics.MAX_SEGMENTS + 1) * (metrics.MAX_SEGMENT_CHARS + 1)
    assert "?" not in label
    assert all(not segment.isdigit() for segment in label.split("/"))
    assert metrics.endpoint_label(label) == label


@pytest.mark.parametrize(("path", "label"), [
    ("/users/alice-smith", "/users/alice-smith"),
    ("/files/report%20final.pdf", "/files/:id"),
    ("/search/caf\u00e9", "/search/:id"),
    ("/orders/ord_20240611", "/orders/:id"),
    ("/blobs/deadbeefcafe01", "/blobs/:id"),
    ("/v2/oauth2/token", "/v2/oauth2/token"),
    ("/" + "x" * 40, "/:id"),
])
def test_endpoint_templates_replace_encoded_long_and_numbered_segments(
        path: str, label: str) -> None:
    assert metrics.endpoint_label(path) == label


def label_sets(store: metrics.MemoryStore) -> set[tuple[str, ...]]:
    return {tuple(json.loads(field)) for field in store.read("api_calls_total")}


def test_ten_thousand_distinct_paths_make_a_small_bounded_number_of_label_sets(
        store: metrics.MemoryStore) -> None:
    for n in range(10_000):
        # ids, slugs, words: every path is distinct, and most slugs survive templating
        metrics.observe_call("crm", "GET", f"/contacts/{n}", 200, 0.1)
        metrics.observe_call("crm", "GET", f"/users/user-{chr(97 + n % 26)}{n}/profile", 200, 0.1)
        metrics.observe_call("crm", "POST", f"/tags/tag{'abcdefghij'[n % 10] * (1 + n % 7)}",
                             201, 0.1)
        metrics.observe_call("crm", "GET", f"/w{n:x}z/{'q' * (n % 30)}", 404, 0.1)
    found = label_sets(store)
    endpoints = {labels[1] for labels in found}
    assert len(endpoints) <= metric_labels.MAX_ENDPOINTS_PER_INTEGRATION + 1
    assert metric_labels.OVERFLOW in endpoints
    assert "/contacts/:id" in endpoints
    assert len(found) <= (metric_labels.MAX_ENDPOINTS_PER_INTEGRATION + 1) * 3
    total = sum(v for k, v in store.read("api_calls_total").items())
    assert total == 40_000  # every call is still counted, under its template or the overflow


def test_each_integration_has_its_own_endpoint_bound(store: metrics.MemoryStore) -> None:
    for n in range(200):
        metrics.observe_call("a", "GET", f"/x{chr(97 + n % 26)}{chr(97 + n // 26)}", 200, 0.1)
    metrics.observe_call("b", "GET", "/fresh", 200, 0.1)
    endpoints = {(labels[0], labels[1]) for labels in label_sets(store)}
    assert ("b", "/fresh") in endpoints
    on_a = {endpoint for integration, endpoint in endpoints if integration == "a"}
    assert len(on_a) == metric_labels.MAX_ENDPOINTS_PER_INTEGRATION + 1

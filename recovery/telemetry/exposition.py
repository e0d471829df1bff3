"""The Prometheus text exposition of the metrics (`recovery.telemetry.metrics` stores them):
the stored counters and histograms, and gauges read from their source of truth at scrape time.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from recovery.config.queues import DLQ_QUEUE
from recovery.telemetry.metrics import BUCKETS, SPECS, MetricStore, Spec

log = structlog.get_logger(__name__)

BREAKER_STATE_VALUES = {"closed": 0, "open": 1, "half_open": 2}


class StoredCollector:
    """Turns the stored hashes into Prometheus metric families."""

    def __init__(self, store: MetricStore) -> None:
        self._store = store

    def collect(self) -> Iterator[Metric]:
        for spec in SPECS.values():
            fields = self._store.read(spec.name)
            if spec.kind == "counter":
                family = CounterMetricFamily(spec.name, spec.help, labels=spec.labels)
                for field, value in sorted(fields.items()):
                    family.add_metric(json.loads(field), value)
                yield family
            else:
                yield _histogram_family(spec, fields)


def _histogram_family(spec: Spec, fields: Mapping[str, float]) -> HistogramMetricFamily:
    per_labels: dict[tuple[str, ...], dict[str, float]] = {}
    width = len(spec.labels)
    for field, value in fields.items():
        parts = json.loads(field)
        labels, kind, bound = tuple(parts[:width]), parts[width], parts[width + 1]
        per_labels.setdefault(labels, {})[bound if kind == "le" else "sum"] = value
    family = HistogramMetricFamily(spec.name, spec.help, labels=spec.labels)
    for labels, counts in sorted(per_labels.items()):
        running = 0.0
        buckets: list[tuple[str, float]] = []
        for bound in [floatToGoString(b) for b in BUCKETS] + ["+Inf"]:
            running += counts.get(bound, 0.0)
            buckets.append((bound, running))
        family.add_metric(list(labels), buckets, counts.get("sum", 0.0))
    return family


class LiveStateCollector:
    """Gauges read from their source of truth at scrape time: breakers and queue depths."""

    def __init__(
        self,
        breaker_states: Callable[[], Mapping[str, str]],
        queue_depths: Callable[[], Mapping[str, int]],
        dlq_queue: str = DLQ_QUEUE,
    ) -> None:
        self._breaker_states = breaker_states
        self._queue_depths = queue_depths
        self._dlq_queue = dlq_queue

    def collect(self) -> Iterator[Metric]:
        breakers = GaugeMetricFamily(
            "circuit_breaker_state", "Circuit breaker state: 0 closed, 1 open, 2 half-open.",
            labels=("integration",))
        for integration, state in sorted(_safely(self._breaker_states).items()):
            if state in BREAKER_STATE_VALUES:
                breakers.add_metric([integration], BREAKER_STATE_VALUES[state])
        yield breakers
        depths = _safely(self._queue_depths)
        queues = GaugeMetricFamily("queue_depth", "Messages waiting in a broker queue.",
                                   labels=("queue",))
        for name, depth in sorted(depths.items()):
            queues.add_metric([name], depth)
        yield queues
        if self._dlq_queue in depths:
            yield GaugeMetricFamily("dlq_depth", "Jobs parked in the dead-letter queue.",
                                    value=depths[self._dlq_queue])


def _safely(read: Callable[[], Mapping[str, Any]]) -> Mapping[str, Any]:
    """A scrape shows what it can: a failing source is logged and left out."""
    try:
        return read()
    except Exception as exc:
        log.warning("metrics_source_failed", source=getattr(read, "__name__", "?"),
                    error=str(exc), error_type=type(exc).__name__)
        return {}


def render(store: MetricStore, live: LiveStateCollector | None = None) -> bytes:
    """The Prometheus text exposition of the stored metrics and, if given, the live gauges."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoredCollector(store))
    if live is not None:
        registry.register(live)
    return generate_latest(registry)

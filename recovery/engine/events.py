"""What a delivery reports, and who listens: the pipeline and the outcome publish small frozen
events; audit, metrics, alerts and Sentry subscribe, one concern per subscriber.

In the manner of Dramatiq's middleware hooks: the engine says what happened (a delivery
started, a call was made, an attempt recorded, a decision taken, a job finished) and does
not know who writes rows, counts, alerts or reports it. The runtime builds the bus with the
standard subscribers (`standard_bus`); a subscriber's exception propagates to the publisher,
exactly as the inline call it replaces would have raised.

Dispatch is by the event's class through a dict built once, so the hot path costs the
dataclass plus one lookup and a call per subscriber.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from recovery.audit.writer import AttemptRecord, AuditWriter
from recovery.config.registry import Integration
from recovery.core.message import JobSpec
from recovery.core.redact import redact_params
from recovery.telemetry import alerts, metrics, sentry


@dataclass(frozen=True, slots=True)
class DeliveryStarted:
    """A delivery claimed its job and is about to call (or to be blocked)."""

    job: JobSpec
    integration: Integration
    attempt: int


@dataclass(frozen=True, slots=True)
class CallMade:
    """One HTTP call ended: its status code, or the error category when there was none."""

    integration_id: str
    method: str
    path: str
    label: int | str | None
    elapsed_s: float


@dataclass(frozen=True, slots=True)
class AttemptRecorded:
    """One attempt of the audit trail: a call, a deferral or a duplicate."""

    record: AttemptRecord


@dataclass(frozen=True, slots=True)
class JobStatusEvent:
    """A job's new status and the details that came with it (`AuditWriter.job_status`'s
    keywords). Subscribers handle its two kinds below: dispatch is by the exact class."""

    job_id: str
    status: str
    fields: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StatusChanged(JobStatusEvent):
    """A job moved to a non-final status (retrying, deferred, queued again)."""


@dataclass(frozen=True, slots=True)
class RetryScheduled:
    """A retry was handed back to the broker with a countdown from `delay_source`."""

    integration_id: str
    delay_source: str


@dataclass(frozen=True, slots=True)
class RecoveryTried:
    """A recovery strategy ended: `recovered` says whether the job was served."""

    strategy: str
    recovered: bool


@dataclass(frozen=True, slots=True)
class OperatorAlerted:
    """Something an operator must look at (a refused fresh token, a poison job)."""

    kind: str
    message: str
    integration: str | None
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class JobFinished(JobStatusEvent):
    """A job reached its final status (succeeded, degraded, duplicate, failed, dead); only
    `recovery.engine.outcome` publishes it."""


@dataclass(frozen=True, slots=True)
class JobGaveUp:
    """A job ends dead or failed: what error trackers hear."""

    job: JobSpec
    status: str
    reason: str
    http_status: int | None


@dataclass(frozen=True, slots=True)
class WorkflowRunEnded:
    """A workflow run reached its final status (succeeded, degraded, compensated, dead)."""

    workflow: str
    outcome: str


Event = (DeliveryStarted | CallMade | AttemptRecorded | StatusChanged | RetryScheduled
         | RecoveryTried | OperatorAlerted | JobFinished | JobGaveUp | WorkflowRunEnded)
Handler = Callable[[Any], None]


class Subscriber(Protocol):
    """One concern's handlers, by the event class each one handles."""

    def handlers(self) -> Mapping[type, Handler]: ...


class EventBus:
    """Publishes an event to every handler of its class, in subscription order."""

    def __init__(self, subscribers: Iterable[Subscriber]) -> None:
        table: dict[type, list[Handler]] = {}
        for subscriber in subscribers:
            for kind, handler in subscriber.handlers().items():
                table.setdefault(kind, []).append(handler)
        self._table = {kind: tuple(handlers) for kind, handlers in table.items()}

    def publish(self, event: Event) -> None:
        for handler in self._table.get(type(event), ()):
            handler(event)


class AuditSubscriber:
    """The audit trail: job rows and attempt rows. Reads the writer at each event, so a
    runtime whose writer is replaced (tests, the demo) writes to the new one."""

    def __init__(self, writer: Callable[[], AuditWriter]) -> None:
        self._writer = writer

    def handlers(self) -> Mapping[type, Handler]:
        return {DeliveryStarted: self._started, AttemptRecorded: self._attempt,
                StatusChanged: self._status, JobFinished: self._finished}

    def _started(self, event: DeliveryStarted) -> None:
        job = event.job
        self._writer().job_started(job.job_id, job.integration, job.method, job.path,
                                   redact_params(job.params or {}, event.integration.audit),
                                   job.idempotency_key, event.attempt)

    def _attempt(self, event: AttemptRecorded) -> None:
        self._writer().attempt(event.record)

    def _status(self, event: StatusChanged) -> None:
        self._writer().job_status(event.job_id, event.status, **event.fields)

    def _finished(self, event: JobFinished) -> None:
        self._writer().job_status(event.job_id, event.status, finished=True, **event.fields)


class MetricsSubscriber:
    """Prometheus counters and histograms."""

    def handlers(self) -> Mapping[type, Handler]:
        return {CallMade: self._call, RetryScheduled: self._retry, RecoveryTried: self._recovery,
                WorkflowRunEnded: self._workflow_run}

    @staticmethod
    def _call(event: CallMade) -> None:
        metrics.observe_call(event.integration_id, event.method, event.path, event.label,
                             event.elapsed_s)

    @staticmethod
    def _retry(event: RetryScheduled) -> None:
        metrics.observe_retry_scheduled(event.integration_id, event.delay_source)

    @staticmethod
    def _recovery(event: RecoveryTried) -> None:
        metrics.observe_recovery(event.strategy, event.recovered)

    @staticmethod
    def _workflow_run(event: WorkflowRunEnded) -> None:
        metrics.observe_workflow_run(event.workflow, event.outcome)


class AlertsSubscriber:
    """Webhook, log and audit alerts (`recovery.telemetry.alerts`)."""

    def handlers(self) -> Mapping[type, Handler]:
        return {OperatorAlerted: self._alert}

    @staticmethod
    def _alert(event: OperatorAlerted) -> None:
        alerts.alert(event.kind, event.message, event.integration, **event.details)


class SentrySubscriber:
    """Sentry issues for jobs that end dead or failed (when SENTRY_DSN is set)."""

    def handlers(self) -> Mapping[type, Handler]:
        return {JobGaveUp: self._gave_up}

    @staticmethod
    def _gave_up(event: JobGaveUp) -> None:
        sentry.capture_job_failure(event.job.job_id, event.job.integration, event.status,
                                   event.reason, event.http_status)


def standard_bus(writer: Callable[[], AuditWriter]) -> EventBus:
    """The subscribers every runtime has: audit, metrics, alerts, Sentry."""
    return EventBus([AuditSubscriber(writer), MetricsSubscriber(), AlertsSubscriber(),
                     SentrySubscriber()])

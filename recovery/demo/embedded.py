"""An in-process broker and worker for the demo when neither Redis nor PostgreSQL is around.

Jobs wait in a heap ordered by due time; worker threads take the due ones and run the same
pipeline a Celery worker runs (`recovery.engine.pipeline.run_job`).
A retry or deferral goes back on the
heap with its countdown, as a Celery retry would go back to the broker. Dead jobs land in an
in-memory dead-letter list instead of the `dlq` broker queue, mirrored in the audit trail.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from dataclasses import dataclass, field

import structlog

from recovery.config.registry import Registry
from recovery.config.settings import Settings
from recovery.core.message import JobSpec, Progress
from recovery.core.redact import redact_params
from recovery.core.step import Step
from recovery.dlq.envelope import Envelope
from recovery.engine.outcome import after_exception, conclude, mark_crashed, park_dead
from recovery.engine.pipeline import run_job
from recovery.engine.runtime import Runtime, build_runtime

log = structlog.get_logger(__name__)

IDLE_WAIT_S = 0.5


def embedded_runtime(settings: Settings, registry: Registry) -> Runtime:
    """A runtime without Redis: in-process breaker, limiter, budget, tokens, idempotency."""
    return build_runtime(settings, registry, None)


@dataclass(order=True)
class _Delivery:
    due: float
    seq: int
    job: JobSpec = field(compare=False)
    progress: Progress = field(compare=False)


class EmbeddedBroker:
    """A due-time heap served by worker threads; `close()` stops them (pending jobs are dropped).

    It is a demo `Backend`: `enqueue`, `replay_dead_letters` and `close`.
    """

    mode = "embedded"

    def __init__(self, rt: Runtime, workers: int = 2) -> None:
        self.rt = rt
        self._dead: list[Envelope] = []
        self._heap: list[_Delivery] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stopping = False
        self._threads = [
            threading.Thread(target=self._serve, name=f"embedded-worker-{n}", daemon=True)
            for n in range(1, workers + 1)
        ]
        for thread in self._threads:
            thread.start()

    def enqueue(self, job: JobSpec) -> None:
        """Record the job as queued in the audit trail, then hand it to the workers."""
        self.rt.audit.job_queued(job.job_id, job.integration, job.method, job.path,
                                 redact_params(job.params or {}), job.idempotency_key,
                                 job.replay_count)
        self._push(job, Progress(), 0.0)

    def replay_dead_letters(self, integration: str) -> list[str]:
        """Take an integration's envelopes off the dead-letter list and enqueue them again."""
        with self._cond:
            taken = [e for e in self._dead if e.integration == integration]
            self._dead = [e for e in self._dead if e.integration != integration]
        for envelope in taken:
            self.rt.audit.dead_letter_state(envelope.job_id, "replayed", "replayed by the demo")
            self.enqueue(envelope.job().replayed())
        return [envelope.job_id for envelope in taken]

    def close(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=10)

    def _push(self, job: JobSpec, progress: Progress, countdown_s: float) -> None:
        with self._cond:
            heapq.heappush(self._heap, _Delivery(time.monotonic() + max(countdown_s, 0.0),
                                                 next(self._seq), job, progress))
            self._cond.notify()

    def _next_due(self) -> _Delivery | None:
        """Block until a delivery is due (returned) or the broker stops (None)."""
        with self._cond:
            while not self._stopping:
                if self._heap:
                    wait_s = self._heap[0].due - time.monotonic()
                    if wait_s <= 0:
                        return heapq.heappop(self._heap)
                else:
                    wait_s = IDLE_WAIT_S
                self._cond.wait(timeout=min(wait_s, IDLE_WAIT_S))
            return None

    def _serve(self) -> None:
        while (delivery := self._next_due()) is not None:
            try:
                self._deliver(delivery)
            except Exception as exc:  # a worker thread must survive any one job
                log.error("embedded_job_crashed", job_id=delivery.job.job_id, error=str(exc))
                mark_crashed(self.rt, delivery.job.job_id, f"The job crashed: {exc}")

    def _deliver(self, delivery: _Delivery) -> None:
        try:
            step = run_job(delivery.job, delivery.progress, self.rt)
        except Exception as exc:  # the same requeue-or-dead-letter decision as a worker's
            step = after_exception(delivery.job, delivery.progress, self.rt, exc)
        if step.status in ("retry", "defer", "requeue"):
            self._push(delivery.job, step.progress, step.countdown_s or 0.0)
        elif step.status == "dead":
            self._park(delivery.job, step)
        else:
            conclude(delivery.job, step, self.rt)

    def _park(self, job: JobSpec, step: Step) -> None:
        """Dead-letter a job into the in-memory list, recorded as a worker records it."""
        park_dead(self.rt, job, step, sink=self._keep_dead)

    def _keep_dead(self, envelope: Envelope) -> None:
        with self._cond:
            self._dead.append(envelope)

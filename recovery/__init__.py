"""api-recovery: resilient third-party HTTP calls as Celery jobs.

`recovery.enqueue(integration, method, path, ...)` is the producer's entry point; it returns a
`JobHandle` (the job id, a str) whose `get(timeout=)` waits for the job's `Outcome`.
`recovery.result(job_id)` reads an outcome without waiting.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from recovery.core.outcome_value import Outcome

__all__ = ["JobHandle", "ResultTimeout", "enqueue", "result"]


class ResultTimeout(TimeoutError):
    """The job had not finished (or its result had expired) when the wait ended."""


class JobHandle(str):
    """The id of an enqueued job (a str, so callers that keep the id keep working), and the
    way to its outcome. Outcomes live in Redis for RESULT_TTL."""

    __slots__ = ()

    @property
    def job_id(self) -> str:
        return str(self)

    def get(self, timeout: float | None = 30.0) -> Outcome:
        """Wait for the job's outcome (without polling: Redis wakes the waiter). `timeout`
        None waits up to RESULT_TTL. Raises ResultTimeout if the job has not finished.

        A failed or dead-lettered job returns its outcome too (`outcome.ok` is False); a
        dead job that is replayed and succeeds later replaces it with the new outcome.
        """
        from recovery.engine.producer_runtime import get_producer_runtime

        found = get_producer_runtime().results.wait(self.job_id, timeout)
        if found is None:
            raise ResultTimeout(
                f"Job {self.job_id} had not finished after {timeout} s (or its result expired "
                "after RESULT_TTL); wait longer, or look it up with `recovery-cli jobs show`.")
        return found

    def ready(self) -> bool:
        """Whether the job's outcome is there now."""
        return result(self.job_id) is not None


def enqueue(integration: str, method: str, path: str, **options: Any) -> JobHandle:
    """Validate and enqueue one integration call; see `recovery.engine.producer.enqueue`."""
    # Imported when called: `import recovery` loads nothing heavy.
    from recovery.engine.producer import enqueue as _enqueue

    return _enqueue(integration, method, path, **options)


def result(job_id: str) -> Outcome | None:
    """The job's final outcome, or None while it runs (or after RESULT_TTL)."""
    from recovery.engine.producer_runtime import get_producer_runtime

    return get_producer_runtime().results.get(str(job_id))

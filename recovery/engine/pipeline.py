"""One delivery of a job: gates, the call, classification, and what happens next.

    idempotency claim -> rate limit gate -> breaker permit -> http call -> classify
    -> breaker record -> audit attempt -> policy: done | retry | defer | fallback | dead-letter

The task adapter turns the returned `Step` into a Celery retry, a dead letter, or a result;
`recovery.engine.outcome` writes every final state and decides what an exception raised here
becomes.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import requests
import structlog

from recovery.audit.writer import AttemptRecord
from recovery.config.broker import max_countdown_s
from recovery.config.registry import Integration
from recovery.core import policy
from recovery.core.errors import Classification, ErrorCategory, classify
from recovery.core.message import JobSpec, Progress
from recovery.core.policy import (
    DEAD_LETTER_STRATEGY,
    BlockSource,
    Decision,
    decide_after_failure,
    decide_when_blocked,
)
from recovery.core.step import Step
from recovery.core.strategies import Strategy, resolve, strategy_for
from recovery.engine.events import (
    AttemptRecorded,
    CallMade,
    DeliveryStarted,
    OperatorAlerted,
    RecoveryTried,
    RetryScheduled,
    StatusChanged,
)
from recovery.engine.fallback import has_fallback, remember, response_body, run_fallbacks
from recovery.engine.gate_steps import BUDGET_SPENT
from recovery.engine.http import send
from recovery.engine.outcome import degraded, duplicate, succeeded
from recovery.engine.runtime import Runtime
from recovery.state.breaker import Permit
from recovery.state.budget import spread_deferral
from recovery.state.idempotency import Claim
from recovery.state.tokens import AuthConfigError, TokenRefreshError

log = structlog.get_logger(__name__)

WORKER = f"{socket.gethostname()}:{os.getpid()}"
#: Whose fallbacks a job blocked beyond the defer window may use (the retry budget: all).
_BLOCKED_BY: dict[str, ErrorCategory] = {"breaker": ErrorCategory.SERVER_ERROR,
                                         "rate-limit": ErrorCategory.RATE_LIMIT}


@dataclass(frozen=True)
class CallResult:
    started_at: datetime
    duration_ms: int
    response: requests.Response | None
    failure: Classification | None
    token: str | None = None


def delivery_id(job: JobSpec, progress: Progress) -> str:
    """Names one message: a job at one replay, attempt and deferral. Redelivered, it is the
    same message again; the count of its deliveries tells a poison job apart. A requeue after
    an infrastructure error is a message of its own (it is counted in the message instead)."""
    name = f"{job.job_id}:{job.replay_count}:{progress.attempt}:{progress.deferrals}"
    return f"{name}:r{progress.requeues}" if progress.requeues else name


def run_job(job: JobSpec, progress: Progress, rt: Runtime) -> Step:
    integration = rt.registry.get(job.integration)
    claim_ttl_ms = integration.timeout_ms * 2 + 5000
    admission = rt.gate.enter(integration, job.idempotency_key, job.job_id, claim_ttl_ms,
                            delivery_id(job, progress), first_attempt=progress.attempt == 1,
                            budget_pending=progress.budget_pending,
                            max_deliveries=rt.settings.poison_max_deliveries)
    claimed = admission.claim
    if claimed.claim is Claim.SUCCEEDED:
        return _duplicate(job, progress, rt, claimed.succeeded_job)
    if claimed.claim is Claim.BUSY:
        return _blocked(job, progress, rt, integration, 1.0, "idempotency-busy",
                        "Another delivery of the same idempotency key is running.")
    released = False
    try:
        if claimed.deliveries > rt.settings.poison_max_deliveries:
            return _poison(job, progress, rt, claimed.deliveries)
        rt.events.publish(DeliveryStarted(job, integration, progress.attempt))
        block = admission.block
        if block is not None:
            return _blocked(job, progress, rt, integration, block.wait_s, block.source, block.why)
        progress = replace(progress, budget_pending=False)
        result = _call_with_auth(job, integration, rt, progress)
        if result.failure is None:
            try:
                return _succeeded(job, progress, rt, integration, result)
            finally:
                _settle(job, integration, rt, admission.permit, None, counts=True)
                released = True
        strategy = strategy_for(integration, result.failure)
        _settle(job, integration, rt, admission.permit, result.failure,
                counts=strategy.counts_against_breaker(result.failure))
        released = True
        return _failed(job, progress, rt, integration, result, strategy)
    finally:  # also when anything above raised: the next delivery must find the key free
        if not released:
            rt.idempotency.release(job.integration, job.idempotency_key, job.job_id, job.job_id,
                                   succeeded=False)


def _settle(job: JobSpec, integration: Integration, rt: Runtime, permit: Permit | None,
            failure: Classification | None, *, counts: bool) -> None:
    """Breaker outcome (`counts`: whether a failure counts against the breaker, as its
    strategy says) and claim release in one round trip; after a success the delivery's audit
    rows ride along to the spool (the task's end-of-run commit then has nothing left)."""
    batcher = rt.audit.batcher
    taken = batcher.take_for_spool() if batcher is not None and failure is None else None
    spooled = False
    try:
        spooled = rt.gate.settle(integration, permit, job.idempotency_key, job.job_id,
                                 job.job_id, success=failure is None, counts=counts,
                                 audit=taken[1] if taken is not None else None)
    finally:  # rows that did not ride along stay buffered, also when settle raised
        if taken is not None and batcher is not None:
            batcher.taken_done(taken[0], spooled=spooled)


def _token_failure(exc: Exception) -> Classification:
    """A token endpoint that fails is worth retrying; a missing client secret is not."""
    retryable = isinstance(exc, TokenRefreshError)
    category = ErrorCategory.TRANSIENT if retryable else ErrorCategory.AUTHENTICATION
    return Classification(categories=frozenset({ErrorCategory.AUTHENTICATION, category}),
                          primary=ErrorCategory.AUTHENTICATION, retryable=retryable, status=None,
                          retry_after_s=None, message=str(exc), strategy="auth-token-refresh")


def _call_once(job: JobSpec, integration: Integration, rt: Runtime) -> CallResult:
    timeout_ms = min(integration.timeout_ms, integration.circuit_breaker.call_timeout_ms)
    started_at = datetime.now(UTC)
    clock = time.perf_counter()
    response: requests.Response | None = None
    token: str | None = None
    try:
        token = rt.tokens.token_for(integration)
        auth = {"Authorization": f"Bearer {token}"} if token else {}
        headers = {**job.headers, **auth, "Idempotency-Key": job.idempotency_key}
        response = send(integration, job.method, job.path, json=job.json, params=job.params,
                        headers=headers, timeout_s=timeout_ms / 1000)
        failure = classify(response=response) if response.status_code >= 400 else None
    except requests.RequestException as exc:
        failure = classify(exc)
    except (TokenRefreshError, AuthConfigError) as exc:
        failure = _token_failure(exc)
    elapsed_s = time.perf_counter() - clock
    label: int | str | None = response.status_code if response is not None else None
    if label is None and failure is not None:
        label = str(failure.primary)
    rt.events.publish(CallMade(integration.id, job.method, job.path, label, elapsed_s))
    return CallResult(started_at, int(elapsed_s * 1000), response, failure, token)


def _call_with_auth(job: JobSpec, integration: Integration, rt: Runtime,
                    progress: Progress) -> CallResult:
    """The call under the breaker permit; a 401 refreshes the shared token and calls again, as
    often as the authentication strategy allows (`attempts`: once by default), unless its
    `refresh_token` is off. The refreshed calls spend no attempt of the job."""
    result = _call_once(job, integration, rt)
    if result.failure is None or result.failure.status != 401:
        return result
    auth = resolve(integration, ErrorCategory.AUTHENTICATION, 401)
    refreshes = 0
    while (result.failure is not None and result.failure.status == 401 and auth.refresh_token
           and result.token is not None and not progress.auth_refreshed
           and not auth.stop(refreshes + 1)):
        _record_attempt(job, progress.attempt, result, "retry", rt, strategy=auth.name)
        rt.tokens.invalidate(integration, result.token)
        result = _call_once(job, integration, rt)
        refreshes += 1
    if refreshes and result.failure is not None and result.failure.status == 401:
        rt.events.publish(OperatorAlerted(
            "token_refresh_failed", "The upstream refused a freshly refreshed token; "
            "check the integration's OAuth client.", integration.id, {"job_id": job.job_id}))
    return result


def _succeeded(job: JobSpec, progress: Progress, rt: Runtime, integration: Integration,
               result: CallResult) -> Step:
    assert result.response is not None
    body = response_body(result.response)
    remember(rt, integration, job, body)
    _record_attempt(job, progress.attempt, result, "done", rt)
    strategy = progress_strategy(progress)
    if strategy is not None:
        rt.events.publish(RecoveryTried(strategy, True))
    succeeded(rt, job, progress, result.response.status_code, strategy)
    return Step("succeeded", progress, progress.attempt,
                http_status=result.response.status_code, body=body, strategy=strategy,
                reason="The upstream answered successfully.")


def progress_strategy(progress: Progress) -> str | None:
    return progress.recovered_by if progress.attempt > 1 else None


def _failed(job: JobSpec, progress: Progress, rt: Runtime, integration: Integration,
            result: CallResult, strategy: Strategy) -> Step:
    """A failed call's decision. `strategy` is the failure's (its primary category and status,
    which the Retry-After cap below leaves as they are)."""
    failure = result.failure
    assert failure is not None
    failure = policy.cap_retry_after(failure, rt.settings.retry_after_max_ms / 1000, integration.id)
    if failure.retry_after_s:
        rt.limiter.pause(integration.id, failure.retry_after_s, failure.message)
    failure = replace(failure, strategy=strategy.name)
    decision = decide_after_failure(
        failure, progress.attempt, integration, max_countdown_s=max_countdown_s(rt.settings),
        has_fallback=has_fallback(rt, integration, strategy.chain(integration)),
        dlq_enabled=rt.settings.dlq_enabled, strategy=strategy)
    _record_attempt(job, progress.attempt, result, decision.action, rt, decision=decision)
    if decision.action == "retry":
        rt.events.publish(StatusChanged(job.job_id, "retrying", {
            "attempts": progress.attempt, "last_status": failure.status,
            "last_error": failure.message}))
        nxt = replace(progress.next_attempt(), recovered_by=decision.strategy)
        over_budget_s = rt.budget.try_charge_retry(integration.id, integration.retry_budget)
        if over_budget_s > 0:  # deferred without spending the next attempt; charged later
            delay_s = spread_deferral(over_budget_s, integration.retry_budget)
            return _blocked(job, replace(nxt, budget_pending=True), rt, integration,
                            max(delay_s, decision.delay_s or 0.0), "retry-budget", BUDGET_SPENT)
        rt.events.publish(RetryScheduled(integration.id, decision.delay_source or "backoff"))
        return Step("retry", nxt, progress.attempt, countdown_s=decision.delay_s,
                    http_status=failure.status, strategy=decision.strategy, failure=failure,
                    reason=decision.reason)
    return _end_without_retry(job, progress, rt, integration, decision, failure, strategy)


def _blocked(job: JobSpec, progress: Progress, rt: Runtime, integration: Integration,
             wait_s: float, source: BlockSource, why: str) -> Step:
    strategy = _BLOCKED_BY.get(source)
    chosen = resolve(integration, strategy) if strategy is not None else None
    decision = decide_when_blocked(
        wait_s, progress.blocked_s, max_defer_s=rt.settings.max_defer_ms / 1000, source=source,
        has_fallback=has_fallback(rt, integration, chosen.chain(integration) if chosen else None),
        dlq_enabled=rt.settings.dlq_enabled)
    if chosen is not None and decision.action != "dead_letter":
        decision = replace(decision, strategy=chosen.name)
    rt.events.publish(AttemptRecorded(AttemptRecord(
        job_id=job.job_id, number=progress.attempt, kind="deferral",
        started_at=datetime.now(UTC), duration_ms=0, decision=decision.action,
        delay_ms=_ms(decision.delay_s), delay_source=decision.delay_source,
        strategy=decision.strategy, error_message=why, worker=WORKER)))
    if decision.action == "defer":
        delay = min(decision.delay_s if decision.delay_s is not None else max(wait_s, 0.0),
                    max_countdown_s(rt.settings))
        rt.events.publish(StatusChanged(job.job_id, "deferred",
                                        {"deferrals": progress.deferrals + 1}))
        return Step("defer", progress.deferred(delay), progress.attempt - 1, countdown_s=delay,
                    strategy=decision.strategy, reason=decision.reason)
    return _end_without_retry(job, progress, rt, integration, decision, None, chosen)


def _end_without_retry(job: JobSpec, progress: Progress, rt: Runtime, integration: Integration,
                       decision: Decision, failure: Classification | None,
                       strategy: Strategy | None = None) -> Step:
    """Fall back if allowed and possible (along the strategy's chain), else dead-letter or
    fail; a strategy that alerts raises its alert first."""
    status = failure.status if failure else None
    message = failure.message if failure else decision.reason
    spent = progress.attempt if failure else progress.attempt - 1  # a blocked job made no call
    if strategy is not None and strategy.alert:
        rt.events.publish(OperatorAlerted(
            "strategy_gave_up", f"The {strategy.name} strategy gave up on job {job.job_id}: "
            f"{decision.reason}", integration.id,
            {"job_id": job.job_id, "strategy": strategy.name}))
    if decision.action == "fallback":
        served = run_fallbacks(rt, integration, job,
                               strategy.chain(integration) if strategy else None)
        rt.events.publish(RecoveryTried("graceful-degradation", served is not None))
        if served is not None:
            degraded(rt, job, spent, served.kind, status, message)
            return Step("degraded", progress, spent, http_status=served.http_status,
                        body=served.body, strategy="graceful-degradation",
                        fallback=served.kind, failure=failure,
                        reason=f"Served by the {served.kind} fallback. {decision.reason}")
    final = decision.final
    assert final is not None, f"a {decision.action} decision does not end a job"
    return Step(final, progress, spent, http_status=status, failure=failure,
                strategy=DEAD_LETTER_STRATEGY if final == "dead" else decision.strategy,
                reason=decision.reason)


def _poison(job: JobSpec, progress: Progress, rt: Runtime, deliveries: int) -> Step:
    """A message delivered again and again means its worker process died every time (late
    acks redeliver it): past POISON_MAX_DELIVERIES it is dead-lettered, never looped forever."""
    message = (f"poison: the job was delivered {deliveries} times and its worker died "
               "each time.")
    rt.events.publish(OperatorAlerted(
        "poison_job", f"Job {job.job_id} {message[8:]} It goes to the dead-letter queue.",
        job.integration, {"job_id": job.job_id, "deliveries": deliveries}))
    failure = Classification(
        categories=frozenset({ErrorCategory.UNKNOWN}), primary=ErrorCategory.UNKNOWN,
        retryable=False, status=None, retry_after_s=None, message=message,
        strategy="dead-letter-queue")
    return Step(policy.end_status(rt.settings.dlq_enabled), progress, progress.attempt,
                strategy="dead-letter-queue", failure=failure, reason=message)


def _duplicate(job: JobSpec, progress: Progress, rt: Runtime, succeeded_job: str | None
               ) -> Step:
    rt.events.publish(AttemptRecorded(AttemptRecord(
        job_id=job.job_id, number=progress.attempt, kind="duplicate",
        started_at=datetime.now(UTC), duration_ms=0, decision="duplicate", worker=WORKER,
        error_message="This idempotency key already succeeded; the call was not repeated.")))
    if succeeded_job != job.job_id:
        duplicate(rt, job)  # another job's success; a redelivery of this one stays succeeded
    return Step("duplicate", progress, progress.attempt - 1,
                reason="The idempotency key already succeeded.", duplicate_of=succeeded_job)


def _record_attempt(job: JobSpec, number: int, result: CallResult, action: str, rt: Runtime,
                    *, decision: Decision | None = None, strategy: str | None = None) -> None:
    failure = result.failure
    rt.events.publish(AttemptRecorded(AttemptRecord(
        job_id=job.job_id, number=number, kind="call", started_at=result.started_at,
        duration_ms=result.duration_ms,
        http_status=result.response.status_code if result.response is not None else None,
        error_categories=sorted(failure.categories) if failure else [],
        retryable=failure.retryable if failure else None,
        error_message=failure.message if failure else None, decision=action,
        delay_ms=_ms(decision.delay_s) if decision else None,
        delay_source=decision.delay_source if decision else None,
        strategy=strategy or (decision.strategy if decision else None), worker=WORKER)))


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else round(seconds * 1000)

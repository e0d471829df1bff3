"""`recovery-cli demo`: the whole recovery flow against a local flaky upstream, in about a minute.

Phases: healthy calls, a flaky call that recovers by retrying, an outage that opens the breaker
(later jobs are deferred without calls, then served by a fallback), the recovery (half-open, one
probe, closed), bad requests that are dead-lettered, and their replay once the upstream is fixed.
The flow runs on a `Backend`: real Celery workers on Redis and PostgreSQL
(`recovery.cli.demo.ServicesBackend`) or the in-process broker of `recovery.demo.embedded`. Every
number in the summary is read back from the audit trail and the fault server, never assumed.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml
from sqlalchemy import Table, func, select

from recovery.audit.models import TERMINAL_STATUSES, Attempt, DeadLetter, Job
from recovery.audit.queries import list_jobs, list_transitions
from recovery.config.registry import Integration
from recovery.core.message import JobSpec
from recovery.demo.faultserver import FaultServer
from recovery.engine.producer import build_job
from recovery.engine.runtime import Runtime

Say = Callable[[str], None]

_JOBS: Table = Job.__table__  # type: ignore[assignment]
_ATTEMPTS: Table = Attempt.__table__  # type: ignore[assignment]
_DEAD: Table = DeadLetter.__table__  # type: ignore[assignment]
TERMINAL = frozenset(status.value for status in TERMINAL_STATUSES)

RESET_TIMEOUT_MS = 2000
MAX_DEFER_MS = 3000
PHASE_TIMEOUT_S = 60.0
POLL_S = 0.1


class DemoError(RuntimeError):
    """The demo could not run its flow to the end (a phase timed out, a worker died)."""


class Backend(Protocol):
    """Where the demo's jobs run: real workers, or the embedded broker."""

    mode: str
    rt: Runtime

    def enqueue(self, job: JobSpec) -> None: ...

    def replay_dead_letters(self, integration: str) -> list[str]:
        """Replay the integration's parked dead letters; returns the replayed job ids."""
        ...

    def close(self) -> None: ...


@dataclass
class Pace:
    """Pauses between phases so a person can follow; `fast` drops them (tests)."""

    fast: bool

    def pause(self, seconds: float = 4.0) -> None:
        if not self.fast:
            time.sleep(seconds)


def demo_ids() -> tuple[str, str]:
    """A unique integration id and Redis key prefix, so a demo never meets another one."""
    token = uuid.uuid4().hex[:8]
    return f"demo-{token}", f"demo-{token}:"


def demo_env(integrations_file: Path, prefix: str) -> dict[str, str]:
    """The settings every demo process (this one and its workers) runs with."""
    return {
        "RECOVERY_INTEGRATIONS": str(integrations_file),
        "RECOVERY_REDIS_PREFIX": prefix,
        "MAX_DEFER_WINDOW": str(MAX_DEFER_MS),
        "DLQ_ENABLED": "true",
        "ENABLE_CIRCUIT_BREAKER": "true",
        "ENABLE_GRACEFUL_DEGRADATION": "true",
    }


def write_integration(path: Path, integration_id: str, upstream_url: str) -> Path:
    """The demo integration: 3 attempts with short delays, a quick breaker, cache + degraded."""
    entry = {
        "id": integration_id,
        "name": "Demo upstream",
        "base_url": upstream_url,
        "timeout_ms": 2000,
        "retry": {"max_attempts": 3, "initial_delay_ms": 200, "backoff_factor": 2,
                  "max_delay_ms": 1000, "jitter": 0.1},
        "circuit_breaker": {"enabled": True, "threshold": 3, "reset_timeout_ms": RESET_TIMEOUT_MS,
                            "call_timeout_ms": 2000, "half_open_max_calls": 1},
        "fallbacks": [
            {"type": "cache", "priority": 1, "ttl_ms": 600000},
            {"type": "degraded", "priority": 2,
             "message": "The demo upstream is down; this is a degraded answer."},
        ],
        "rate_limit": {"window_ms": 1000, "max_requests": 100},
    }
    path.write_text(yaml.safe_dump({"integrations": [entry]}, sort_keys=False))
    return path


@dataclass
class Flow:
    """The running demo: its backend, the upstream, and the jobs of each phase."""

    backend: Backend
    upstream: FaultServer
    integration: Integration
    say: Say
    pace: Pace
    phases: dict[str, list[str]] = field(default_factory=dict)

    @property
    def rt(self) -> Runtime:
        return self.backend.rt

    def submit(self, phase: str, method: str, path: str, json: Any = None) -> str:
        job = build_job(self.rt.registry, self.integration.id, method, path, json=json)
        self.backend.enqueue(job)
        self.phases.setdefault(phase, []).append(job.job_id)
        return job.job_id

    def wait_for(self, job_ids: list[str], statuses: frozenset[str] = TERMINAL,
                 timeout_s: float = PHASE_TIMEOUT_S) -> dict[str, str]:
        """Poll the audit trail until every job has one of `statuses`; returns id -> status."""
        deadline = time.monotonic() + timeout_s
        seen: dict[str, str] = {}
        while time.monotonic() < deadline:
            seen = job_statuses(self.rt, job_ids)
            if len(seen) == len(job_ids) and all(s in statuses for s in seen.values()):
                return seen
            time.sleep(POLL_S)
        waiting = {job_id: seen.get(job_id, "not recorded") for job_id in job_ids
                   if seen.get(job_id) not in statuses}
        raise DemoError(f"{len(waiting)} job(s) did not finish within {timeout_s:.0f} s "
                        f"(their states: {sorted(Counter(waiting.values()).items())}); "
                        "check that the workers are running and can reach the upstream.")

    def wait_for_breaker(self, states: set[str], timeout_s: float = PHASE_TIMEOUT_S) -> str:
        """Poll the shared breaker until it is in one of `states` (open counts down to half)."""
        breaker = self.rt.breaker(self.integration)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            snap = breaker.snapshot()
            state = snap.state
            if state == "open" and snap.time_to_half_open_s is not None and (
                    snap.time_to_half_open_s <= 0):
                state = "half_open"
            if state in states:
                return state
            time.sleep(POLL_S)
        raise DemoError(f"The breaker did not reach {sorted(states)} within {timeout_s:.0f} s.")

    def report(self, phase: str) -> None:
        counts = Counter(job_statuses(self.rt, self.phases.get(phase, [])).values())
        shown = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
        self.say(f"   -> {shown or 'no jobs'}; the upstream has received "
                 f"{calls(len(self.upstream.requests()))} so far.")


def calls(n: int) -> str:
    return f"{n} call" if n == 1 else f"{n} calls"


def job_statuses(rt: Runtime, job_ids: list[str]) -> dict[str, str]:
    if not job_ids:
        return {}
    with rt.engine.connect() as conn:
        rows = conn.execute(select(_JOBS.c.id, _JOBS.c.status).where(_JOBS.c.id.in_(job_ids)))
        return {row.id: row.status for row in rows}


def phase_healthy(flow: Flow) -> None:
    cache = ("; their answers fill the fallback cache" if flow.rt.redis is not None
             else " (without Redis there is no cache fallback)")
    flow.say(f"1. Healthy upstream: 4 calls succeed{cache}.")
    flow.upstream.set_mode("ok")
    ids = [flow.submit("healthy", "GET", path)
           for path in ("/catalog", "/prices", "/stock", "/catalog")]
    flow.wait_for(ids)
    flow.report("healthy")


def phase_flaky(flow: Flow) -> None:
    flow.say("2. Flaky upstream: it answers 503, 503, then 200; the job retries with backoff.")
    flow.upstream.set_script([503, 503, 200])
    job_id = flow.submit("flaky", "GET", "/orders/42")
    flow.wait_for([job_id])
    with flow.rt.engine.connect() as conn:
        attempts = conn.execute(select(_JOBS.c.attempts).where(_JOBS.c.id == job_id)).scalar()
    flow.say(f"   The job ended after {attempts} attempts.")
    flow.report("flaky")


def phase_outage(flow: Flow) -> None:
    flow.say("3. Outage: every call gets 503. After 3 failures in a row the breaker opens.")
    flow.upstream.set_mode("5xx", status=503)
    first = [flow.submit("outage", "GET", path) for path in ("/catalog", "/prices", "/reports")]
    flow.wait_for_breaker({"open"})
    before = len(flow.upstream.requests())
    flow.say("   The breaker is open. 3 more jobs are deferred without calling the upstream, "
             f"then fall back (defer window {MAX_DEFER_MS / 1000:g} s).")
    later = [flow.submit("outage", "GET", path) for path in ("/catalog", "/stock", "/reports")]
    flow.wait_for(first + later)
    flow.say(f"   While the breaker was open the upstream got "
             f"{calls(len(flow.upstream.requests()) - before)} (half-open probes only).")
    flow.report("outage")


def phase_recovery(flow: Flow) -> None:
    flow.say("4. Recovery: the upstream is back. The breaker half-opens, one probe closes it.")
    flow.upstream.set_mode("ok")
    flow.wait_for_breaker({"half_open", "closed"})
    ids = [flow.submit("recovery", "GET", path) for path in ("/catalog", "/prices", "/stock")]
    flow.wait_for(ids)
    flow.report("recovery")


def phase_bad_requests(flow: Flow) -> None:
    flow.say("5. Bad requests: the upstream answers 400. Client errors are not retried and get "
             "no fallback: they are dead-lettered.")
    flow.upstream.set_script([400, 400])
    ids = [flow.submit("bad-requests", "POST", "/orders", json={"sku": "", "quantity": qty})
           for qty in (1, 2)]
    flow.wait_for(ids)
    flow.report("bad-requests")


def phase_replay(flow: Flow) -> None:
    flow.say("6. Replay: the upstream is fixed; the dead letters are replayed and succeed.")
    flow.upstream.set_script([])
    flow.upstream.set_mode("ok")
    replayed = flow.backend.replay_dead_letters(flow.integration.id)
    flow.phases["replay"] = replayed
    flow.wait_for(replayed)
    flow.report("replay")


PHASES = (phase_healthy, phase_flaky, phase_outage, phase_recovery, phase_bad_requests,
          phase_replay)


def run_flow(flow: Flow) -> None:
    for phase in PHASES:
        phase(flow)
        flow.pace.pause()


@dataclass
class Summary:
    mode: str
    integration: str
    duration_s: float
    jobs: int
    jobs_by_status: dict[str, int]
    fallbacks_used: dict[str, int]
    call_attempts: int
    deferrals: int
    upstream_calls: int
    breaker_transitions: list[str]
    dead_letters: int
    replayed: int
    replayed_succeeded: int
    worker_pids: list[int] = field(default_factory=list)
    workflow_runs: dict[str, str] = field(default_factory=dict)  # services mode: label -> status
    ok: bool = False
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarise(rt: Runtime, upstream: FaultServer, integration: str, mode: str,
              duration_s: float) -> Summary:
    """Everything the demo did, read from the audit trail and the fault server."""
    jobs = list_jobs(rt.engine, integration=integration, limit=1000)
    transitions = list(reversed(list_transitions(rt.engine, integration, limit=1000)))
    with rt.engine.connect() as conn:
        kinds: dict[str, int] = dict(conn.execute(
            select(_ATTEMPTS.c.kind, func.count()).join(_JOBS, _JOBS.c.id == _ATTEMPTS.c.job_id)
            .where(_JOBS.c.integration == integration).group_by(_ATTEMPTS.c.kind)).all())
        dead: dict[str, int] = dict(conn.execute(
            select(_DEAD.c.state, func.count()).where(_DEAD.c.integration == integration)
            .group_by(_DEAD.c.state)).all())
    summary = Summary(
        mode=mode, integration=integration, duration_s=round(duration_s, 1), jobs=len(jobs),
        jobs_by_status=dict(Counter(job["status"] for job in jobs)),
        fallbacks_used=dict(Counter(job["fallback_used"] for job in jobs
                                    if job["status"] == "degraded" and job["fallback_used"])),
        call_attempts=int(kinds.get("call", 0)), deferrals=int(kinds.get("deferral", 0)),
        upstream_calls=len(upstream.requests()),
        breaker_transitions=[f"{t['from_state']}->{t['to_state']}" for t in transitions],
        dead_letters=int(sum(dead.values())), replayed=int(dead.get("replayed", 0)),
        replayed_succeeded=sum(1 for job in jobs
                               if job["replay_count"] > 0 and job["status"] == "succeeded"))
    summary.problems = problems_of(summary)
    summary.ok = not summary.problems
    return summary


def problems_of(summary: Summary) -> list[str]:
    """What the flow should have produced and did not, each as a sentence."""
    by_status = summary.jobs_by_status
    checks = [
        (by_status.get("succeeded", 0) > 0, "No job succeeded."),
        (by_status.get("degraded", 0) > 0, "No job was served by a fallback."),
        ("closed->open" in summary.breaker_transitions, "The breaker never opened."),
        (bool(summary.breaker_transitions) and summary.breaker_transitions[-1].endswith("closed"),
         "The breaker did not end closed."),
        (summary.dead_letters > 0, "No job was dead-lettered."),
        (summary.replayed == summary.dead_letters, "Not every dead letter was replayed."),
        (summary.replayed_succeeded == summary.replayed, "Not every replayed job succeeded."),
        (all(status in TERMINAL for status in by_status), "Some jobs never finished."),
    ]
    return [message for passed, message in checks if not passed]

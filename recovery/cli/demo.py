"""`recovery-cli demo`: choose services or embedded mode, run the flow, print the summary.

Services mode uses Redis and PostgreSQL (from REDIS_URL/DATABASE_URL, or the default local
addresses when both answer) with two real `celery worker` processes; embedded mode needs nothing
running. The demo's Redis keys live under their own `demo-<hex>:` prefix and are deleted at the
end; its workers are stopped at the end and on Ctrl+C.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click
import redis
from sqlalchemy import text

from recovery.audit.db import make_engine, upgrade
from recovery.cli.common import emit_json, fail
from recovery.config.loader import load_registry, reset_registry
from recovery.config.settings import Settings, get_settings, load_settings, reset_settings
from recovery.core.message import JobSpec
from recovery.core.redact import redact_params, redact_url
from recovery.demo.faultserver import FaultServer
from recovery.demo.scenario import (
    Backend,
    DemoError,
    Flow,
    Pace,
    Summary,
    demo_env,
    demo_ids,
    run_flow,
    summarise,
    write_integration,
)
from recovery.demo.workflow import WorkflowDemo, phase_workflows, workflow_problems
from recovery.dlq.replay import ReplayOptions, replay_dlq
from recovery.dlq.store import EntryFilter
from recovery.engine.producer import publish_job
from recovery.engine.runtime import Runtime, get_runtime, reset_runtime, set_runtime
from recovery.telemetry.logging import configure_logging

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
WORKERS = 2
WORKER_READY_TIMEOUT_S = 90.0
WORKER_STOP_TIMEOUT_S = 20.0


class SetupError(RuntimeError):
    """The services the user pointed the demo at cannot be used (exit 2)."""


def redis_problem(url: str) -> str | None:
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
        try:
            client.ping()
        finally:
            client.close()
    except (redis.RedisError, ValueError) as exc:
        return str(exc) or type(exc).__name__
    return None


def database_problem(url: str) -> str | None:

    try:
        engine = make_engine(url)
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        finally:
            engine.dispose()
    except Exception as exc:  # any driver or URL error means "cannot use it"
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return None


def choose_mode(environ: Mapping[str, str], embedded: bool) -> tuple[str, str]:
    """("services" | "embedded", why) or SetupError when configured services do not answer."""
    if embedded:
        return "embedded", "--embedded was given"
    redis_url = environ.get("REDIS_URL") or DEFAULT_REDIS_URL
    database_url = environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
    configured = bool(environ.get("REDIS_URL") or environ.get("DATABASE_URL"))
    problems = {"REDIS_URL": (redis_url, redis_problem(redis_url)),
                "DATABASE_URL": (database_url, database_problem(database_url))}
    if configured:
        for name, (url, problem) in problems.items():
            if problem is not None:
                raise SetupError(
                    f"{name} ({redact_url(url)}) cannot be reached ({problem}); start that "
                    f"service or fix {name}, or unset REDIS_URL and DATABASE_URL to run the "
                    "demo embedded.")
        return "services", "REDIS_URL/DATABASE_URL are set and answer"
    missing = [name for name, (_, problem) in problems.items() if problem is not None]
    if missing:
        return "embedded", f"nothing answers at the default {' and '.join(missing)}"
    return "services", "Redis and PostgreSQL answer at their default local addresses"


class ServicesBackend:
    """Real Redis, PostgreSQL and `celery worker` processes, under the demo's own key prefix."""
    mode = "services"

    def __init__(self, rt: Runtime, env: dict[str, str], log_dir: Path) -> None:
        self.rt = rt
        self.env = env
        self.workers: list[tuple[subprocess.Popen[bytes], Path]] = []
        try:
            for number in range(1, WORKERS + 1):
                self._start_worker(number, log_dir)
            self._wait_ready()
        except BaseException:
            self.close()
            raise

    def _start_worker(self, number: int, log_dir: Path) -> None:
        log_path = log_dir / f"worker{number}.log"
        # The README's job worker: threads, WORKER_CONCURRENCY of them (64 by default).
        command = [sys.executable, "-m", "celery", "-A", "recovery.celery_app", "worker",
                   "-Q", "integrations", "--without-gossip",
                   "--without-mingle", "--without-heartbeat", "-l", "info",
                   "-n", f"demo{number}-{uuid.uuid4().hex[:6]}@%h"]
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(command, env=self.env, stdout=log_file,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        self.workers.append((process, log_path))

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + WORKER_READY_TIMEOUT_S
        pending = list(self.workers)
        while pending and time.monotonic() < deadline:
            for process, log_path in list(pending):
                if b"ready." in log_path.read_bytes():
                    pending.remove((process, log_path))
                elif process.poll() is not None:
                    tail = log_path.read_text(errors="replace")[-2000:]
                    raise DemoError(f"A demo worker exited at start (code {process.returncode})."
                                    f" Its log ends with:\n{tail}")
            time.sleep(0.2)
        if pending:
            raise DemoError(f"The demo workers were not ready after {WORKER_READY_TIMEOUT_S:.0f}"
                            f" s; see {pending[0][1]}.")

    @property
    def pids(self) -> list[int]:
        return [process.pid for process, _ in self.workers]

    def enqueue(self, job: JobSpec) -> None:
        """Record the job as queued first, so a fast worker's progress is never overwritten."""

        self.rt.audit.job_queued(job.job_id, job.integration, job.method, job.path,
                                 redact_params(job.params or {}), job.idempotency_key,
                                 job.replay_count)
        publish_job(job)

    def replay_dead_letters(self, integration: str) -> list[str]:
        """Replay through the operators' DLQ replay (`recovery-cli dlq replay`), from Redis."""

        options = ReplayOptions(filter=EntryFilter(integration=integration),
                                actor="recovery-cli demo")
        report = replay_dlq(self.rt, options)
        if report.errors:
            raise DemoError(f"The replay of the dead letters failed: {' '.join(report.errors)}")
        return [item.job_id for item in report.items
                if item.action == "replay" and item.job_id is not None]

    def close(self) -> None:
        for process, _ in self.workers:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process, _ in self.workers:
            try:
                process.wait(timeout=WORKER_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        self._delete_keys()

    def _delete_keys(self) -> None:
        client = self.rt.redis
        if client is None:
            return
        prefix = self.rt.settings.redis_key_prefix
        keys = set(client.scan_iter(match=f"{prefix}*", count=1000))
        keys |= set(client.scan_iter(match=f"*{prefix}*", count=1000))
        if keys:
            client.delete(*keys)


def _services(env: dict[str, str], log_dir: Path) -> ServicesBackend:
    """Point this process (the producer) at the demo settings, migrate, start the workers."""
    # Imported when the command runs: `--help` and the other commands skip its cost.
    from recovery.celery_base import celery_config

    os.environ.update(env)
    reset_settings()
    reset_registry()
    reset_runtime()
    # Imported when the command runs: `--help` and the other commands skip its cost.
    from recovery.celery_base import app

    app.conf.update(celery_config(get_settings()))
    upgrade(get_settings().database_url)
    return ServicesBackend(get_runtime(), dict(os.environ), log_dir)


def _embedded(env: dict[str, str], workdir: Path) -> Backend:
    # Imported when the command runs: `--help` and the other commands skip its cost.
    from recovery.demo.embedded import EmbeddedBroker, embedded_runtime

    database_url = f"sqlite:///{workdir / 'audit.sqlite3'}"
    merged = {**env, "DATABASE_URL": database_url}
    settings: Settings = load_settings(merged)
    upgrade(database_url)
    rt = embedded_runtime(settings, load_registry(settings, merged))
    set_runtime(rt)
    return EmbeddedBroker(rt, workers=WORKERS)


def _interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_demo(mode: str, fast: bool, say: Any) -> Summary:
    """Set up the mode, run every phase, and summarise; everything is torn down on the way out."""
    integration_id, prefix = demo_ids()
    started = time.monotonic()
    with (tempfile.TemporaryDirectory(prefix="recovery-demo-") as tmp, FaultServer() as upstream,
          WorkflowDemo(integration_id) as workflows):
        workdir = Path(tmp)
        yaml_path = write_integration(workdir / "integrations.yaml", integration_id, upstream.url)
        if mode != "embedded":  # workflow steps are Celery tasks: they need the real workers
            workflows.add_to(yaml_path)
        env = {**os.environ, **demo_env(yaml_path, prefix),
               "ORDER_STORE_DIR": str(workdir / "orders")}
        if mode == "embedded":
            env = {k: v for k, v in env.items() if k not in ("REDIS_URL", "DATABASE_URL")}
        say(f"Flaky upstream listening on {upstream.url}; integration {integration_id!r} "
            "(3 attempts, breaker opens after 3 failures for 2 s, fallbacks: cache, degraded).")
        backend = _embedded(env, workdir) if mode == "embedded" else _services(env, workdir)
        try:
            if isinstance(backend, ServicesBackend):
                say(f"Started {WORKERS} celery workers (pids {backend.pids}); Redis keys under "
                    f"{prefix!r}.")
            integration = backend.rt.registry.get(integration_id)
            run_flow(Flow(backend, upstream, integration, say, Pace(fast)))
            if isinstance(backend, ServicesBackend):
                phase_workflows(backend.rt, workflows, say)
            summary = summarise(backend.rt, upstream, integration_id, mode,
                                time.monotonic() - started)
            if isinstance(backend, ServicesBackend):
                summary.worker_pids = backend.pids
                summary.workflow_runs, problems = workflow_problems(backend.rt, workflows)
                summary.problems += problems
                summary.ok = not summary.problems
            return summary
        finally:
            backend.close()


def render(summary: Summary) -> str:
    rows = [
        ("Mode", summary.mode),
        ("Jobs", str(summary.jobs)),
        *((f"  {status}", str(n)) for status, n in sorted(summary.jobs_by_status.items())),
        ("Fallbacks used", ", ".join(f"{k}: {v}" for k, v in sorted(
            summary.fallbacks_used.items())) or "none"),
        ("Call attempts", str(summary.call_attempts)),
        ("Deferrals (no call)", str(summary.deferrals)),
        ("Calls the upstream received", str(summary.upstream_calls)),
        ("Breaker transitions", ", ".join(summary.breaker_transitions) or "none"),
        ("Dead letters", str(summary.dead_letters)),
        ("Replayed / then succeeded", f"{summary.replayed} / {summary.replayed_succeeded}"),
        ("Workflow runs", ", ".join(f"{k}: {v}" for k, v in summary.workflow_runs.items())
         or "none (embedded mode)"),
        ("Duration", f"{summary.duration_s:g} s"),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"{name.ljust(width)}  {value}" for name, value in rows]
    rule = "-" * min(78, max(len(line) for line in lines))
    return "\n".join([rule, *lines, rule])


@click.command("demo")
@click.option("--embedded", is_flag=True,
              help="Run on an in-process broker and worker with a SQLite audit file.")
@click.option("--fast", is_flag=True, help="No pauses between phases (for tests).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def demo_command(embedded: bool, fast: bool, as_json: bool) -> None:
    """Show the whole recovery flow against a local flaky upstream, in about a minute.

    \b
    Example:
      recovery-cli demo
    """

    def say(line: str) -> None:
        click.echo(line, err=as_json)

    configure_logging("error")
    # Ctrl+C and SIGTERM both unwind through the clean-up (even when started with SIGINT ignored).
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        mode, why = choose_mode(os.environ, embedded)
    except SetupError as exc:
        fail(str(exc))
    say(f"Demo mode: {mode} ({why}).")
    if mode == "embedded":
        say("Embedded: an in-process broker and 2 worker threads, an in-memory breaker, "
            "limiter and dead-letter list, a SQLite audit file. No cache fallback without Redis.")
    try:
        summary = run_demo(mode, fast, say)
    except KeyboardInterrupt:
        fail("The demo was interrupted; its workers were stopped and its keys deleted.", 130)
    except DemoError as exc:
        fail(str(exc), 1)
    if as_json:
        emit_json(summary.to_dict())
    else:
        click.echo(render(summary))
    if not summary.ok:
        fail(f"The demo did not show the whole flow: {' '.join(summary.problems)}", 1)
    say("The demo showed the whole flow: retries, the breaker, fallbacks, dead letters, replay.")

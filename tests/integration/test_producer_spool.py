"""Issue 13: the producer's "queued" row goes through the Redis audit spool, not a synchronous
PostgreSQL insert per enqueue, and never hides a worker's progress however late it lands."""

from __future__ import annotations

import redis
from structlog.testing import capture_logs

import recovery
from recovery.audit import AuditWriter
from recovery.audit.queries import get_job
from recovery.audit.spool import AuditBatcher, RedisSpool
from recovery.audit.sql import decode_ops, next_seq
from recovery.demo.faultserver import FaultServer
from recovery.engine.runtime import get_runtime
from tests.integration.test_audit_batch import DEAD_REDIS, call, started
from tests.integration.test_job_flow import integration, queue_depth


def spooled_ops(client: redis.Redis, spool_key: str) -> list[tuple[str, str, int]]:
    return [(op.kind, op.job_id, op.seq) for _, fields in client.xrange(spool_key, "-", "+")
            for op in decode_ops(fields[b"ops"])]


def test_enqueue_spools_the_queued_row_and_a_drain_writes_it(
        configure, upstream: FaultServer, redis_client: redis.Redis) -> None:
    configure([integration(upstream.url)])
    runtime = get_runtime()
    spool_key = runtime.settings.redis_key_prefix + "audit:spool"
    before = queue_depth(redis_client)
    job_id = recovery.enqueue("shop", "GET", "/orders", params={"page": "2"})

    assert queue_depth(redis_client) == before + 1
    assert get_job(runtime.engine, job_id) is None  # nothing written synchronously
    [(kind, spooled_id, _)] = spooled_ops(redis_client, spool_key)
    assert (kind, spooled_id) == ("job_queued", job_id)

    drainer = AuditBatcher(runtime.engine, RedisSpool(redis_client,
                                                      runtime.settings.redis_key_prefix))
    assert drainer.flush()
    drainer.close()
    job = get_job(runtime.engine, job_id)
    assert job is not None
    assert (job["status"], job["integration"], job["method"]) == ("queued", "shop", "GET")
    assert spooled_ops(redis_client, spool_key) == []


def test_a_spooled_queued_row_behind_a_fast_workers_rows_hides_none_of_its_progress(
        configure, upstream: FaultServer, redis_client: redis.Redis) -> None:
    """The producer takes its sequence number before publishing and spools "queued" after;
    a worker may finish the job and spool its rows first. The drain keeps the worker's."""
    configure([integration(upstream.url)])
    runtime = get_runtime()
    spool = RedisSpool(redis_client, runtime.settings.redis_key_prefix)
    job_id = "fast-worker-job"
    queued_seq = next_seq()  # as recovery.producer.submit takes it, before the publish
    worker = AuditWriter(runtime.engine, batcher=AuditBatcher(runtime.engine, spool,
                                                              interval_s=60))
    started(worker, job_id)
    worker.attempt(call(job_id, 1, http_status=200))
    worker.job_status(job_id, "succeeded", attempts=1, last_status=200, finished=True)
    assert worker.commit()  # the worker's rows are in the spool first
    producer = AuditWriter(runtime.engine, spool=spool)
    assert producer.job_queued(job_id, "shop", "GET", "/x", {}, "k", seq=queued_seq,
                               spooled=True)
    kinds = [kind for kind, _, _ in spooled_ops(redis_client, spool.key)]
    assert kinds == ["job_started", "attempt", "job_status", "job_queued"]

    assert worker.flush()
    worker.close()
    job = get_job(runtime.engine, job_id)
    assert job is not None
    assert (job["status"], job["attempt_count"]) == ("succeeded", 1)


def test_a_spool_that_refuses_the_row_means_it_is_written_at_once(
        configure, upstream: FaultServer) -> None:
    configure([integration(upstream.url)])
    runtime = get_runtime()
    dead = redis.Redis.from_url(DEAD_REDIS, socket_connect_timeout=0.5)
    producer = AuditWriter(runtime.engine, spool=RedisSpool(dead, "nowhere:"))
    with capture_logs() as logs:
        assert producer.job_queued("spool-down-job", "shop", "GET", "/x", {}, "k",
                                   seq=next_seq(), spooled=True)
    job = get_job(runtime.engine, "spool-down-job")
    assert job is not None and job["status"] == "queued"
    assert [entry["event"] for entry in logs] == ["audit_spool_unavailable"]
    dead.close()


def test_the_cli_enqueue_writes_the_queued_row_at_once(
        configure, upstream: FaultServer) -> None:
    """An operator who enqueues by hand reads the job back at once (`jobs show`)."""
    from click.testing import CliRunner

    from recovery.cli.main import main

    configure([integration(upstream.url)])
    result = CliRunner().invoke(main, ["enqueue", "shop", "GET", "/orders"])
    assert result.exit_code == 0, result.output
    job = get_job(get_runtime().engine, result.output.strip())
    assert job is not None and job["status"] == "queued"


def test_a_commit_waits_for_rows_another_threads_round_trip_took(
        configure, upstream: FaultServer, redis_client: redis.Redis) -> None:
    """Under a thread pool, one job's settle round trip may carry another job's rows
    (`take_for_spool` takes the whole buffer); that job's commit (before its ack) must not
    return until that round trip has ended, or a crash between would lose acked rows."""
    import threading

    configure([integration(upstream.url)])
    runtime = get_runtime()
    spool = RedisSpool(redis_client, runtime.settings.redis_key_prefix)
    batcher = AuditBatcher(runtime.engine, spool, interval_s=60)
    writer = AuditWriter(runtime.engine, batcher=batcher)
    started(writer, "other-threads-job")
    taken = batcher.take_for_spool()
    assert taken is not None and [op.kind for op in taken[0]] == ["job_started"]
    committed: list[bool] = []
    committer = threading.Thread(target=lambda: committed.append(batcher.commit()))
    committer.start()
    committer.join(0.5)
    assert committer.is_alive() and committed == []  # still waiting for the round trip
    batcher.taken_done(taken[0], spooled=False)  # it failed: the rows come back, and go now
    committer.join(10)
    assert committed == [True]
    [(kind, job_id, _)] = spooled_ops(redis_client, spool.key)
    assert (kind, job_id) == ("job_started", "other-threads-job")
    batcher.close()

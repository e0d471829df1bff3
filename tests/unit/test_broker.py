"""The broker module: which broker a URL names and the Celery settings that go with it, and
the state store's Cluster and Sentinel URLs, refused at start with a sentence when wrong."""

from __future__ import annotations

import pytest

from recovery.celery_app import MAINTENANCE_QUEUE, WORK_QUEUE, celery_config
from recovery.config import redis_urls
from recovery.config.broker import (
    broker_kind,
    celery_broker_config,
    declare_queue,
    delivery_countdown,
)
from recovery.config.settings import SettingsError, load_settings

AMQP = "amqp://guest:guest@127.0.0.1:5672/prod"


def test_without_broker_url_the_state_redis_is_the_broker_as_before() -> None:
    settings = load_settings({"REDIS_URL": "redis://cache:6379/2"})
    config = celery_config(settings)
    assert broker_kind(settings) == "redis"
    assert config["broker_url"] == "redis://cache:6379/2"
    assert config["broker_transport_options"] == {
        "visibility_timeout": 3600, "global_keyprefix": "recovery:"}
    assert [queue.name for queue in config["task_queues"]] == [WORK_QUEUE, MAINTENANCE_QUEUE]
    assert all(not queue.queue_arguments for queue in config["task_queues"])
    assert "worker_detect_quorum_queues" not in config


def test_rabbitmq_gets_quorum_queues_on_topic_exchanges_and_publisher_confirms() -> None:
    settings = load_settings({"BROKER_URL": AMQP})
    config = celery_config(settings)
    assert broker_kind(settings) == "amqp"
    assert config["broker_url"] == AMQP
    assert config["broker_transport_options"] == {"confirm_publish": True}
    for queue, name in zip(config["task_queues"], (WORK_QUEUE, MAINTENANCE_QUEUE), strict=True):
        assert queue.name == name and queue.routing_key == name and queue.durable
        assert queue.queue_arguments == {"x-queue-type": "quorum"}
        # native delayed delivery only works through a non-direct exchange
        assert (queue.exchange.name, queue.exchange.type) == (name, "topic")
    assert config["worker_detect_quorum_queues"] is True
    assert config["broker_native_delayed_delivery_queue_type"] == "quorum"
    assert config["task_acks_late"] is True and config["worker_prefetch_multiplier"] == 1
    assert "pickle" not in config["accept_content"] and "json" in config["accept_content"]


def test_the_declaration_follows_the_broker() -> None:
    assert declare_queue(load_settings({}), "x").queue_arguments in (None, {})
    assert declare_queue(load_settings({"BROKER_URL": AMQP}), "x").queue_arguments == {
        "x-queue-type": "quorum"}
    assert celery_broker_config(load_settings({}), ())["task_queues"] == ()


@pytest.mark.parametrize(("broker", "given", "sent"), [
    (AMQP, 0.3, 1.0), (AMQP, 0.999, 1.0), (AMQP, 1.0, 1.0), (AMQP, 2.5, 2.5), (AMQP, 0, 0),
    (AMQP, None, None), ("", 0.3, 0.3), ("", 2.5, 2.5), ("", None, None)])
def test_a_retry_under_a_second_waits_one_second_on_rabbitmq_only(
        broker: str, given: float | None, sent: float | None) -> None:
    settings = load_settings({"BROKER_URL": broker} if broker else {})
    assert delivery_countdown(settings, given) == sent


@pytest.mark.parametrize(("env", "message"), [
    ({"BROKER_URL": "kafka://k:9092"},
     "BROKER_URL must be an amqp://, amqps:// (RabbitMQ) or redis:// URL, got 'kafka://k:9092'."),
    ({"BROKER_URL": "sqs://AKIA:s3cret@"},
     "BROKER_URL must be an amqp://, amqps:// (RabbitMQ) or redis:// URL, got 'sqs://AKIA:***@'."),
    ({"REDIS_URL": "redis+cluster://a:7000,b:7001"},
     "REDIS_URL names a Redis Cluster or Sentinel, which Celery cannot use as its broker; set "
     "BROKER_URL to RabbitMQ (amqp://user:password@host:5672/vhost) or a plain redis:// URL."),
    ({"REDIS_URL": "redis+cluster://a:7000,b/", "BROKER_URL": AMQP},
     "REDIS_URL is not a usable Redis Cluster or Sentinel URL: each node must be host:port "
     "with a port from 1 to 65535, got 'b'. It was 'redis+cluster://a:7000,b/'; the README "
     "(Running in production) shows the forms."),
    ({"REDIS_URL": "redis+cluster://a:7000/3", "BROKER_URL": AMQP},
     "REDIS_URL is not a usable Redis Cluster or Sentinel URL: a Redis Cluster has no database "
     "numbers: end the URL after the host list (a cluster uses database 0 only). It was "
     "'redis+cluster://a:7000/3'; the README (Running in production) shows the forms."),
    ({"REDIS_URL": "redis+sentinel://:pw@s1:26379,s2:26379", "BROKER_URL": AMQP},
     "REDIS_URL is not a usable Redis Cluster or Sentinel URL: a Sentinel URL must end with the "
     "master's service name and an optional database number, as in /mymaster/0. It was "
     "'redis+sentinel://:***@s1:26379,s2:26379'; the README (Running in production) shows the "
     "forms."),
    ({"REDIS_URL": "redis+sentinel://s1:26379/main/x", "BROKER_URL": AMQP},
     "REDIS_URL is not a usable Redis Cluster or Sentinel URL: the database number must be a "
     "whole number, got 'x'. It was 'redis+sentinel://s1:26379/main/x'; the README (Running in "
     "production) shows the forms."),
    ({"REDIS_URL": "redis+cluster://a:7000?x=1", "BROKER_URL": AMQP},
     "REDIS_URL is not a usable Redis Cluster or Sentinel URL: it must not carry a query string "
     "or fragment. It was 'redis+cluster://a:7000?x=1'; the README (Running in production) "
     "shows the forms."),
])
def test_bad_broker_and_state_store_urls_are_refused_with_a_sentence(
        env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(env)
    assert str(caught.value) == message


def test_cluster_and_sentinel_urls_are_accepted_with_a_broker_of_their_own() -> None:
    cluster = load_settings({"REDIS_URL": "redis+cluster://u:p@10.0.0.1:7000,10.0.0.2:7001/",
                             "BROKER_URL": AMQP})
    assert cluster.redis_url.startswith("redis+cluster://")
    sentinel = load_settings({"REDIS_URL": "redis+sentinel://s1:26379,s2:26380/main/2",
                              "BROKER_URL": "redis://queues:6379/0"})
    assert broker_kind(sentinel) == "redis"


def test_the_urls_parse_into_nodes_credentials_and_service() -> None:
    cluster = redis_urls.parse("rediss+cluster://app:p%40ss@10.0.0.1:7000,[::1]:7001")
    assert (cluster.kind, cluster.nodes, cluster.tls) == (
        "cluster", (("10.0.0.1", 7000), ("::1", 7001)), True)
    assert (cluster.username, cluster.password) == ("app", "p@ss")
    sentinel = redis_urls.parse("redis+sentinel://:pw@s1:26379,s2:26380/main/2")
    assert (sentinel.kind, sentinel.nodes, sentinel.service, sentinel.db) == (
        "sentinel", (("s1", 26379), ("s2", 26380)), "main", 2)
    assert (sentinel.username, sentinel.password, sentinel.tls) == (None, "pw", False)
    assert redis_urls.parse("redis+sentinel://s1:26379/main").db == 0
    single = redis_urls.parse("redis://h:6379/1")
    assert (single.kind, single.url) == ("single", "redis://h:6379/1")


def test_on_rabbitmq_a_call_must_end_well_within_the_consumer_timeout() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({"BROKER_URL": AMQP, "API_TIMEOUT": "900000"})
    assert str(caught.value) == (
        "API_TIMEOUT is 900000 ms, which is not below half of RABBITMQ_CONSUMER_TIMEOUT "
        "(1800 s): RabbitMQ closes the channel of a job that holds its message that long, and "
        "the job runs again. Lower API_TIMEOUT, or raise consumer_timeout in RabbitMQ and "
        "RABBITMQ_CONSUMER_TIMEOUT with it.")
    assert load_settings({"BROKER_URL": AMQP, "API_TIMEOUT": "899999"}).api_timeout_ms == 899999
    raised = load_settings({"BROKER_URL": AMQP, "API_TIMEOUT": "900000",
                            "RABBITMQ_CONSUMER_TIMEOUT": "3600"})
    assert raised.rabbitmq_consumer_timeout_s == 3600
    assert load_settings({"API_TIMEOUT": "900000"}).api_timeout_ms == 900000  # Redis broker
    with pytest.raises(SettingsError, match="RABBITMQ_CONSUMER_TIMEOUT must be at least 60 s"):
        load_settings({"RABBITMQ_CONSUMER_TIMEOUT": "59"})

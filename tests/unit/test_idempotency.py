"""Idempotency without Redis (embedded mode, Redis failing): the same per-integration scoping,
the same key-reuse refusal, and bounded in-process state."""

from __future__ import annotations

import pytest

from recovery.state import idempotency
from recovery.state.idempotency import Claim, IdempotencyStore, KeyReusedError, request_fingerprint


def test_the_fingerprint_ignores_key_order_and_method_case_but_not_the_request() -> None:
    same = request_fingerprint("post", "/orders", {"a": "1", "b": "2"}, {"x": [1, {"y": 2}]})
    assert same == request_fingerprint("POST", "/orders", {"b": "2", "a": "1"},
                                       {"x": [1, {"y": 2}]})
    assert request_fingerprint("POST", "/orders", None, None) == request_fingerprint(
        "POST", "/orders", {}, None)
    others = {request_fingerprint(*request) for request in [
        ("PUT", "/orders", {"a": "1", "b": "2"}, {"x": [1, {"y": 2}]}),
        ("POST", "/orders/1", {"a": "1", "b": "2"}, {"x": [1, {"y": 2}]}),
        ("POST", "/orders", {"a": "1"}, {"x": [1, {"y": 2}]}),
        ("POST", "/orders", {"a": "1", "b": "2"}, {"x": [1, {"y": 3}]}),
        ("POST", "/orders", {"a": "1", "b": "2"}, None),
    ]}
    assert same not in others and len(others) == 5


def test_a_reused_key_is_refused_per_integration_without_redis() -> None:
    store = IdempotencyStore(None, key_prefix="t:")
    store.remember_request("alpha", "k", "job-1", "f1")
    store.remember_request("alpha", "k", "job-2", "f1")  # the same request again
    store.remember_request("beta", "k", "job-3", "f2")  # another integration
    with pytest.raises(KeyReusedError) as refused:
        store.remember_request("alpha", "k", "job-4", "f2")
    assert str(refused.value) == (
        "Idempotency key 'k' was already used with a different request on integration "
        "'alpha'; use a new key or resend the same request.")
    store.remember_request("alpha", "job-5", "job-5", "f9")  # generated: never recorded
    store.remember_request("alpha", "job-5", "job-5", "other")


def test_success_is_remembered_per_integration_without_redis() -> None:
    store = IdempotencyStore(None, key_prefix="t:")
    assert store.claim("alpha", "k", "job-1", 1000, "job-1:0:1:0").claim is Claim.CLAIMED
    store.release("alpha", "k", "job-1", "job-1", succeeded=True)
    assert store.claim("alpha", "k", "job-2", 1000, "job-2:0:1:0").claim is Claim.SUCCEEDED
    assert store.claim("beta", "k", "job-3", 1000, "job-3:0:1:0").claim is Claim.CLAIMED


def test_generated_keys_are_kept_for_the_redelivery_window_only() -> None:
    store = IdempotencyStore(None, key_prefix="t:", ttl_s=86_400, redelivery_window_s=600)
    assert store.success_ttl_s("job-1", "job-1") == 600
    assert store.success_ttl_s("order-7", "job-1") == 86_400
    claim = store.claim_call("alpha", "job-1", "job-1", 1000, "job-1:0:1:0")
    assert claim.args[-1] == 600  # the delivery counter expires with the window
    assert claim.keys[0] == "t:idem:alpha:job-1:ok"


def test_in_process_state_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(idempotency, "LOCAL_ENTRIES_KEPT", 50)
    store = IdempotencyStore(None, key_prefix="t:")
    for n in range(500):
        store.remember_request("alpha", f"k{n}", f"job-{n}", "f")
        store.claim("alpha", f"k{n}", f"job-{n}", 1, f"job-{n}:0:1:0")
        store.release("alpha", f"k{n}", f"job-{n}", f"job-{n}", succeeded=True)
    assert len(store._local_requests) <= 50
    assert len(store._local_deliveries) <= 50
    assert len(store._local_success) <= 50
    assert len(store._local_claims) == 0

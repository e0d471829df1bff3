"""The cache fallback's key: the whole request decides, and nothing secret shows in it."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from recovery.config.registry import FallbackConfig
from recovery.core.message import JobSpec
from recovery.engine.fallback import cache_key

CACHE = FallbackConfig("cache", 1, vary=("x-user",))


def key(method: str = "GET", path: str = "/acct", **fields: Any) -> str:
    job = JobSpec(job_id="j", integration="shop", method=method, path=path,
                  idempotency_key="k", **fields)
    return cache_key("p:", "shop", job, CACHE)


def test_the_key_is_a_digest_under_the_integration() -> None:
    made = key(params={"user": "alice", "token": "s3cret"}, headers={"X-User": "alice"})
    assert made.startswith("p:cache:shop:")
    digest = made.removeprefix("p:cache:shop:")
    assert len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)
    assert "alice" not in made and "s3cret" not in made and "acct" not in made


@pytest.mark.parametrize(("one", "other"), [
    ({"params": {"user": "alice"}}, {"params": {"user": "bob"}}),
    ({"params": {"a": ["1", "2"]}}, {"params": {"a": ["2", "1"]}}),
    ({"params": {"a": "1"}}, {"params": {"a": "1", "b": "2"}}),
    ({"json": {"q": 1}}, {"json": {"q": 2}}),
    ({"json": None}, {"json": {}}),
    ({"headers": {"X-User": "alice"}}, {"headers": {"X-User": "bob"}}),
    ({"headers": {"X-User": "alice"}}, {}),
    ({"headers": {"Authorization": "Bearer a"}}, {"headers": {"Authorization": "Bearer b"}}),
    ({"headers": {"Cookie": "s=1"}}, {}),
    ({"path": "/acct"}, {"path": "/acct/"}),
    ({"method": "GET"}, {"method": "HEAD"}),
])
def test_requests_that_differ_get_different_keys(one: dict[str, Any],
                                                  other: dict[str, Any]) -> None:
    assert key(**one) != key(**other)


@pytest.mark.parametrize(("one", "other"), [
    ({"params": {"a": "1", "b": "2"}}, {"params": {"b": "2", "a": "1"}}),
    ({"params": {"a": 1}}, {"params": {"a": "1"}}),
    ({"params": {"a": "1", "gone": None}}, {"params": {"a": "1"}}),
    ({"params": {}}, {"params": None}),
    ({"json": {"x": 1, "y": 2}}, {"json": {"y": 2, "x": 1}}),
    ({"headers": {"X-User": "alice"}}, {"headers": {"x-user": "alice"}}),
    ({"headers": {"X-Trace": "1"}}, {"headers": {"X-Trace": "2"}}),  # not listed in vary
    ({"method": "get"}, {"method": "GET"}),
])
def test_requests_that_mean_the_same_share_a_key(one: dict[str, Any],
                                                 other: dict[str, Any]) -> None:
    assert key(**one) == key(**other)


@given(st.dictionaries(st.text(min_size=1, max_size=5), st.text(max_size=5), max_size=4),
       st.dictionaries(st.text(min_size=1, max_size=5), st.text(max_size=5), max_size=4))
def test_different_params_never_share_a_key(one: dict[str, str], other: dict[str, str]) -> None:
    if one != other:
        assert key(params=one) != key(params=other)

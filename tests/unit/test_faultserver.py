"""The fault server, mode by mode, over real sockets with short timeouts."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from recovery.demo.fault_modes import FaultConfigError
from recovery.demo.faultserver import FaultServer

TIMEOUT = (1.0, 2.0)


@pytest.fixture
def fault() -> Iterator[FaultServer]:
    with FaultServer() as server:
        yield server


@pytest.fixture
def client() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


def get(client: requests.Session, url: str, **kwargs: object) -> requests.Response:
    return client.get(url, timeout=TIMEOUT, allow_redirects=False, **kwargs)  # type: ignore[arg-type]


def test_ok_echoes_and_counts_successes(fault: FaultServer, client: requests.Session) -> None:
    for _ in range(2):
        response = client.post(f"{fault.url}/orders?x=1", json={"a": 1}, timeout=TIMEOUT,
                               headers={"Idempotency-Key": "k1"})
    assert response.status_code == 200
    assert response.json() == {"ok": True, "path": "/orders?x=1", "method": "POST",
                               "idempotency_key": "k1", "n": 2, "json": {"a": 1}}
    get(client, f"{fault.url}/other")
    assert fault.successes_by_key() == {"k1": 2}
    records = fault.requests()
    assert [(r["method"], r["path"], r["status"]) for r in records] == [
        ("POST", "/orders?x=1", 200), ("POST", "/orders?x=1", 200), ("GET", "/other", 200)]
    assert records[0]["headers"]["Idempotency-Key"] == "k1"


@pytest.mark.parametrize(("options", "status"), [({}, 503), ({"status": 500}, 500)])
def test_5xx(fault: FaultServer, client: requests.Session, options: dict[str, Any],
             status: int) -> None:
    fault.set_mode("5xx", **options)
    response = client.put(f"{fault.url}/x", timeout=TIMEOUT, headers={"Idempotency-Key": "k"})
    assert response.status_code == status
    assert fault.successes_by_key() == {}


def test_429_with_retry_after(fault: FaultServer, client: requests.Session) -> None:
    fault.set_mode("429", retry_after_s=7)
    response = get(client, f"{fault.url}/x")
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "7"


def test_slow_delays_the_answer(fault: FaultServer, client: requests.Session) -> None:
    fault.set_mode("slow", delay_ms=1500)
    with pytest.raises(requests.ReadTimeout):
        client.get(f"{fault.url}/x", timeout=(1.0, 0.2))
    fault.set_mode("slow", delay_ms=50)
    assert get(client, f"{fault.url}/x").status_code == 200


def test_reset_resets_the_connection(fault: FaultServer, client: requests.Session) -> None:
    fault.set_mode("reset")
    with pytest.raises(requests.ConnectionError) as info:
        get(client, f"{fault.url}/x")
    assert "reset" in str(info.value).lower()
    assert fault.requests()[0]["status"] == "reset"


def test_down_refuses_connections_and_up_returns(
    fault: FaultServer, client: requests.Session
) -> None:
    port = fault.port
    assert get(client, f"{fault.url}/before").status_code == 200  # leaves a pooled connection
    fault.down()
    assert not fault.is_up
    with pytest.raises(requests.ConnectionError):
        get(client, f"{fault.url}/during")
    fault.up()
    assert fault.port == port
    assert get(client, f"{fault.url}/after").status_code == 200
    assert [r["path"] for r in fault.requests()] == ["/before", "/after"]


def test_down_for_a_while_over_http(fault: FaultServer, client: requests.Session) -> None:
    answer = client.post(f"{fault.url}/_control", json={"mode": "down", "for_ms": 300},
                         timeout=TIMEOUT)
    assert answer.status_code == 200 and answer.json()["up"] is False
    with pytest.raises(requests.ConnectionError):
        get(client, f"{fault.url}/x")
    deadline = time.monotonic() + 5
    while not fault.is_up and time.monotonic() < deadline:
        time.sleep(0.05)
    assert get(client, f"{fault.url}/x").status_code == 200


def test_auth_accepts_configured_and_issued_tokens(
    fault: FaultServer, client: requests.Session
) -> None:
    fault.set_mode("auth", token="s3cret")
    assert get(client, f"{fault.url}/x").status_code == 401
    bad = get(client, f"{fault.url}/x", headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401 and "Bearer" in bad.headers["WWW-Authenticate"]
    assert get(client, f"{fault.url}/x",
               headers={"Authorization": "Bearer s3cret"}).status_code == 200
    issued = client.post(f"{fault.url}/oauth/token", timeout=TIMEOUT,
                         data={"grant_type": "client_credentials", "client_id": "a",
                               "client_secret": "b"}).json()
    assert issued["expires_in"] == 3600 and fault.tokens_issued() == 1
    with_token = {"Authorization": f"Bearer {issued['access_token']}"}
    assert get(client, f"{fault.url}/x", headers=with_token).status_code == 200
    fault.revoke_tokens()
    assert get(client, f"{fault.url}/x", headers=with_token).status_code == 401
    assert get(client, f"{fault.url}/health").status_code == 200


def test_oauth_checks_grant_and_secret(client: requests.Session) -> None:
    with FaultServer(client_secret="right") as fault:
        url = f"{fault.url}/oauth/token"
        assert client.post(url, data={"grant_type": "password"}, timeout=TIMEOUT).status_code == 400
        wrong = {"grant_type": "client_credentials", "client_secret": "wrong"}
        assert client.post(url, data=wrong, timeout=TIMEOUT).status_code == 401
        right = {"grant_type": "client_credentials", "client_secret": "right"}
        assert client.post(url, data=right, timeout=TIMEOUT).status_code == 200
        assert fault.tokens_issued() == 1


def test_script_is_consumed_before_the_mode(fault: FaultServer, client: requests.Session) -> None:
    fault.set_mode("5xx", status=502)
    fault.set_script([503, 302, "ok", "reset", 200])
    seen: list[int | str] = []
    for _ in range(6):
        try:
            response = get(client, f"{fault.url}/x")
        except requests.ConnectionError:
            seen.append("reset")
            continue
        seen.append(response.status_code)
        if response.status_code == 302:
            assert response.headers["Location"] == "http://redirect.invalid/moved"
    assert seen == [503, 302, 200, "reset", 200, 502]


def test_health_follows_mode_but_not_script(fault: FaultServer, client: requests.Session) -> None:
    fault.set_script([503])
    assert get(client, f"{fault.url}/health").json() == {"status": "ok"}
    assert get(client, f"{fault.url}/x").status_code == 503
    fault.set_mode("5xx")
    assert get(client, f"{fault.url}/health").status_code == 503


def test_control_endpoint(fault: FaultServer, client: requests.Session) -> None:
    answer = client.post(f"{fault.url}/_control", timeout=TIMEOUT,
                         json={"mode": "429", "retry_after_s": 2, "script": [200]})
    assert answer.json()["mode"] == "429" and answer.json()["script_left"] == 1
    assert get(client, f"{fault.url}/x").status_code == 200
    assert get(client, f"{fault.url}/x").headers["Retry-After"] == "2"
    listed = get(client, f"{fault.url}/_requests").json()
    assert [r["status"] for r in listed] == [200, 429]
    stats = client.post(f"{fault.url}/_reset", timeout=TIMEOUT).json()
    assert stats["mode"] == "ok" and stats["requests"] == 0
    assert fault.requests() == []


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"mode": "sideways"}, "Unknown fault mode"),
        ({"mode": "5xx", "status": 200}, "status must be a whole number"),
        ({"status": 500}, "need a 'mode'"),
        ({"mode": "ok", "for_ms": 5}, "only applies to the mode 'down'"),
        ({"mode": "down", "for_ms": 0}, "for_ms must be"),
        ({"script": [503, "explode"]}, "Script entry 'explode'"),
        ({"script": "503"}, "must be a list"),
        ({"volume": 11}, "Unknown control keys"),
        ({"mode": "drip", "interval_ms": 0}, "interval_ms must be a whole number 1-60000"),
        ({"mode": "drip", "drip_bytes": 1}, "drip_bytes must be a whole number 2-1000000"),
        ({"mode": "huge", "size_bytes": -5}, "size_bytes must be a whole number"),
        ({"mode": "huge", "declare_length": "yes"}, "declare_length' must be true or false"),
        ({"mode": "429", "retry_after": "1\r\nX: y"}, "retry_after' must be a non-empty line"),
    ],
)
def test_control_refuses_bad_payloads(
    fault: FaultServer, client: requests.Session, payload: dict[str, object], message: str
) -> None:
    answer = client.post(f"{fault.url}/_control", json=payload, timeout=TIMEOUT)
    assert answer.status_code == 400
    assert message in answer.json()["error"]
    with pytest.raises(FaultConfigError, match=message.split("'")[0]):
        fault.configure(payload)
    assert fault.is_up


def test_control_refuses_non_json(fault: FaultServer, client: requests.Session) -> None:
    answer = client.post(f"{fault.url}/_control", data=b"[1, 2]", timeout=TIMEOUT)
    assert answer.status_code == 400


def test_set_mode_before_start_does_not_listen() -> None:
    server = FaultServer()
    server.set_mode("5xx")
    assert not server.is_up
    server.start()
    try:
        assert requests.get(f"{server.url}/x", timeout=TIMEOUT).status_code == 503
    finally:
        server.stop()
    assert not server.is_up


def test_runs_as_a_separate_process() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "recovery.demo.faultserver", "--port", "0", "--mode", "5xx"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip().rsplit(" ", 1)[-1]
        assert url.startswith("http://127.0.0.1:")
        assert requests.get(f"{url}/x", timeout=TIMEOUT).status_code == 503
        requests.post(f"{url}/_control", json={"mode": "ok"}, timeout=TIMEOUT)
        ok = requests.get(f"{url}/x", headers={"Idempotency-Key": "p1"}, timeout=TIMEOUT)
        assert ok.status_code == 200
        assert requests.get(f"{url}/_stats", timeout=TIMEOUT).json()["successes_by_key"] == {
            "p1": 1}
        process.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                requests.get(f"{url}/x", timeout=TIMEOUT)
            except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError):
                break  # refused, or cut off mid-response as the server went down
            time.sleep(0.05)
        else:
            pytest.fail("SIGUSR1 did not take the fault server down")
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0


def test_control_is_all_or_nothing(fault: FaultServer) -> None:
    with pytest.raises(FaultConfigError):
        fault.configure({"script": [200], "revoke_tokens": True, "mode": "sideways"})
    assert fault.stats()["script_left"] == 0 and fault.stats()["mode"] == "ok"


def test_drip_sends_one_byte_per_interval_and_stays_valid_json(fault: FaultServer) -> None:
    fault.set_mode("drip", interval_ms=50, drip_bytes=6)
    started = time.monotonic()
    with requests.get(f"{fault.url}/slow", stream=True, timeout=TIMEOUT) as response:
        assert response.headers["Content-Length"] == "6"
        pieces = list(response.iter_content(chunk_size=1))
    assert 0.25 < time.monotonic() - started < 1.5
    assert b"".join(pieces) == b"    {}"
    assert fault.requests()[0]["status"] == 200
    assert requests.get(f"{fault.url}/health", timeout=TIMEOUT).json() == {"status": "ok"}


@pytest.mark.parametrize("declare_length", [False, True])
def test_huge_sends_the_size_asked_for(fault: FaultServer, declare_length: bool) -> None:
    fault.set_mode("huge", size_bytes=200_000, declare_length=declare_length)
    response = requests.get(f"{fault.url}/big", timeout=TIMEOUT)
    assert len(response.content) == 200_000
    assert response.json() == "x" * 199_998
    assert ("Content-Length" in response.headers) is declare_length
    assert requests.head(f"{fault.url}/big", timeout=TIMEOUT).content == b""


def test_a_client_that_hangs_up_on_huge_does_not_break_the_server(fault: FaultServer) -> None:
    fault.set_mode("huge")  # 20 MiB
    with requests.get(f"{fault.url}/big", stream=True, timeout=TIMEOUT) as response:
        assert len(next(response.iter_content(chunk_size=1024))) == 1024
    fault.set_mode("ok")
    assert requests.get(f"{fault.url}/after", timeout=TIMEOUT).json()["ok"] is True


@pytest.mark.parametrize("text", ["3153600000", "Fri, 31 Dec 2125 23:59:59 GMT"])
def test_429_can_send_any_retry_after_text(fault: FaultServer, text: str) -> None:
    fault.set_mode("429", retry_after=text)
    response = requests.get(f"{fault.url}/q", timeout=TIMEOUT)
    assert (response.status_code, response.headers["Retry-After"]) == (429, text)

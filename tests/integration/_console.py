"""A real `recovery-cli console` process for tests, and a logged-in `requests` session."""

from __future__ import annotations

import html
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from recovery.ops.console.config import hash_password
from tests.integration._process import stop_group
from tests.integration.conftest import REPO

SECRET_KEY = "k" * 48
PASSWORDS = {"alice": "alice-pass-1", "bob": "bob-pass-12"}
_HASHES = {name: hash_password(password) for name, password in PASSWORDS.items()}
USERS = f"alice:operator:{_HASHES['alice']},bob:viewer:{_HASHES['bob']}"
_TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')
_HIDDEN = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)">')


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def console_env(env: dict[str, str], **extra: str) -> dict[str, str]:
    """The test's environment plus console users (alice operator, bob viewer) and a key."""
    return {**env, "CONSOLE_USERS": USERS, "CONSOLE_SECRET_KEY": SECRET_KEY, **extra}


class ConsoleProcess:
    """`recovery-cli console` on a free loopback port, stopped (SIGTERM) at teardown."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = log_path.open("wb")
        command = [sys.executable, "-c", "from recovery.cli.main import main; main()", "console",
                   "--port", str(self.port)]
        self.process = subprocess.Popen(command, env=env, cwd=REPO, stdout=self._log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_ready()

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                requests.get(f"{self.base}/login", timeout=2)
                return
            except requests.ConnectionError:
                time.sleep(0.2)
        raise RuntimeError(f"The console did not start:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def stop(self) -> int | None:
        stop_group(self.process, grace_s=15)
        self._log.close()
        return self.process.returncode


def csrf_of(html: str) -> str:
    found = _TOKEN.search(html)
    assert found, "the page has no CSRF token"
    return found.group(1)


class Browser(requests.Session):
    """A `requests` session that sends this site's Origin, like a browser posting a form."""

    def __init__(self, base: str) -> None:
        super().__init__()
        self.base = base
        self.headers["Origin"] = base

    def page(self, path: str, **params: str) -> requests.Response:
        return self.get(self.base + path, params=params, allow_redirects=False, timeout=30)

    def token(self, path: str = "/login") -> str:
        return csrf_of(self.page(path).text)

    def submit_confirm(self, page: str, path: str) -> requests.Response:
        """POST the hidden fields of the form after the plan on `page`, as its button does."""
        fields = [(name, html.unescape(value))
                  for name, value in _HIDDEN.findall(page.split('id="plan"', 1)[1])]
        return self.post(self.base + path, data=fields, allow_redirects=False, timeout=60)

    def act(self, path: str, data: dict[str, object] | None = None) -> requests.Response:
        """POST a form with the session's CSRF token (taken from the dead-letter page)."""
        form = {"csrf_token": self.token("/dlq/"), **(data or {})}
        return self.post(self.base + path, data=form, allow_redirects=False, timeout=60)


def login(base: str, user: str) -> Browser:
    session = Browser(base)
    response = session.post(f"{base}/login", allow_redirects=False, timeout=30,
                            data={"username": user, "password": PASSWORDS[user],
                                  "csrf_token": session.token()})
    assert response.status_code == 303, response.text
    return session

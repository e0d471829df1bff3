"""Headless Chromium (Debian's `chromium`) for tests: screenshot a page or dump its rendered DOM.

Each call uses a fresh profile directory and its own process group, so a hung browser (and the
helper processes it forks) is killed and reaped, never left behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
MISSING_REASON = (
    "Chromium is not installed at /usr/bin/chromium; install it with "
    "`apt-get install -y chromium` to run the browser checks."
)
_QUIET_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
)


class ChromiumError(RuntimeError):
    """Chromium failed or timed out; the message carries the end of its output."""


def available() -> bool:
    return CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)


def screenshot(
    url: str,
    out: Path,
    *,
    width: int = 1400,
    height: int = 900,
    budget_ms: int = 5000,
    timeout_s: float = 90.0,
) -> Path:
    """Render `url` and write a PNG to `out`.

    `budget_ms` is virtual time given to the page's scripts and XHRs before the capture, so
    tables filled by JavaScript (Flower's task list) are drawn.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    _run(
        [f"--screenshot={out}", f"--window-size={width},{height}",
         f"--virtual-time-budget={budget_ms}", url],
        timeout_s,
    )
    if not out.is_file():
        raise ChromiumError(f"Chromium exited without writing the screenshot {out}.")
    return out


def dump_dom(url: str, *, budget_ms: int = 5000, timeout_s: float = 90.0) -> str:
    """The page's DOM as serialized HTML after its scripts ran for `budget_ms` virtual time."""
    return _run(["--dump-dom", f"--virtual-time-budget={budget_ms}", url], timeout_s)


def _run(arguments: list[str], timeout_s: float) -> str:
    """Run Chromium with a throwaway profile; returns stdout, raises ChromiumError on failure."""
    if not available():
        raise ChromiumError(MISSING_REASON)
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        command = [str(CHROMIUM), *_QUIET_FLAGS, f"--user-data-dir={profile}", *arguments]
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            stdout, stderr = process.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(process.pid)
            stdout, stderr = process.communicate()
            raise ChromiumError(
                f"Chromium did not finish within {timeout_s:.0f} s: {_tail(stderr)}"
            ) from None
        finally:
            _kill_group(process.pid)
    if process.returncode != 0:
        raise ChromiumError(f"Chromium exited with status {process.returncode}: {_tail(stderr)}")
    return stdout.decode("utf-8", "replace")


def _kill_group(pgid: int) -> None:
    """Kill what is left of the browser's process group (renderers, zygotes)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _tail(stderr: bytes) -> str:
    return stderr.decode("utf-8", "replace")[-2000:]

"""Sampling a running worker with py-spy (`pip install -e '.[bench]'`), for bench_overhead.

py-spy reads the stacks of the worker and its pool processes from outside, so the sampled
worker runs the production code unchanged (cProfile, in the `profile` run, instruments every
call and slows Python-heavy code more than C calls). `sampling` records collapsed stacks
while the block runs; `shares` tells what part of the pool processes' busy samples were
inside each of our steps.
"""

from __future__ import annotations

import collections
import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

RATE_HZ = 250

#: Steps of a delivery, by a frame that is on the stack while it runs ("function (file").
STEPS = {
    "task body (tasks.integration.call)": "call (tasks/integration.py",
    "http call (recovery.engine.http.send)": "send (recovery/engine/http.py",
    "gate (Gate.enter, 1 EVALSHA)": "enter (recovery/engine/gate.py",
    "settle (Gate.settle, 1 EVALSHA)": "settle (recovery/engine/gate.py",
    "audit rows built (AuditWriter)": "(recovery/audit/writer.py",
    "audit drain thread (AuditBatcher._run)": "_run (recovery/audit/spool.py",
    "metrics (observe_call)": "observe_call (recovery/telemetry/metrics.py",
    "log context (job_context)": "job_context (recovery/telemetry/logging.py",
}


@contextlib.contextmanager
def sampling(pid: int, out: Path) -> Iterator[None]:
    """Record `pid` and its child processes with py-spy into `out` while the block runs."""
    here = Path(sys.executable).parent  # the virtualenv's bin, active or not
    exe = shutil.which("py-spy", path=os.pathsep.join([str(here), os.environ.get("PATH", "")]))
    if exe is None:
        raise RuntimeError("py-spy is not installed; run `pip install -e '.[bench]'` first.")
    recorder = subprocess.Popen(
        [exe, "record", "--pid", str(pid), "--subprocesses", "--rate", str(RATE_HZ),
         "--format", "raw", "--output", str(out), "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield
    finally:
        recorder.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        _, errors = recorder.communicate(timeout=60)
    if not out.exists():
        raise RuntimeError(f"py-spy recorded nothing: {errors.decode(errors='replace')[-500:]}")


def pool_stacks(raw: Path) -> Iterator[tuple[list[str], int]]:
    """(frames, samples) of every stack py-spy took in a pool process.

    A line of py-spy's raw output is `frame;frame;... <count>`; with --subprocesses it starts
    with one `process <pid>:"<cmdline>"` frame per process from the worker down, so a pool
    process's stacks start with two.
    """
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if len(frames) > 2 and frames[1].startswith("process "):
            yield frames[2:], int(count)


def shares(raw: Path) -> dict[str, float]:
    """Per step, the fraction of the pool processes' busy samples taken inside it."""
    total = 0
    inside: collections.Counter[str] = collections.Counter()
    for frames, samples in pool_stacks(raw):
        total += samples
        stack = ";".join(frames)
        for label, frame in STEPS.items():
            if frame in stack:
                inside[label] += samples
    return {label: round(inside[label] / total, 3) for label in STEPS} if total else {}


def hottest(raw: Path, count: int = 40) -> list[tuple[str, float]]:
    """The functions the pool processes' busy samples were in (innermost frame), by share."""
    leaves: collections.Counter[str] = collections.Counter()
    for frames, samples in pool_stacks(raw):
        leaves[frames[-1]] += samples
    total = sum(leaves.values())
    return [(frame, round(n / total, 4)) for frame, n in leaves.most_common(count)]

"""Child processes a functional test starts: waiting on them, and stopping their group."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Any


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group a test started, SIGKILL if it does not end in 30 s."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def wait_for(what: str, check, timeout: float = 90.0, proc=None, procs=()) -> Any:
    """``check()``'s first true value; fails when ``proc`` (or one of ``procs``) exits first."""
    deadline = time.monotonic() + timeout
    watched = [*procs, *([proc] if proc is not None else [])]
    while True:
        value = check()
        if value:
            return value
        for p in watched:
            assert p.poll() is None, f"process exited {p.returncode} while waiting for {what}"
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.2)

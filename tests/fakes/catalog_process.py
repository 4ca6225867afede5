"""``stowkit catalog serve`` run in a child process, up until it answers, then stopped."""

from __future__ import annotations

import http.client
import signal
import subprocess
import time

from tests.commands import STOWKIT
from tests.fakes.net import free_port


def conf_file(tmp_path, extra: str = "") -> str:
    """A config file keeping the state (the SQLite catalog) in ``tmp_path``, plus ``extra``."""
    path = tmp_path / "stowkit.conf"
    path.write_text(f"[DEFAULT]\nstate_dir = {tmp_path}\n{extra}")
    return str(path)


def db_sync(conf) -> None:
    """``stowkit catalog db-sync`` with the config file ``conf``: the schema, before serving."""
    sync = subprocess.run(
        [*STOWKIT, "--config-file", str(conf), "catalog", "db-sync"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert sync.returncode == 0, sync.stderr


def serve_and_stop(conf: str, *args: str) -> subprocess.CompletedProcess:
    """Serve with ``conf`` (and ``args`` before the command) until it answers, then SIGTERM it."""
    port = free_port()
    argv = [*STOWKIT, "--config-file", conf, *args, "catalog", "serve", "--no-auth"]
    proc = subprocess.Popen(
        [*argv, "--port", str(port), "--workers", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        while True:  # until it answers (any status: / is the 300 versions document)
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/")
                conn.getresponse().read()
                conn.close()
                break
            except OSError:
                assert proc.poll() is None, proc.communicate()
                time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

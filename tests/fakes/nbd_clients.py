"""A blockstore backend's config file and the stowkit commands and NBD servers run on it.

Clients run under ``timeout`` (``run``); ``sha256`` compares what they copied.
"""

from __future__ import annotations

import hashlib
import signal
import subprocess

from tests.commands import STOWKIT

MiB = 1 << 20


def run(*cmd: str, timeout: int = 300, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["timeout", str(timeout), *cmd], check=check, capture_output=True, text=True, **kw
    )


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Backend:
    """A config file for one backend and the stowkit commands run against it."""

    def __init__(self, conf: str, name: str) -> None:
        self.conf = conf
        self.name = name
        self.servers: list[subprocess.Popen] = []

    def stowkit(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return run(*STOWKIT, "--config-file", self.conf, *args, check=check)

    def setup(self, name: str, size: str = "64M", object_size: str = "256K") -> str:
        self.stowkit("blockstore", "setup", name, "--size", size, "--object-size", object_size)
        return name

    def serve(self, *args: str) -> tuple[subprocess.Popen, int]:
        proc = subprocess.Popen(
            [*STOWKIT, "--config-file", self.conf, "blockstore", "serve", "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.servers.append(proc)
        line = proc.stdout.readline()  # "serving nbd://127.0.0.1:PORT/NAME"
        if not line.startswith("serving"):
            proc.kill()
            raise AssertionError(f"server did not start: {line}{proc.stderr.read()}")
        port = int(line.split(":")[2].split("/")[0])
        return proc, port

    def stop(self, proc: subprocess.Popen, sig: int = signal.SIGTERM) -> int:
        proc.send_signal(sig)
        return proc.wait(60)

    def cleanup(self) -> None:
        for proc in self.servers:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)

"""What every harness service shares: the state file, venvs, ports, processes, apt.

A service module (``tools/stack/NAME.py``) defines ``NAME``, ``REQUIRES`` (services
started before it), optionally ``AFTER`` (services started before it *when they are
started in the same run*, e.g. swift after keystone so it can accept Keystone
tokens), and ``install(ctx)``, ``start(ctx) -> record``, ``stop(ctx, record)``, and
optionally ``alive(ctx, record) -> bool`` for a check beyond "every recorded pid is
alive" (btrfs: still mounted).  Its Debian packages are the rows of tools/commands.txt
that name the service in their SERVICES column (``service_packages(NAME)``); they are
installed before ``install(ctx)`` runs.  The record is what the functional tests
receive from the ``service`` fixture; it always holds ``"pids"``.

Several sessions may drive the same stack at once, so every read-modify-write of
``state.json`` happens under a file lock and the file is replaced atomically, and
starting or stopping one service holds that service's own lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from tools import commands

ROOT = pathlib.Path(__file__).resolve().parents[2]


class StackError(Exception):
    """A service could not be installed, started or stopped; the message says why."""


def service_packages(name: str) -> list[str]:
    """The Debian packages service ``name`` needs: its rows in tools/commands.txt."""
    try:
        return commands.packages(service=name)
    except (OSError, commands.TableError) as exc:
        raise StackError(f"cannot read {commands.TABLE}: {exc}") from exc


def stack_dir(root: pathlib.Path = ROOT) -> pathlib.Path:
    return pathlib.Path(os.environ.get("STOWKIT_STACK_DIR") or root / ".stack").resolve()


def tail(path: pathlib.Path | None, lines: int = 30) -> str:
    """The last lines of a log, for error messages."""
    if path is None:
        return ""
    try:
        text = pathlib.Path(path).read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return f"--- last lines of {path} ---\n" + "\n".join(text.splitlines()[-lines:])


def proc_start_time(pid: int) -> int | None:
    """Kernel start time of a process (clock ticks since boot), None if it is gone.

    Stored next to each pid so that a pid reused by an unrelated process after a
    reboot or a crash is never mistaken for ours (and never killed).
    """
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after it.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":  # a zombie is as good as gone
        return None
    return int(fields[19])


def pid_alive(pid: int, started: int | None = None) -> bool:
    now = proc_start_time(pid)
    if now is None:
        return False
    return started is None or started == now


def record_alive(record: dict[str, Any]) -> bool:
    started = record.get("started", {})
    return all(pid_alive(pid, started.get(str(pid))) for pid in record.get("pids", []))


def port_free(port: int) -> bool:
    """True when a listener could bind 127.0.0.1:``port`` now (a recorded port is reusable)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class Context:
    """Paths, state and helpers handed to every service module."""

    def __init__(self, root: pathlib.Path | None = None, dir: pathlib.Path | None = None):
        self.root = pathlib.Path(root or ROOT).resolve()
        self.dir = pathlib.Path(dir).resolve() if dir else stack_dir(self.root)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.logs = self.dir / "logs"
        self.logs.mkdir(exist_ok=True)
        self._procs: dict[int, tuple[subprocess.Popen, pathlib.Path]] = {}
        self._apt_updated = False

    # -- state -----------------------------------------------------------------
    @property
    def state_file(self) -> pathlib.Path:
        return self.dir / "state.json"

    @property
    def state(self) -> dict[str, Any]:
        """Service name -> record, read afresh (other sessions may have changed it)."""
        try:
            return json.loads(self.state_file.read_text()).get("services", {})
        except FileNotFoundError:
            return {}
        except json.JSONDecodeError as exc:
            raise StackError(f"{self.state_file} is not valid JSON: {exc}") from exc

    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """An exclusive lock shared by every process using this stack dir."""
        locks = self.dir / "locks"
        locks.mkdir(exist_ok=True)
        with open(locks / f"{name}.lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def update_state(self, name: str, record: dict[str, Any] | None) -> None:
        """Set (or with None, remove) one service's record; atomic and locked."""
        with self.lock("state"):
            try:
                data = json.loads(self.state_file.read_text())
            except FileNotFoundError:
                data = {"services": {}}
            services = data.setdefault("services", {})
            if record is None:
                services.pop(name, None)
            else:
                services[name] = record
            tmp = self.state_file.with_name(f".state.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
            os.replace(tmp, self.state_file)

    # -- paths -------------------------------------------------------------------
    def service_dir(self, name: str) -> pathlib.Path:
        path = self.dir / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def log(self, name: str) -> pathlib.Path:
        """DIR/logs/NAME.log, where a service's output goes."""
        return self.logs / f"{name}.log"

    # -- commands ----------------------------------------------------------------
    def run(
        self, argv: Sequence[str | os.PathLike], check: bool = True, timeout: float = 600, **kw
    ) -> subprocess.CompletedProcess:
        """Run a command to completion, output captured; a failure raises StackError."""
        argv = [str(a) for a in argv]
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        try:
            proc = subprocess.run(argv, timeout=timeout, **kw)
        except subprocess.TimeoutExpired as exc:
            raise StackError(f"timed out after {timeout}s: {' '.join(argv)}") from exc
        except FileNotFoundError as exc:
            raise StackError(f"command not found: {argv[0]}") from exc
        if check and proc.returncode != 0:
            out = ((proc.stdout or "") + (proc.stderr or "")).strip()
            raise StackError(f"{' '.join(argv)} exited {proc.returncode}:\n{out[-3000:]}")
        return proc

    def spawn(
        self,
        argv: Sequence[str | os.PathLike],
        log: pathlib.Path,
        env: dict[str, str] | None = None,
        cwd: pathlib.Path | None = None,
        **kw,
    ) -> int:
        """Start a long-running process in its own session; output appended to ``log``."""
        argv = [str(a) for a in argv]
        log = pathlib.Path(log)
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            out.write(f"\n=== {time.strftime('%F %T')} {' '.join(argv)}\n".encode())
            out.flush()
            try:
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=cwd,
                    start_new_session=True,
                    **kw,
                )
            except FileNotFoundError as exc:
                raise StackError(f"command not found: {argv[0]}") from exc
        self._procs[proc.pid] = (proc, log)
        return proc.pid

    def spawned(self) -> list[int]:
        """Pids this context has spawned so far (running or not)."""
        return list(self._procs)

    def kill(self, pids: Sequence[int], started: dict[str, int] | None = None, timeout=20) -> None:
        """TERM the given pids (and what they started in their session), then KILL.

        Only pids the harness recorded are ever signalled; a pid whose start time no
        longer matches the record belongs to someone else and is left alone.
        """
        started = started or {}
        mine = [p for p in pids if pid_alive(p, started.get(str(p)))]
        for pid in mine:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(self._running(p) for p in mine):
            time.sleep(0.1)
        for pid in mine:
            with contextlib.suppress(ProcessLookupError):
                if self._running(pid):
                    os.kill(pid, signal.SIGKILL)
            # The session we created (pgid == pid) may hold children the leader left.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(self._running(p) for p in mine):
            time.sleep(0.05)

    def _running(self, pid: int) -> bool:
        # Reap our own children so they do not linger as zombies.
        if pid in self._procs:
            return self._procs[pid][0].poll() is None
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        return proc_start_time(pid) is not None

    # -- network -----------------------------------------------------------------
    def free_port(self) -> int:
        """A TCP port on 127.0.0.1 nobody listens on right now."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    def wait_http(
        self,
        url: str,
        ok: Callable[[int], bool] = lambda status: status < 500,
        timeout: float = 60,
        log: pathlib.Path | None = None,
        headers: dict[str, str] | None = None,
    ) -> int:
        """Poll ``url`` until ``ok(status)``; returns the status.

        Gives up early when a process spawned with this log has already exited.
        """
        deadline = time.monotonic() + timeout
        last = "no answer"
        while True:
            try:
                req = urllib.request.Request(url, headers=headers or {})
                with urllib.request.urlopen(req, timeout=5) as resp:
                    status = resp.status
            except urllib.error.HTTPError as exc:
                status = exc.code
            except (OSError, ValueError) as exc:
                status, last = None, str(exc)
            if status is not None:
                if ok(status):
                    return status
                last = f"HTTP {status}"
            self._check_alive(log, url)
            if time.monotonic() > deadline:
                raise StackError(f"{url} not ready after {timeout}s ({last})\n{tail(log)}")
            time.sleep(0.2)

    def wait_for(self, what: str, probe: Callable[[], bool], timeout: float = 60, log=None) -> None:
        """Poll ``probe()`` until it returns true."""
        deadline = time.monotonic() + timeout
        while not probe():
            self._check_alive(log, what)
            if time.monotonic() > deadline:
                raise StackError(f"{what} not ready after {timeout}s\n{tail(log)}")
            time.sleep(0.2)

    def _check_alive(self, log, what: str) -> None:
        if log is None:
            return
        for proc, plog in self._procs.values():
            if pathlib.Path(plog) == pathlib.Path(log) and proc.poll() is not None:
                raise StackError(f"{what}: process exited with {proc.returncode}\n{tail(log)}")

    # -- software ----------------------------------------------------------------
    def missing_packages(self, packages: Sequence[str]) -> list[str]:
        missing = []
        for pkg in packages:
            proc = self.run(["dpkg-query", "-W", "-f=${Status}", pkg], check=False)
            if proc.returncode != 0 or "install ok installed" not in proc.stdout:
                missing.append(pkg)
        return missing

    def apt(self, packages: Sequence[str]) -> None:
        """apt-get install what dpkg says is missing (after one apt-get update)."""
        if not packages or not self.missing_packages(packages):
            return
        with self.lock("apt"):
            missing = self.missing_packages(packages)
            if not missing:
                return
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            lock_wait = ["-o", "DPkg::Lock::Timeout=600"]
            if not self._apt_updated:
                self.run(["apt-get", *lock_wait, "update", "-q"], env=env, timeout=900)
                self._apt_updated = True
            self.run(
                ["apt-get", *lock_wait, "install", "-y", "-q", "--no-install-recommends", *missing],
                env=env,
                timeout=1800,
            )

    def venv(self, name: str, packages: list[str], python: str = "python3.11") -> pathlib.Path:
        """DIR/venvs/NAME with ``packages``; pip runs only when the list changed."""
        path = self.dir / "venvs" / name
        marker = path / ".stowkit-packages.json"
        wanted = {"python": python, "packages": sorted(packages)}
        with self.lock(f"venv-{name}"):
            try:
                if json.loads(marker.read_text()) == wanted:
                    return path
            except (FileNotFoundError, json.JSONDecodeError):
                pass
            try:
                have = json.loads(marker.read_text()).get("python")
            except (FileNotFoundError, json.JSONDecodeError):
                have = None
            if path.exists() and (have != python or not (path / "bin" / "python").exists()):
                shutil.rmtree(path)
            if not (path / "bin" / "python").exists():
                # python3.11-venv comes with the service (its row in tools/commands.txt).
                path.parent.mkdir(parents=True, exist_ok=True)
                self.run([python, "-m", "venv", path], timeout=300)
            pip = [path / "bin" / "python", "-m", "pip", "--disable-pip-version-check", "-q"]
            self.run([*pip, "install", *packages], timeout=1800)
            marker.write_text(json.dumps(wanted))
        return path

"""Serving a WSGI app with cheroot: bounded requests, several processes, no orphans.

One owner for how stowkit's HTTP services (the backup catalog, GlanceSync's
REST service) face clients: every request has a deadline from its first byte
to the end of its body (:class:`Reaper`; cheroot's own timeout is per
``recv``), a silent connection is closed after ``client_timeout``, and
``serve`` runs one cheroot server per process on one port (SO_REUSEPORT),
replaces a worker that dies, and makes workers die with their master.

The app sees ``environ["stowkit.read_deadline"]`` (a ``time.monotonic()``
value) and may call ``environ["stowkit.read_done"]()`` once it has read the
body; setting ``environ["stowkit.close"]`` closes the connection after the
response (a bounded lingering close, :mod:`stowkit.corelib.linger`) instead of
waiting for an unread body.

A body the app (or a middleware answering for it, keystonemiddleware's 401)
left unread is never read in one piece: up to :data:`DISCARD_LIMIT` bytes are
discarded in :data:`DISCARD_CHUNK` pieces so the connection can serve its next
request, anything larger (or an unfinished chunked body) closes the connection
with a lingering close.  (cheroot itself reads the rest in one call, holding
the whole body in memory.)
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from stowkit.corelib.errors import BackendUnavailable, ConfigError
from stowkit.corelib.linger import linger

LOG = logging.getLogger(__name__)

#: An unread body up to this size is discarded to keep the connection; a larger one closes it.
DISCARD_LIMIT = 1 << 20
#: The pieces an unread body is discarded in.
DISCARD_CHUNK = 65536


def discard_unread(rfile: Any, limit: int = DISCARD_LIMIT, chunk: int = DISCARD_CHUNK) -> bool:
    """Read and drop what is left of a known-length body, in pieces; True once it is all gone.

    False (nothing read) when more than ``limit`` bytes are left: the caller
    closes the connection instead.
    """
    remaining = getattr(rfile, "remaining", 0)
    if remaining > limit:
        return False
    while remaining > 0:
        piece = rfile.read(min(chunk, remaining))
        if not piece:
            return False  # the client stopped short: the connection cannot be reused
        remaining -= len(piece)
    return True


class Reaper:
    """Disconnects clients that take longer than ``limit`` seconds to send a request.

    cheroot's own timeout is per ``recv``: a client trickling a byte every few
    seconds would hold a thread for ever.  A connection is watched from the
    moment a thread starts reading its request until the app has read the body;
    one thread checks twice a second and shuts down the reading side of the
    sockets past their deadline: the blocked read returns at once (end of
    stream), the app can still answer 408, and the thread is free again.
    """

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._watched: dict[int, tuple[float, Any]] = {}
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="wsgi-reaper", daemon=True)
        self._thread.start()

    def watch(self, conn: Any) -> float:
        deadline = time.monotonic() + self.limit
        with self._lock:
            self._watched[id(conn)] = (deadline, conn)
        return deadline

    def forget(self, conn: Any) -> None:
        with self._lock:
            self._watched.pop(id(conn), None)

    def reap(self, now: float | None = None) -> int:
        now = time.monotonic() if now is None else now
        with self._lock:
            late = [(k, c) for k, (d, c) in self._watched.items() if d <= now]
            for key, _ in late:
                del self._watched[key]
        for _, conn in late:
            with contextlib.suppress(OSError, AttributeError):
                conn.socket.shutdown(socket.SHUT_RD)
        return len(late)

    def _run(self) -> None:
        while True:
            time.sleep(0.5)
            self.reap()


def make_server(
    app: Any,
    bind: str,
    port: int,
    threads: int = 32,
    client_timeout: float = 10,
    request_timeout: float = 20,
    reuse_port: bool = False,
    name: str = "stowkit",
) -> Any:
    """A cheroot server whose requests are bounded in time (see :class:`Reaper`)."""
    chserver, wsgi = _cheroot()

    reaper = Reaper(request_timeout)

    class Request(chserver.HTTPRequest):
        def parse_request(self) -> None:
            # A thread gets a connection only once bytes arrived (idle keep-alive
            # connections wait in cheroot's selector): the clock starts now.
            self.stowkit_deadline = reaper.watch(self.conn)
            super().parse_request()
            if not self.ready:
                reaper.forget(self.conn)

        def send_headers(self) -> None:
            # Before cheroot's own: it would read an unread body in one call.
            if self._body_left():
                keep = (
                    not self.close_connection
                    and not self.chunked_read
                    and int(self.status[:3]) != 413
                    and discard_unread(self.rfile)
                )
                if not keep:
                    self.close_connection = True
                    self.conn.stowkit_linger = True
            super().send_headers()

        def _body_left(self) -> bool:
            if self.chunked_read:
                return not getattr(self.rfile, "closed", True)  # the last chunk not read
            return getattr(self.rfile, "remaining", 0) > 0

    class Connection(chserver.HTTPConnection):
        RequestHandlerClass = Request
        stowkit_linger = False

        def close(self) -> None:
            if self.stowkit_linger:
                linger(self.socket)
            super().close()

    base_gateway = wsgi.wsgi_gateways[(1, 0)]

    class Gateway(base_gateway):
        def get_environ(self) -> dict[str, Any]:
            env = super().get_environ()
            conn = self.req.conn
            env["stowkit.read_deadline"] = getattr(
                self.req, "stowkit_deadline", time.monotonic() + request_timeout
            )
            env["stowkit.read_done"] = lambda: reaper.forget(conn)
            return env

        def start_response(self, status: str, headers: Any, exc_info: Any = None) -> Any:
            if self.env.get("stowkit.close"):
                # The body was not (fully) read: close instead of draining it
                # (cheroot would wait for it), and never parse it as a request.
                self.req.close_connection = True
                self.req.conn.stowkit_linger = True
            return super().start_response(status, headers, exc_info)

        def respond(self) -> None:
            try:
                super().respond()
            finally:
                reaper.forget(self.req.conn)

    server = wsgi.Server(
        (bind, port),
        app,
        numthreads=threads,
        request_queue_size=1024,
        timeout=client_timeout,
        server_name=name,
        reuse_port=reuse_port,
    )
    server.ConnectionClass = Connection
    server.gateway = Gateway
    server.stowkit_reaper = reaper
    reaper.start()
    return server


#: How long a stopping server waits for its running requests.  cheroot's stop()
#: gives busy threads its shutdown_timeout (5 s), then closes their sockets and
#: joins them without a bound: a thread stuck in the application (a database
#: that does not answer) would hold the process forever.
STOP_TIMEOUT = 15.0


def stop_within(server: Any, timeout: float, name: str = "stowkit") -> bool:
    """``server.stop()``, given ``timeout`` seconds; False (and a line saying so) if it hung.

    cheroot's ThreadPool.stop() queues one shutdown request per thread it
    knows and joins them; now and then (about one stop in three right after a
    request, cheroot 11) an idle thread is left waiting on the queue with no
    request for it, and the join never returns.  While the stop runs, every
    idle pool thread still alive gets one more shutdown request; extra ones
    are harmless, the queue dies with the server.
    """
    from cheroot.workers import threadpool

    stopper = threading.Thread(target=server.stop, name=f"{name}-stop", daemon=True)
    stopper.start()
    deadline = time.monotonic() + timeout
    while stopper.is_alive() and time.monotonic() < deadline:
        stopper.join(0.25)
        pool = [
            t
            for t in threading.enumerate()
            if isinstance(t, threadpool.WorkerThread) and t.is_alive()
        ]
        if stopper.is_alive() and pool and all(t.conn is None for t in pool):
            for _ in pool:
                server.requests.put(threadpool._SHUTDOWNREQUEST)
    if stopper.is_alive():
        print(
            f"{name}: requests still running {timeout:g} s after the stop signal; "
            "exiting without them",
            file=sys.stderr,
            flush=True,
        )
        return False
    return True


def _die_with_parent(parent: int) -> None:
    """Linux: the kernel sends this process SIGKILL when the master dies, however it dies."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the master died before prctl took effect
        os._exit(1)


_PR_SET_PDEATHSIG = 1


def serve(
    app: Any,
    bind: str,
    port: int,
    n_workers: int,
    *,
    threads: int = 32,
    client_timeout: float = 10,
    request_timeout: float = 20,
    name: str = "stowkit",
    stop_timeout: float = STOP_TIMEOUT,
    on_stop: Callable[[], Any] = lambda: None,
    ready: Callable[[], Any] = lambda: None,
    stopping: Callable[[], Any] = lambda: None,
) -> None:
    """Serve ``app`` in ``n_workers`` processes until SIGTERM or SIGINT.

    Each worker process runs its own cheroot server (a thread pool) on the
    same port with SO_REUSEPORT, so the kernel spreads connections over the
    processes and no Python master sits in the request path.  Workers die
    with the master (``PR_SET_PDEATHSIG``), so a killed master leaves no
    orphan serving the port.  ``on_stop`` runs in each serving process once
    its server has stopped.  ``ready`` runs once in this (the calling) process
    when every worker listens, ``stopping`` once when a signal stops the service
    (``stowkit.corelib.notify``'s functions tell systemd so).  A stop signal
    ends each serving process within ``stop_timeout`` seconds, requests still
    running or not (:func:`stop_within`).
    """
    _cheroot()  # in the master: one clear error, not one per worker

    def stop_signal() -> None:
        LOG.info("%s: stop signal; running requests get at most %g s", name, stop_timeout)
        stopping()

    def run_worker(listening: Callable[[], Any]) -> None:
        server = make_server(
            app,
            bind,
            port,
            threads=threads,
            client_timeout=client_timeout,
            request_timeout=request_timeout,
            reuse_port=n_workers > 1,
            name=name,
        )
        # cheroot shuts down cleanly on KeyboardInterrupt raised in its serving
        # loop (stop() called from a signal handler in that same thread hangs).
        signal.signal(signal.SIGTERM, _interrupt)
        try:
            server.prepare()  # binds and listens
            listening()
            server.serve()
        except KeyboardInterrupt:
            # One stop: a second signal (a process group's SIGTERM reaches a worker
            # twice, once from the master) must not interrupt the stop itself.
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            if n_workers <= 1:
                stop_signal()
            if not stop_within(server, stop_timeout, name):
                on_stop()
                os._exit(1)  # a request thread is stuck: leave it, as promised
        except OSError as exc:
            raise BackendUnavailable(f"cannot listen on {bind}:{port}: {exc}") from None
        finally:
            on_stop()

    if n_workers <= 1:
        run_worker(ready)
        return
    check_port(bind, port)
    children: set[int] = set()
    stopped = False
    master = os.getpid()
    # Each first worker writes one byte here once it listens; the master reads them all.
    ready_r, ready_w = os.pipe()

    def spawn(first: bool = False) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            code = 0
            if first:  # the master closed the pipe before any respawn
                os.close(ready_r)

            def listening() -> None:
                if first:
                    os.write(ready_w, b".")
                    os.close(ready_w)

            try:
                _die_with_parent(master)
                signal.signal(signal.SIGINT, signal.default_int_handler)
                run_worker(listening)
            except BaseException:  # a worker must never return into the parent's code
                traceback.print_exc()
                code = 1
            os._exit(code)
        children.add(pid)

    def forward(signum: int, _frame: Any) -> None:
        nonlocal stopped
        if not stopped:
            stop_signal()
        stopped = True
        for child in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for _ in range(n_workers):
        spawn(first=True)
    os.close(ready_w)
    # End of file before n bytes: a worker died before it listened, or a signal
    # stopped them all; either way the service never was ready.
    heard = 0
    with os.fdopen(ready_r, "rb", buffering=0) as reports:
        while heard < n_workers:
            chunk = reports.read(n_workers - heard)
            if not chunk:
                break
            heard += len(chunk)
    if heard == n_workers and not stopped:
        ready()
    respawns = 0
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        children.discard(pid)
        if stopped:
            continue
        # A worker that died on its own (a crash, the OOM killer) is replaced, a few
        # times: a worker that cannot start at all would otherwise loop forever.
        respawns += 1
        print(f"{name} worker {pid} exited (status {status}); starting another", file=sys.stderr)
        if respawns > 10 * n_workers:
            forward(signal.SIGTERM, None)
            raise BackendUnavailable(f"{name} server workers keep dying; see the log above")
        spawn()


def _cheroot() -> tuple[Any, Any]:
    try:
        from cheroot import server as chserver
        from cheroot import wsgi
    except ImportError:
        raise ConfigError("stowkit's HTTP services need cheroot (pip install cheroot)") from None
    return chserver, wsgi


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def check_port(bind: str, port: int) -> None:
    """Fail early, in the parent, when the port is taken (SO_REUSEPORT would hide it).

    SO_REUSEADDR as the real listeners have: connections of a killed server
    left in TIME_WAIT must not stop a restart, only a live listener does.
    """
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((bind, port))
        except OSError as exc:
            raise BackendUnavailable(f"cannot listen on {bind}:{port}: {exc}") from None

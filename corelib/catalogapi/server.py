"""Building the catalog's WSGI pipeline from configuration, and serving it.

Production: keystonemiddleware's ``auth_token`` in front of the app (options in
``[keystone_authtoken]``), so the project and user come from a validated
token.  ``--no-auth``: the app alone, trusting the URL and ``X-User-Id``; meant
for the embedded, single-host default and tests.

The server is cheroot, one process per worker with SO_REUSEPORT: measured here
it served this app faster than gunicorn (sync), waitress and bjoern
(see doc/catalog.md).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import sys
import threading
import time
import traceback
from typing import Any

from oslo_config import cfg

from stowkit.corelib import registry
from stowkit.corelib.catalogapi.app import CatalogApp
from stowkit.corelib.catalogapi.service import CatalogService
from stowkit.corelib.errors import BackendUnavailable, ConfigError

GROUP = "catalog_api"

api_opts = [
    cfg.StrOpt("bind", default="127.0.0.1", help="Address the catalog API listens on."),
    cfg.PortOpt("port", default=9090, help="TCP port of the catalog API (freezer-api's)."),
    cfg.IntOpt(
        "workers",
        default=0,
        min=0,
        help="Server processes; 0 means one per CPU (the app is CPU-bound: processes, "
        "not threads, use several cores under the GIL).",
    ),
    cfg.StrOpt(
        "auth_strategy",
        default="keystone",
        choices=["keystone", "noauth"],
        help="keystone: validate tokens with keystonemiddleware ([keystone_authtoken]); "
        "noauth: trust the URL's project and X-User-Id (single host, tests).",
    ),
    cfg.StrOpt(
        "default_project",
        default="default",
        help="noauth only: the project of v1 requests, which name none.",
    ),
    cfg.IntOpt(
        "max_body_size",
        default=1 << 20,
        min=1024,
        help="Largest request body accepted, in bytes; larger ones get 413.",
    ),
    cfg.IntOpt(
        "threads",
        default=32,
        min=1,
        help="Threads per server process.  An idle keep-alive connection holds none; a "
        "connection in the middle of sending its request holds one, for at most "
        "request_timeout seconds.",
    ),
    cfg.IntOpt(
        "client_timeout",
        default=10,
        min=1,
        help="Seconds a connection may stay silent (between requests or in the middle "
        "of one) before it is closed.",
    ),
    cfg.IntOpt(
        "request_timeout",
        default=20,
        min=1,
        help="Seconds a client has to send a whole request (request line, headers and "
        "body) once it started; a slower one gets 408 or is disconnected.",
    ),
    cfg.BoolOpt(
        "auto_sync",
        default=True,
        help="Apply database migrations when the server starts (as `catalog db-sync`).",
    ),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(api_opts, group=GROUP)


def build_app(conf: cfg.ConfigOpts, catalog: Any = None, auth: str | None = None) -> Any:
    """The WSGI callable the configuration describes."""
    register_opts(conf)
    opts = conf[GROUP]
    catalog = catalog or registry.load("catalog", conf)
    strategy = auth or opts.auth_strategy
    app = CatalogApp(
        CatalogService(catalog),
        auth=strategy,
        default_project=opts.default_project,
        max_body=opts.max_body_size,
    )
    if strategy == "noauth":
        return app
    return with_keystone(app, conf)


def with_keystone(app: CatalogApp, conf: cfg.ConfigOpts) -> Any:
    try:
        from keystonemiddleware import auth_token
    except ImportError:
        raise ConfigError(
            "auth_strategy=keystone needs keystonemiddleware (pip install keystonemiddleware) "
            "or run with --no-auth"
        ) from None
    protected = auth_token.AuthProtocol(app, {"oslo_config_config": conf})

    def pipeline(environ: dict[str, Any], start_response: Any) -> Any:
        # The version documents are public, as in every OpenStack API.
        path = environ.get("PATH_INFO", "") or "/"
        if path.strip("/") in ("", "v1", "v2"):
            return app(environ, start_response)
        return protected(environ, start_response)

    return pipeline


def workers(conf: cfg.ConfigOpts) -> int:
    return conf[GROUP].workers or (os.cpu_count() or 1)


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
        self._thread = threading.Thread(target=self._run, name="catalog-reaper", daemon=True)
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
) -> Any:
    """A cheroot server whose requests are bounded in time (see :class:`Reaper`)."""
    try:
        from cheroot import server as chserver
        from cheroot import wsgi
    except ImportError:
        raise ConfigError("the catalog server needs cheroot (pip install cheroot)") from None

    reaper = Reaper(request_timeout)

    class Request(chserver.HTTPRequest):
        def parse_request(self) -> None:
            # A thread gets a connection only once bytes arrived (idle keep-alive
            # connections wait in cheroot's selector): the clock starts now.
            self.stowkit_deadline = reaper.watch(self.conn)
            super().parse_request()
            if not self.ready:
                reaper.forget(self.conn)

    class Connection(chserver.HTTPConnection):
        RequestHandlerClass = Request

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
        server_name="stowkit-catalog",
        reuse_port=reuse_port,
    )
    server.ConnectionClass = Connection
    server.gateway = Gateway
    server.stowkit_reaper = reaper
    reaper.start()
    return server


def _die_with_parent(parent: int) -> None:
    """Linux: the kernel sends this process SIGKILL when the master dies, however it dies."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the master died before prctl took effect
        os._exit(1)


_PR_SET_PDEATHSIG = 1


def serve(conf: cfg.ConfigOpts, app: Any, bind: str, port: int, n_workers: int) -> None:
    """Serve with cheroot in ``n_workers`` processes until SIGTERM or SIGINT.

    Each worker process runs its own cheroot server (a thread pool) on the
    same port with SO_REUSEPORT, so the kernel spreads connections over the
    processes and no Python master sits in the request path.  Workers die
    with the master (``PR_SET_PDEATHSIG``), so a killed master leaves no
    orphan serving the port.
    """
    opts = conf[GROUP]
    try:
        import cheroot  # noqa: F401  (in the master: one clear error, not one per worker)
    except ImportError:
        raise ConfigError("the catalog server needs cheroot (pip install cheroot)") from None

    def run_worker() -> None:
        server = make_server(
            app,
            bind,
            port,
            threads=opts.threads,
            client_timeout=opts.client_timeout,
            request_timeout=opts.request_timeout,
            reuse_port=n_workers > 1,
        )
        # cheroot shuts down cleanly on KeyboardInterrupt raised in its serving
        # loop (stop() called from a signal handler in that same thread hangs).
        signal.signal(signal.SIGTERM, _interrupt)
        try:
            server.start()
        except KeyboardInterrupt:
            server.stop()  # joins the worker threads, closes the socket
        except OSError as exc:
            raise BackendUnavailable(f"cannot listen on {bind}:{port}: {exc}") from None

    if n_workers <= 1:
        run_worker()
        return
    _check_port(bind, port)
    children: set[int] = set()
    stopping = False
    master = os.getpid()

    def spawn() -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            code = 0
            try:
                _die_with_parent(master)
                signal.signal(signal.SIGINT, signal.default_int_handler)
                run_worker()
            except BaseException:  # a worker must never return into the parent's code
                traceback.print_exc()
                code = 1
            os._exit(code)
        children.add(pid)

    def forward(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for child in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for _ in range(n_workers):
        spawn()
    respawns = 0
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        children.discard(pid)
        if stopping:
            continue
        # A worker that died on its own (a crash, the OOM killer) is replaced, a few
        # times: a worker that cannot start at all would otherwise loop forever.
        respawns += 1
        print(f"catalog worker {pid} exited (status {status}); starting another", file=sys.stderr)
        if respawns > 10 * n_workers:
            forward(signal.SIGTERM, None)
            raise BackendUnavailable("catalog server workers keep dying; see the log above")
        spawn()


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _check_port(bind: str, port: int) -> None:
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

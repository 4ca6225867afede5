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
import os
import signal
import socket
import sys
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


def serve(conf: cfg.ConfigOpts, app: Any, bind: str, port: int, n_workers: int) -> None:
    """Serve with cheroot in ``n_workers`` processes until SIGTERM or SIGINT.

    Each worker process runs its own cheroot server (a small thread pool) on the
    same port with SO_REUSEPORT, so the kernel spreads connections over the
    processes and no Python master sits in the request path.
    """
    try:
        from cheroot import wsgi
    except ImportError:
        raise ConfigError("the catalog server needs cheroot (pip install cheroot)") from None

    def run_worker() -> None:
        server = wsgi.Server(
            (bind, port),
            app,
            numthreads=THREADS,
            request_queue_size=1024,
            timeout=30,
            server_name="stowkit-catalog",
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

    def spawn() -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            code = 0
            try:
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


#: Threads per worker process: enough to overlap database waits, few enough
#: that the GIL is not fought over (measured: 4 to 8 serve the same here).
THREADS = 8


def _check_port(bind: str, port: int) -> None:
    """Fail early, in the parent, when the port is taken (SO_REUSEPORT would hide it)."""
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((bind, port))
        except OSError as exc:
            raise BackendUnavailable(f"cannot listen on {bind}:{port}: {exc}") from None

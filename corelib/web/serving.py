"""How an API is served: its listening, worker and timeout options, and the call that serves it.

Every stowkit API registers the same options in its own group (``bind``,
``port``, ``threads``, ``client_timeout``, ``request_timeout``, and a
``workers`` of its own), each with that service's defaults, and is served by
:func:`serve` through :mod:`stowkit.corelib.wsgiserve`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from oslo_config import cfg

from stowkit.corelib import wsgiserve


def listen_opts(service: str, port: int, port_note: str = "") -> list[cfg.Opt]:
    """``bind`` and ``port`` of the API called ``service`` (``port_note`` ends the port's help)."""
    return [
        cfg.StrOpt("bind", default="127.0.0.1", help=f"Address the {service} listens on."),
        cfg.PortOpt("port", default=port, help=f"TCP port of the {service}{port_note}."),
    ]


def timing_opts(threads: int, client_timeout: int, request_timeout: int) -> list[cfg.Opt]:
    """``threads``, ``client_timeout`` and ``request_timeout`` with one service's defaults."""
    return [
        cfg.IntOpt(
            "threads",
            default=threads,
            min=1,
            help="Threads per server process.  An idle keep-alive connection holds none; a "
            "connection in the middle of sending its request holds one, for at most "
            "request_timeout seconds.",
        ),
        cfg.IntOpt(
            "client_timeout",
            default=client_timeout,
            min=1,
            help="Seconds a connection may stay silent (between requests or in the middle "
            "of one) before it is closed.",
        ),
        cfg.IntOpt(
            "request_timeout",
            default=request_timeout,
            min=1,
            help="Seconds a client has to send a whole request (request line, headers and "
            "body) once it started; a slower one gets 408 or is disconnected.",
        ),
    ]


def workers(conf: cfg.ConfigOpts, group: str) -> int:
    """``[group] workers``, 0 meaning one per CPU."""
    return conf[group].workers or (os.cpu_count() or 1)


def serve(
    conf: cfg.ConfigOpts,
    group: str,
    app: Any,
    bind: str,
    port: int,
    n_workers: int,
    *,
    name: str,
    ready: Callable[[], Any] = lambda: None,
    stopping: Callable[[], Any] = lambda: None,
    on_stop: Callable[[], Any] = lambda: None,
) -> None:
    """Serve ``app`` with ``[group]``'s threads and timeouts until SIGTERM or SIGINT.

    ``ready`` runs once every worker listens, ``stopping`` when the stop signal
    arrives, ``on_stop`` in each serving process once its server stopped
    (see :func:`stowkit.corelib.wsgiserve.serve`).
    """
    opts = conf[group]
    wsgiserve.serve(
        app, bind, port, n_workers, threads=opts.threads, client_timeout=opts.client_timeout,
        request_timeout=opts.request_timeout, name=name, ready=ready, stopping=stopping,
        on_stop=on_stop,
    )  # fmt: skip

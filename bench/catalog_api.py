"""Catalog API benchmark: stowkit against freezer-api 19, with the same client.

    python3 bench/catalog_api.py [--requests N] [--concurrency C] [--keepalive]
                                 [--only stowkit|freezer-api] [--freezer-venv DIR]
                                 [--results FILE] [--strict]

Starts both servers on SQLite in a scratch directory, each without Keystone
(stowkit: ``catalog serve --no-auth``; freezer-api: its paste pipeline with a
small filter of ours that sets the identity headers, the set-up freezer-api
documents for running unauthenticated), then measures with the same client:

* POST /v2/{project}/backups        (a new backup document each time)
* GET  /v2/{project}/backups?limit=100  (after the POSTs, so 100 documents come back)

Each request opens its own TCP connection, as the reference figures were
measured (``--keepalive`` reuses one connection per client process instead).
The limit, in the same run: an empty WSGI application (it reads the body
and answers a fixed document) on the very server ``catalog serve`` uses
(corelib/wsgiserve.py, same workers and threads).  ``catalog serve`` runs the
full deployment pipeline (oslo.middleware's proxy headers, request id,
healthcheck and sizelimit, then the app).  Prints requests/s, p50 and p99
latency and the ratios, written as figures (bench/figures.py): throughput
stowkit / freezer-api for each operation (target >= 10x), p99 latency
freezer-api / stowkit, and throughput stowkit / empty app (no targets).
stowkit runs from the interpreter running this file (``python -m
stowkit.cli.app``).  freezer-api is installed with ``pip install
freezer-api==19.*`` into ``.stack/venvs/freezer-api`` when that venv is
missing.  A server that does not start or answers with another status: its
figures are MISSING, the reason printed, and the exit status 1.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.error
import urllib.request

import figures

REPO = pathlib.Path(__file__).resolve().parents[1]
PROJECT = "benchproject"
USER = "benchuser"

IDENTITY_FILTER = '''
"""Sets the headers keystonemiddleware would set; for benchmarking only."""
import re

_PROJECT = re.compile(r"^/v2/([^/]+)/")


def factory(global_conf, **local_conf):
    def filter_(app):
        def wrapped(environ, start_response):
            match = _PROJECT.match(environ.get("PATH_INFO", ""))
            environ["HTTP_X_USER_ID"] = "benchuser"
            environ["HTTP_X_USER_NAME"] = "benchuser"
            environ["HTTP_X_TENANT_ID"] = match.group(1) if match else "benchproject"
            environ["HTTP_X_PROJECT_ID"] = environ["HTTP_X_TENANT_ID"]
            environ["HTTP_X_ROLES"] = "admin"
            environ["HTTP_X_IDENTITY_STATUS"] = "Confirmed"
            return app(environ, start_response)
        return wrapped
    return filter_
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, log: pathlib.Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise figures.NotRun(f"server exited with {proc.returncode}: {tail(log)}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.2)
    raise figures.NotRun(f"{url} not ready after {timeout:.0f} s: {tail(log)}")


def tail(log: pathlib.Path) -> str:
    """The end of a server's log, on one line (the full log is printed to stderr)."""
    text = log.read_text(errors="replace") if log.exists() else ""
    if text.strip():
        print(f"---- {log}\n{text[-3000:]}", file=sys.stderr)
    return " ".join(text.split())[-300:]


def spawn_ready(argv: list[str], log: pathlib.Path, port: int) -> subprocess.Popen:
    """Start a server in its own session, logging to ``log``; return once it answers."""
    proc = subprocess.Popen(
        argv, stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}/", proc, log)
    except BaseException:
        stop(proc)
        raise
    return proc


def start_stowkit(work: pathlib.Path, port: int) -> subprocess.Popen:
    conf = work / "stowkit.conf"
    conf.write_text(f"[DEFAULT]\nstate_dir = {work / 'stowkit-state'}\n")
    cmd = figures.stowkit_command()
    serve = ["catalog", "serve", "--no-auth", "--port", str(port)]
    return spawn_ready([*cmd, "--config-file", str(conf), *serve], work / "stowkit.log", port)


# The limit: an application that does nothing, on the very server `catalog serve`
# runs (corelib/wsgiserve.py: its workers, threads and timeouts, from the catalog's
# own option defaults).  stowkit / empty is the share of the server's ceiling the
# catalog keeps, with its middleware, policy and database in the way.
EMPTY_APP = """
import sys
from stowkit.corelib import config, wsgiserve
from stowkit.corelib.catalogapi import server
from stowkit.corelib.web import serving

def app(environ, start_response):
    length = int(environ.get("CONTENT_LENGTH") or 0)
    if length:
        environ["wsgi.input"].read(length)
    post = environ["REQUEST_METHOD"] == "POST"
    body = b'{"backup_id": "0"}' if post else b'{"backups": []}'
    start_response("201 Created" if post else "200 OK",
                   [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]

conf = config.load_conf([])
server.register_opts(conf)
n = serving.workers(conf, server.GROUP)
serving.serve(conf, server.GROUP, app, "127.0.0.1", int(sys.argv[1]), n, name=server.SERVER_NAME)
"""


def start_empty(work: pathlib.Path, port: int) -> subprocess.Popen:
    python = figures.stowkit_command()[0]  # the interpreter stowkit runs from
    return spawn_ready([python, "-c", EMPTY_APP, str(port)], work / "empty.log", port)


def ensure_freezer_api(venv: pathlib.Path) -> pathlib.Path:
    if not (venv / "bin" / "freezer-api").exists():
        print(f"installing freezer-api 19 into {venv} ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(venv / "bin" / "pip"), "install", "-q", "freezer-api==19.*"], check=True
        )
    return venv


def start_freezer_api(work: pathlib.Path, port: int, venv: pathlib.Path) -> subprocess.Popen:
    fdir = work / "freezer-api"
    fdir.mkdir()
    (fdir / "stowkit_bench_identity.py").write_text(IDENTITY_FILTER)
    (fdir / "policy.yaml").write_text('"project_member": "@"\n"project_reader": "@"\n')
    (fdir / "paste.ini").write_text(
        textwrap.dedent(
            """\
            [app:api_versions]
            paste.app_factory = freezer_api.api.versions:api_versions

            [app:appv2]
            paste.app_factory = freezer_api.service:freezer_appv2_factory

            [filter:identity]
            paste.filter_factory = stowkit_bench_identity:factory

            [filter:versionsNegotiator]
            paste.filter_factory = freezer_api.api.versions:VersionNegotiator.factory

            [filter:http_proxy_to_wsgi]
            paste.filter_factory = oslo_middleware:HTTPProxyToWSGI.factory

            [composite:backupapp]
            paste.composite_factory = freezer_api.service:root_app_factory
            /: api_versions
            /v2: appv2

            [pipeline:main]
            pipeline = http_proxy_to_wsgi identity versionsNegotiator backupapp
            """
        )
    )
    conf = fdir / "freezer-api.conf"
    conf.write_text(
        textwrap.dedent(
            f"""\
            [DEFAULT]
            bind_host = 127.0.0.1
            bind_port = {port}
            [storage]
            backend = sqlalchemy
            driver = sqlalchemy
            [database]
            connection = sqlite:///{fdir / "freezer.sqlite"}
            [paste_deploy]
            config_file = {fdir / "paste.ini"}
            [oslo_policy]
            policy_file = {fdir / "policy.yaml"}
            [centralized_scheduler]
            enabled = false
            """
        )
    )
    env = dict(os.environ, PYTHONPATH=str(fdir))
    subprocess.run(
        [str(venv / "bin" / "freezer-manage"), "--config-file", str(conf), "db", "sync"],
        check=True,
        capture_output=True,
        env=env,
    )
    log = fdir / "server.log"
    proc = subprocess.Popen(
        [str(venv / "bin" / "freezer-api"), "--config-file", str(conf)],
        stdout=open(log, "wb"),
        stderr=subprocess.STDOUT,
        env=env,
        cwd=fdir,
        start_new_session=True,
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}/", proc, log)
    except BaseException:
        stop(proc)
        raise
    return proc


# -- the client ---------------------------------------------------------------------------
def _worker(args: tuple) -> list[tuple[float, int]]:
    port, method, n, first, keepalive, tag = args
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    headers["X-User-Id"] = USER
    out = []
    conn = None
    for i in range(n):
        if method == "POST":
            path = f"/v2/{PROJECT}/backups"
            body = json.dumps(
                {
                    "container": "bench",
                    "hostname": "host-1.example.org",
                    "backup_name": f"{tag}-{first + i}",
                    "time_stamp": 1_700_000_000 + first + i,
                    "curr_backup_level": 0,
                    "max_level": 5,
                    "mode": "fs",
                    "path_to_backup": "/srv/data",
                    "storage": "swift",
                    "fs_real_path": "/srv/data",
                    "client_os": "linux",
                }
            )
        else:
            path, body = f"/v2/{PROJECT}/backups?limit=100", None
        t0 = time.perf_counter()
        if conn is None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        resp.read()
        if not keepalive or resp.will_close:
            conn.close()
            conn = None
        out.append((time.perf_counter() - t0, resp.status))
    if conn is not None:
        conn.close()
    return out


def measure(port: int, method: str, total: int, conc: int, keepalive: bool, tag: str) -> dict:
    per = total // conc
    jobs = [(port, method, per, w * per, keepalive, tag) for w in range(conc)]
    with multiprocessing.Pool(conc) as pool:
        t0 = time.perf_counter()
        results = pool.map(_worker, jobs)
        elapsed = time.perf_counter() - t0
    lat = sorted(x[0] for r in results for x in r)
    statuses = {x[1] for r in results for x in r}
    expected = 201 if method == "POST" else 200
    if statuses != {expected}:
        raise RuntimeError(f"{method}: statuses {sorted(statuses)}, expected only {expected}")
    return {
        "rps": len(lat) / elapsed,
        "p50": lat[len(lat) // 2] * 1000,
        "p99": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000,
        "n": len(lat),
    }


def run_one(name: str, port: int, args: argparse.Namespace) -> dict:
    results = {}
    tag = f"{name}-{os.getpid()}"
    results["POST /backups"] = measure(
        port, "POST", args.requests, args.concurrency, args.keepalive, tag
    )
    results["GET list limit=100"] = measure(
        port, "GET", args.list_requests, args.concurrency, args.keepalive, tag
    )
    return results


def stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


OPS = ("POST /backups", "GET list limit=100")
#: name (as the figures name it) -> what is measured
SERVERS = {
    "stowkit": "stowkit catalog serve",
    "empty": "empty WSGI app on stowkit's server",
    "freezer-api": "freezer-api 19",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="POSTs per server")
    parser.add_argument("--list-requests", type=int, default=1000, help="list GETs per server")
    parser.add_argument("--concurrency", type=int, default=4, help="client processes")
    parser.add_argument("--keepalive", action="store_true", help="reuse connections")
    parser.add_argument("--only", choices=["stowkit", "freezer-api"])
    parser.add_argument(
        "--stowkit-port",
        type=int,
        help="measure a stowkit catalog already serving (no-auth) on this port instead",
    )
    parser.add_argument(
        "--freezer-venv", type=pathlib.Path, default=REPO / ".stack" / "venvs" / "freezer-api"
    )
    figures.add_arguments(parser, "catalog_api")
    args = parser.parse_args()
    res = figures.Results("catalog_api")
    for op in OPS:
        res.declare(f"{op}: req/s stowkit / freezer-api", "x", 10.0, ">=")
        res.declare(f"{op}: p99 latency freezer-api / stowkit")
        res.declare(f"{op}: req/s stowkit / empty app, same server")
    work = pathlib.Path(tempfile.mkdtemp(prefix="stowkit-bench-catalog-"))
    table: dict[str, dict] = {}
    try:
        # --only stowkit still measures the empty app: it is stowkit's own limit.
        chosen = {"stowkit": ("stowkit", "empty"), "freezer-api": ("freezer-api",)}
        for name in chosen.get(args.only, SERVERS):
            part = SERVERS[name]
            with res.part(part, [f for f in res.figures if name in f or name == "stowkit"]):
                port = free_port()
                if name == "stowkit" and args.stowkit_port:
                    table[name] = run_one(name, args.stowkit_port, args)
                    continue
                if name == "stowkit":
                    proc = start_stowkit(work, port)
                elif name == "empty":
                    proc = start_empty(work, port)
                else:
                    proc = start_freezer_api(work, port, ensure_freezer_api(args.freezer_venv))
                try:
                    table[name] = run_one(name, port, args)
                finally:
                    stop(proc)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    mode = "keep-alive" if args.keepalive else "one connection per request"
    print(
        f"catalog API, {args.concurrency} client processes, {mode}, SQLite, {os.cpu_count()} CPUs"
    )
    print(f"{'server':<12} {'operation':<20} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'n':>6}")
    for name, rows in table.items():
        for op, r in rows.items():
            print(
                f"{name:<12} {op:<20} {r['rps']:9.1f} {r['p50']:8.2f} {r['p99']:8.2f} {r['n']:6d}"
            )
    for figure in res.figures:
        if args.only and any(n in figure for n in SERVERS if n not in chosen[args.only]):
            res.skip(figure, f"--only {args.only}")
    for op in OPS:
        s, f = table.get("stowkit", {}).get(op), table.get("freezer-api", {}).get(op)
        why = "freezer-api not measured" if s else "stowkit not measured"
        res.ratio(f"{op}: req/s stowkit / freezer-api", s and s["rps"], f and f["rps"], why)
        res.ratio(f"{op}: p99 latency freezer-api / stowkit", f and f["p99"], s and s["p99"], why)
        e = table.get("empty", {}).get(op)
        why = "the empty app not measured" if s else "stowkit not measured"
        res.ratio(
            f"{op}: req/s stowkit / empty app, same server", s and s["rps"], e and e["rps"], why
        )
    return res.finish(args)


if __name__ == "__main__":
    sys.exit(main())

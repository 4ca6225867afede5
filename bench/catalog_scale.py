"""Catalog at scale: many agents polling one catalog on PostgreSQL, beside freezer-api 19.

    python3 bench/catalog_scale.py [--jobs N] [--backups N] [--agents N] [--interval S]
                                   [--duration S] [--search-rate R] [--flat-out S]
                                   [--workers N] [--freezer-jobs N] [--freezer-backups N]
                                   [--only stowkit|freezer-api] [--results FILE] [--strict]

stowkit: a scratch database on the harness PostgreSQL (``tools.stack start
postgres``; dropped at the end), created by ``stowkit catalog db-sync``, then
bulk-loaded with COPY through the catalog's own table layout (its secondary
indexes are dropped for the load and re-created from their own definitions):
``--jobs`` jobs (default 10,000) of ``--agents`` clients and ``--backups``
backup documents (default 1,000,000), 10 containers per host.  Every document
is what the API stores: jobs go through the catalog service itself (schema,
defaults), backups are built as the service builds them and a sample is
checked against the service byte for byte.  Served by ``stowkit catalog serve
--no-auth`` (one process per CPU unless ``--workers``).

The load, the same client for both servers: ``--agents`` agents (default
100; threads spread over 4 client processes, one keep-alive connection each)
each poll ``GET /v2/{project}/jobs?limit=1000`` with freezer-scheduler's search
(``{"match": [{"client_id": ID}], "match_not": [{"status": "completed"}]}``)
every ``--interval`` seconds (default 5: freezer-scheduler and ``stowkit agent``
poll every 60 s, so this is the load of 12 times as many agents), and
``--search-rate`` backup searches per second (default 5:
``{"match": [{"container": C}, {"hostname": H}]}``, limit 100, of 1000
matching) for ``--duration`` seconds (default 60).  Then, for ``--flat-out``
seconds (default 15), every agent polls back to back: the poll capacity of the
machine (client and server share its CPUs).  Every answer is checked (status,
and the number of jobs or backups it must hold).

Figures: poll p99 and search p99 (target <= 20 ms each), p50s, requests/s,
the server's CPU (the sum over its processes, from /proc, in % of one CPU)
and its PostgreSQL backends' CPU during the timed phase.  freezer-api 19
(``.stack/venvs/freezer-api``, installed when missing) runs on SQLite (its
PostgreSQL needs a driver its venv does not have) with ``--freezer-jobs``
(10,000) and ``--freezer-backups`` (100,000, loaded through its own database
API in-process); the same client, with a 60 s timeout per request (a request
that times out counts as 60 s).  Exit 1 when a figure could not be measured.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import pathlib
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import figures
from catalog_api import ensure_freezer_api, free_port, start_freezer_api, stop, wait_ready

REPO = pathlib.Path(__file__).resolve().parents[1]
PROJECT = "scaleproject"
USER = "benchuser"
CONTAINERS = 10
ACTIVE_EVERY = 10  # one job in ten is not completed: what a poll returns
CLIENT_PROCS = 4
TIMEOUT = 60.0
TIMED_OUT = "timed out"  # not a wrong answer: counted apart
HZ = os.sysconf("SC_CLK_TCK")


# -- the documents ------------------------------------------------------------------------
def client_id(a: int) -> str:
    return f"agent-{a:04d}"


def hostname(a: int) -> str:
    return f"{client_id(a)}.example.org"


def container(c: int) -> str:
    return f"/srv/freezer/backups-{c:02d}"


def job_body(j: int, agents: int) -> dict:
    a = j % agents
    return {
        "job_id": f"job-{j:06d}",
        "client_id": client_id(a),
        "description": f"nightly backup {j}",
        "job_schedule": {
            "schedule_interval": "1 days",
            "status": "scheduled" if (j // agents) % ACTIVE_EVERY == 0 else "completed",
            "result": "success",
            "event": "",
        },
        "job_actions": [
            {
                "freezer_action": {
                    "action": "backup",
                    "mode": "fs",
                    "path_to_backup": "/srv/data",
                    "backup_name": f"data-{j}",
                    "container": container(j % CONTAINERS),
                    "storage": "swift",
                },
                "max_retries": 3,
                "max_retries_interval": 60,
                "mandatory": False,
            }
        ],
    }


def active_jobs(agents: int, jobs: int) -> dict[str, int]:
    count = {client_id(a): 0 for a in range(agents)}
    for j in range(jobs):
        if (j // agents) % ACTIVE_EVERY == 0:
            count[client_id(j % agents)] += 1
    return count


def backup_meta(b: int, agents: int) -> dict:
    """freezer-agent's backup document (its default options), the b-th backup made."""
    a = b % agents
    c = (b // agents) % CONTAINERS
    n = b // (agents * CONTAINERS)
    return {
        "action": "backup",
        "always_level": "",
        "backup_media": "fs",
        "backup_name": f"data-{a}-{c}",
        "client_os": "linux",
        "client_version": "19.0.0",
        "compression": "gzip",
        "consistency_check": False,
        "container": container(c),
        "curr_backup_level": n % 5,
        "dry_run": "",
        "encrypted": False,
        "engine_name": "tar",
        "fs_real_path": "/srv/data",
        "hostname": hostname(a),
        "job_id": f"job-{(a + agents * c):06d}",
        "level": n % 5,
        "log_file": "",
        "max_level": 5,
        "mode": "fs",
        "path_to_backup": "/srv/data",
        "restart_always_level": "",
        "storage": "swift",
        "time_stamp": 1_700_000_000 + b,
        "vol_snap_path": "/srv/data",
    }


class _Capture:
    """A catalog that keeps what the service would store (to check the bulk load)."""

    def __init__(self) -> None:
        self.docs: list[tuple[str, str, dict]] = []

    def create(self, project: str, kind: str, doc_id: str, doc: dict) -> None:
        self.docs.append((kind, doc_id, doc))

    def get(self, *_a):
        from stowkit.corelib.errors import NotFound

        raise NotFound("none")


def stowkit_rows(jobs: int, backups: int, agents: int, check: int = 200):
    """(kind, doc_id, body, terms) of every document, as the catalog stores them."""
    from stowkit.corelib.catalogapi.service import CatalogService, Identity, backup_id
    from stowkit.plugins.sql.catalog import _encode
    from stowkit.plugins.sql.terms import terms_of

    capture = _Capture()
    service = CatalogService(capture)
    who = Identity(PROJECT, USER)
    for j in range(jobs):  # jobs through the service itself: schema, defaults
        service.create(who, "jobs", job_body(j, agents))
    for kind, doc_id, doc in capture.docs:
        yield kind, doc_id, _encode(doc), terms_of(doc)
    capture.docs.clear()
    sample = set(random.Random(1).sample(range(backups), min(check, backups)))
    for b in range(backups):
        meta = backup_meta(b, agents)
        doc = {
            "backup_id": backup_id(meta),
            "project_id": PROJECT,
            "user_id": USER,
            "status": "available",
            "backup_metadata": meta,
        }
        body = _encode(doc)
        if b in sample:  # the service's own document, byte for byte
            service.create(who, "backups", dict(meta))
            kind, doc_id, served = capture.docs.pop()
            if (doc_id, _encode(served)) != (doc["backup_id"], body):
                raise RuntimeError(f"bulk backup {b} differs from what the API stores")
        yield "backups", doc["backup_id"], body, terms_of(doc)


# -- stowkit on PostgreSQL ----------------------------------------------------------------
def scratch_database(url: str) -> tuple[str, str]:
    import psycopg

    name = f"stowkit_scale_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return name, url.rsplit("/", 1)[0] + f"/{name}"


def drop_database(url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def stowkit_conf(work: pathlib.Path, db_url: str, pool_size: int | None) -> pathlib.Path:
    conf = work / "stowkit.conf"
    pool = f"pool_size = {pool_size}\n" if pool_size else ""
    conf.write_text(
        f"[DEFAULT]\nstate_dir = {work / 'state'}\n"
        f"[catalog_sql]\nconnection = {db_url}\n{pool}"
        "[catalog_api]\nauto_sync = false\n"
    )
    return conf


def bulk_load(db_url: str, jobs: int, backups: int, agents: int) -> float:
    """COPY every document into the migrated table; returns the seconds it took."""
    import psycopg

    t0 = time.monotonic()
    with psycopg.connect(db_url) as conn:
        # The secondary indexes, as the migrations made them: dropped for the
        # load, re-created after from their own definitions.
        defs = conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'catalog_documents'"
            " AND indexname NOT IN (SELECT conname FROM pg_constraint)"
        ).fetchall()
        for name, _ in defs:
            conn.execute(f"DROP INDEX {name}")
        now = time.time()
        with conn.cursor().copy(
            "COPY catalog_documents (project_id, kind, doc_id, version, created_at, updated_at,"
            " body, terms) FROM STDIN"
        ) as copy:
            for kind, doc_id, body, terms in stowkit_rows(jobs, backups, agents):
                copy.write_row((PROJECT, kind, doc_id, 1, now, now, body, terms))
        conn.commit()
        conn.autocommit = True
        conn.execute("SET maintenance_work_mem = '256MB'")
        for _, definition in defs:
            conn.execute(definition)
        conn.execute("VACUUM ANALYZE catalog_documents")
    return time.monotonic() - t0


def start_stowkit(work: pathlib.Path, conf: pathlib.Path, port: int, workers: int):
    log = work / "stowkit.log"
    cmd = [*figures.stowkit_command(), "--config-file", str(conf), "catalog", "serve",
           "--no-auth", "--port", str(port), "--workers", str(workers)]  # fmt: skip
    proc = subprocess.Popen(
        cmd, stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}/", proc, log)
    except BaseException:
        stop(proc)
        raise
    return proc


# -- freezer-api on SQLite ----------------------------------------------------------------
FREEZER_LOADER = """
import json, sys, time
from oslo_config import cfg
from freezer_api.common import config
from freezer_api.db import manager

config.register_db_drivers_opt()
cfg.CONF(args=["--config-file", sys.argv[1]], project="freezer-api")
driver = manager.get_db_driver(cfg.CONF.storage.driver, backend=cfg.CONF.storage.backend)
from freezer_api.common.elasticv2_utils import BackupMetadataDoc
from freezer_api.db.sqlalchemy import api, models

project, user = sys.argv[2], sys.argv[3]
clients, jobs, backups = (json.loads(line) for line in sys.stdin)
for c in clients:
    api.add_client(user, c, project_id=project)
for j in jobs:
    api.add_job(user, j, project_id=project)
# backups as add_backup stores them, in batches (add_backup commits one at a time)
rows = []
def flush():
    with api.session_for_write() as session:
        session.execute(models.Backup.__table__.insert(), rows)
    rows.clear()
for meta in backups:
    doc = BackupMetadataDoc(project, user, meta)
    assert doc.is_valid()
    ser = doc.serialize()
    rows.append({"id": doc.backup_id, "project_id": project, "user_id": user,
                 "job_id": ser["backup_metadata"].get("job_id"),
                 "status": ser.get("status", "available"),
                 "backup_metadata": json.dumps(ser["backup_metadata"]),
                 "deleted": False})
    if len(rows) >= 5000:
        flush()
if rows:
    flush()
print("loaded")
"""


def load_freezer_api(work: pathlib.Path, venv: pathlib.Path, jobs: int, backups: int,
                     agents: int) -> float:  # fmt: skip
    conf = work / "freezer-api" / "freezer-api.conf"
    clients = [{"client_id": client_id(a), "hostname": hostname(a)} for a in range(agents)]
    stdin = "\n".join(
        json.dumps(x)
        for x in (
            clients,
            [job_body(j, agents) for j in range(jobs)],
            [backup_meta(b, agents) for b in range(backups)],
        )
    )
    t0 = time.monotonic()
    subprocess.run(
        [str(venv / "bin" / "python"), "-c", FREEZER_LOADER, str(conf), PROJECT, USER],
        input=stdin.encode(),
        check=True,
        capture_output=True,
        env=dict(os.environ, PYTHONPATH=str(work / "freezer-api")),
        timeout=3600,
    )
    return time.monotonic() - t0


# -- the client ---------------------------------------------------------------------------
def _request(conn_box: list, port: int, path: str, body: bytes) -> tuple[float, int, bytes]:
    headers = {"Content-Type": "application/json", "Accept": "application/json",
               "X-User-Id": USER}  # fmt: skip
    t0 = time.perf_counter()
    try:
        if conn_box[0] is None:
            conn_box[0] = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
        conn_box[0].request("GET", path, body=body, headers=headers)
        resp = conn_box[0].getresponse()
        data = resp.read()
        if resp.will_close:
            conn_box[0].close()
            conn_box[0] = None
        return time.perf_counter() - t0, resp.status, data
    except (OSError, http.client.HTTPException):
        if conn_box[0] is not None:
            conn_box[0].close()
        conn_box[0] = None
        return max(time.perf_counter() - t0, TIMEOUT), 0, b""


def _count(data: bytes, kind: str) -> int:
    try:
        return len(json.loads(data)[kind])
    except (ValueError, KeyError, TypeError):
        return -1


def _agent(port, cid, want, interval, start, end, out, errors):
    conn = [None]
    path = f"/v2/{PROJECT}/jobs?limit=1000"
    body = json.dumps(
        {"match": [{"client_id": cid}], "match_not": [{"status": "completed"}]}
    ).encode()
    nxt = start + random.random() * interval
    while True:
        if interval:
            delay = nxt - time.time()
            if delay > 0:
                time.sleep(delay)
            while nxt <= time.time():  # a late poll is not made up for: agents sleep
                nxt += interval
        if time.time() >= end:
            break
        lat, status, data = _request(conn, port, path, body)
        out.append(lat)
        if status == 0:
            errors.append(TIMED_OUT)
        elif status != 200 or _count(data, "jobs") != want:
            errors.append(f"poll {cid}: status {status}, {_count(data, 'jobs')} jobs, want {want}")
    if conn[0] is not None:
        conn[0].close()


def _searcher(port, agents, interval, start, end, out, errors, seed):
    rnd = random.Random(seed)
    conn = [None]
    path = f"/v2/{PROJECT}/backups?limit=100"
    nxt = start + rnd.random() * interval
    while True:
        delay = nxt - time.time()
        if delay > 0:
            time.sleep(delay)
        while nxt <= time.time():
            nxt += interval
        if time.time() >= end:
            break
        a, c = rnd.randrange(agents), rnd.randrange(CONTAINERS)
        body = json.dumps({"match": [{"container": container(c)}, {"hostname": hostname(a)}]})
        lat, status, data = _request(conn, port, path, body.encode())
        out.append(lat)
        if status == 0:
            errors.append(TIMED_OUT)
        elif status != 200 or _count(data, "backups") != 100:
            errors.append(f"search: status {status}, {_count(data, 'backups')} backups, want 100")
    if conn[0] is not None:
        conn[0].close()


def _client_proc(args):
    port, cids, want, interval, searchers, search_interval, agents, start, end, seed = args
    polls, searches, errors = [], [], []
    threads = [
        threading.Thread(
            target=_agent, args=(port, c, want[c], interval, start, end, polls, errors)
        )  # fmt: skip
        for c in cids
    ] + [
        threading.Thread(
            target=_searcher,
            args=(port, agents, search_interval, start, end, searches, errors, seed + i),
        )  # fmt: skip
        for i in range(searchers)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wrong = [e for e in errors if e != TIMED_OUT]
    return polls, searches, wrong[:5], len(wrong), len(errors) - len(wrong)


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    out = {}
    for pid in pids:
        try:
            fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[pid] = (int(fields[11]) + int(fields[12])) / HZ  # utime, stime
    return out


def group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid:
                pids.append(int(entry.name))
    return pids


def backend_pids(admin_url: str, dbname: str | None) -> list[int]:
    if dbname is None:
        return []
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s", (dbname,)
        ).fetchall()
    return [r[0] for r in rows]


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))] * 1000


def warm_up(port: int, agents: int, want: dict[str, int], n: int = 20) -> float:
    """A few polls and searches first: each server process compiles its statements once.

    Returns the median poll latency (ms) of these, on an otherwise idle server."""
    box: list = [None]
    idle = []
    for i in range(n):
        cid = client_id(i % agents)
        poll = {"match": [{"client_id": cid}], "match_not": [{"status": "completed"}]}
        search = {
            "match": [{"container": container(i % CONTAINERS)}, {"hostname": hostname(i % agents)}]
        }
        for path, body in ((f"/v2/{PROJECT}/jobs?limit=1000", poll),
                           (f"/v2/{PROJECT}/backups?limit=100", search)):  # fmt: skip
            box[0] = None  # a new connection each time: reach every server process
            lat, _, _ = _request(box, port, path, json.dumps(body).encode())
            if "jobs" in path:
                idle.append(lat)
    return pct(idle, 0.5)


def load_phase(port, agents, jobs, interval, duration, search_rate, server_pgid,
               admin_url=None, dbname=None, warm=20) -> dict:  # fmt: skip
    want = active_jobs(agents, jobs)
    cids = list(want)
    procs = min(CLIENT_PROCS, agents)
    searchers = max(1, round(search_rate)) if search_rate else 0
    search_interval = searchers / search_rate if search_rate else 0
    idle = warm_up(port, agents, want, warm)
    start = time.time() + 2.0  # every client process ready before the first request
    end = start + duration
    jobs_args = [
        (port, cids[i::procs], want, interval, searchers // procs + (i < searchers % procs),
         search_interval, agents, start, end, 1000 * i)
        for i in range(procs)
    ]  # fmt: skip
    with multiprocessing.Pool(procs) as pool:
        pending = pool.map_async(_client_proc, jobs_args)
        time.sleep(max(0.0, start - time.time()))
        server0 = cpu_seconds(group_pids(server_pgid))
        pg0 = cpu_seconds(backend_pids(admin_url, dbname))
        t0 = time.monotonic()
        time.sleep(max(0.0, end - time.time()))
        wall = time.monotonic() - t0
        server1 = cpu_seconds(group_pids(server_pgid))
        pg1 = cpu_seconds(backend_pids(admin_url, dbname))
        results = pending.get(timeout=duration + 10 * TIMEOUT)
    polls = [x for r in results for x in r[0]]
    searches = [x for r in results for x in r[1]]
    errors = [e for r in results for e in r[2]]
    n_errors = sum(r[3] for r in results)
    n_late = sum(r[4] for r in results)

    def used(before, after):
        return sum(after[p] - before.get(p, 0.0) for p in after) / wall * 100

    return {
        "polls": len(polls),
        "searches": len(searches),
        "poll_p50": pct(polls, 0.5),
        "poll_p99": pct(polls, 0.99),
        "search_p50": pct(searches, 0.5),
        "search_p99": pct(searches, 0.99),
        "rps": (len(polls) + len(searches) - n_late) / duration,
        "answered": 100 * (1 - n_late / max(1, len(polls) + len(searches))),
        "idle_poll": idle,
        "server_cpu": used(server0, server1),
        "pg_cpu": used(pg0, pg1) if dbname else None,
        "errors": errors,
        "n_errors": n_errors,
    }


# -- the run ------------------------------------------------------------------------------
def run_stowkit(args, res, work, table) -> None:
    pg = figures.service("postgres")
    dbname, db_url = scratch_database(pg["url"])
    try:
        conf = stowkit_conf(work, db_url, args.pool_size)
        subprocess.run([*figures.stowkit_command(), "--config-file", str(conf), "catalog",
                        "db-sync"], check=True, capture_output=True, timeout=300)  # fmt: skip
        print(f"loading {args.jobs} jobs and {args.backups} backups into PostgreSQL ...",
              flush=True)  # fmt: skip
        took = bulk_load(db_url, args.jobs, args.backups, args.agents)
        print(f"loaded in {took:.0f} s", flush=True)
        port = free_port()
        proc = start_stowkit(work, conf, port, args.workers)
        try:
            row = load_phase(port, args.agents, args.jobs, args.interval, args.duration,
                             args.search_rate, proc.pid, pg["url"], dbname)  # fmt: skip
            if args.flat_out:
                flat = load_phase(port, args.agents, args.jobs, 0, args.flat_out, 0, proc.pid,
                                  pg["url"], dbname)  # fmt: skip
                row["capacity"] = flat["polls"] / args.flat_out
                row["n_errors"] += flat["n_errors"]
                row["errors"] += flat["errors"]
        finally:
            stop(proc)
        table["stowkit"] = row
        if row["n_errors"]:
            raise RuntimeError(f"{row['n_errors']} wrong answers, e.g. {row['errors'][:3]}")
    finally:
        drop_database(pg["url"], dbname)


def run_freezer(args, res, work, table) -> None:
    venv = ensure_freezer_api(args.freezer_venv)
    port = free_port()
    proc = start_freezer_api(work, port, venv)
    try:
        print(f"loading {args.freezer_jobs} jobs and {args.freezer_backups} backups into"
              " freezer-api (SQLite) ...", flush=True)  # fmt: skip
        took = load_freezer_api(work, venv, args.freezer_jobs, args.freezer_backups, args.agents)
        print(f"loaded in {took:.0f} s", flush=True)
        # one warm-up request of each kind: freezer-api takes seconds for each
        row = load_phase(port, args.agents, args.freezer_jobs, args.interval, args.duration,
                         args.search_rate, proc.pid, warm=1)  # fmt: skip
    finally:
        stop(proc)
    table["freezer-api"] = row
    if row["n_errors"]:
        raise RuntimeError(f"{row['n_errors']} wrong answers, e.g. {row['errors'][:3]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--backups", type=int, default=1_000_000)
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--interval", type=float, default=5.0, help="s between polls")
    parser.add_argument("--duration", type=float, default=60.0, help="s of the timed phase")
    parser.add_argument("--search-rate", type=float, default=5.0, help="backup searches/s")
    parser.add_argument("--flat-out", type=float, default=15.0, help="s of back-to-back polls")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--pool-size", type=int, help="[catalog_sql] pool_size (default: its)")
    parser.add_argument("--freezer-jobs", type=int, default=10_000)
    parser.add_argument("--freezer-backups", type=int, default=100_000)
    parser.add_argument("--only", choices=["stowkit", "freezer-api"])
    parser.add_argument(
        "--freezer-venv", type=pathlib.Path, default=REPO / ".stack" / "venvs" / "freezer-api"
    )
    figures.add_arguments(parser, "catalog_scale")
    args = parser.parse_args()
    if args.backups < args.agents * CONTAINERS * 100 or args.jobs < args.agents:
        parser.error("need --backups >= agents*1000 and --jobs >= agents (100 per search)")
    if args.freezer_backups < args.agents * CONTAINERS * 100 or args.freezer_jobs < args.agents:
        parser.error("need --freezer-backups >= agents*1000 and --freezer-jobs >= agents")
    res = figures.Results("catalog_scale")
    s_fig = {
        "poll_p99": res.declare("stowkit: poll p99", "ms", 20.0, "<="),
        "search_p99": res.declare("stowkit: backup match search p99", "ms", 20.0, "<="),
        "poll_p50": res.declare("stowkit: poll p50", "ms"),
        "search_p50": res.declare("stowkit: backup match search p50", "ms"),
        "rps": res.declare("stowkit: requests/s served", "req/s"),
        "idle_poll": res.declare("stowkit: poll alone, idle server", "ms"),
        "server_cpu": res.declare("stowkit: server CPU", "%"),
        "pg_cpu": res.declare("stowkit: PostgreSQL backends CPU", "%"),
        "capacity": res.declare("stowkit: polls/s, agents flat out", "req/s"),
    }
    fsize = f"SQLite, {args.freezer_jobs} jobs / {args.freezer_backups} backups"
    f_fig = {
        "poll_p99": res.declare(f"freezer-api ({fsize}): poll p99", "ms"),
        "search_p99": res.declare(f"freezer-api ({fsize}): backup match search p99", "ms"),
        "rps": res.declare(f"freezer-api ({fsize}): requests/s served", "req/s"),
        "answered": res.declare(f"freezer-api ({fsize}): answered within 60 s", "%"),
        "idle_poll": res.declare(f"freezer-api ({fsize}): poll alone, idle server", "ms"),
        "server_cpu": res.declare(f"freezer-api ({fsize}): server CPU", "%"),
    }
    ratio = res.declare("poll p99 freezer-api / stowkit")
    if not args.flat_out:
        res.skip(s_fig["capacity"], "--flat-out 0")
    work = pathlib.Path(tempfile.mkdtemp(prefix="stowkit-bench-scale-"))
    table: dict[str, dict] = {}
    try:
        if args.only != "freezer-api":
            with res.part("stowkit on PostgreSQL", list(s_fig.values()) + [ratio]):
                run_stowkit(args, res, work, table)
        else:
            for f in [*s_fig.values(), ratio]:
                res.skip(f, "--only freezer-api")
        if args.only != "stowkit":
            with res.part("freezer-api 19", list(f_fig.values()) + [ratio]):
                run_freezer(args, res, work, table)
        else:
            for f in [*f_fig.values(), ratio]:
                res.skip(f, "--only stowkit")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"\ncatalog at scale: {args.agents} agents polling every {args.interval:g} s,"
        f" {args.search_rate:g} backup searches/s, {args.duration:g} s; {os.cpu_count()} CPUs"
    )
    print(f"stowkit: PostgreSQL, {args.jobs} jobs, {args.backups} backups,"
          f" {args.workers} server processes; freezer-api: {fsize}")  # fmt: skip
    head = ("server", "polls", "searches", "poll p50", "poll p99", "search p50", "search p99",
            "req/s", "server CPU %", "PG CPU %")  # fmt: skip
    print(" | ".join(head))
    for name, r in table.items():
        cells = [name, str(r["polls"]), str(r["searches"])] + [
            "-" if r.get(k) is None else f"{r[k]:.1f}"
            for k in (
                "poll_p50",
                "poll_p99",
                "search_p50",
                "search_p99",
                "rps",
                "server_cpu",
                "pg_cpu",
            )  # fmt: skip
        ]
        print(" | ".join(cells))
    for key, fig in s_fig.items():
        if key in table.get("stowkit", {}):
            res.set(fig, table["stowkit"][key], "not measured")
    for key, fig in f_fig.items():
        if key in table.get("freezer-api", {}):
            res.set(fig, table["freezer-api"][key], "not measured")
    s, f = table.get("stowkit"), table.get("freezer-api")
    if args.only is None:
        res.ratio(ratio, f and f["poll_p99"], s and s["poll_p99"], "a server not measured")
    return res.finish(args)


if __name__ == "__main__":
    sys.exit(main())

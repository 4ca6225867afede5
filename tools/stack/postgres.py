"""A PostgreSQL cluster of our own, run as the ``postgres`` user on a free port.

The cluster is made once (initdb) and kept between runs; durability is switched
off because it is a test database.  The data directory must be reachable by the
postgres user: when the stack dir sits under a directory it cannot enter (a clone
in /root, say), the cluster goes to /var/lib/postgresql/stowkit-HASH instead.
"""

from __future__ import annotations

import glob
import hashlib
import os
import pathlib
import shutil

from tools.stack.base import Context, StackError, pid_alive, tail

NAME = "postgres"
REQUIRES: list[str] = []
USER = "postgres"


def _bindir() -> pathlib.Path:
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4])
    )
    if not found:
        raise StackError("PostgreSQL server binaries not found (apt-get install postgresql)")
    return pathlib.Path(found[-1]).parent


def _as_postgres(ctx: Context, argv: list, **kw):
    return ctx.run(["runuser", "-u", USER, "--", *argv], **kw)


def _home(ctx: Context) -> pathlib.Path:
    d = ctx.service_dir(NAME)
    shutil.chown(d, USER, USER)
    if _as_postgres(ctx, ["test", "-w", d], check=False).returncode == 0:
        return d
    alt = pathlib.Path("/var/lib/postgresql") / f"stowkit-{hashlib.sha1(bytes(d)).hexdigest()[:10]}"
    alt.mkdir(parents=True, exist_ok=True)
    shutil.chown(alt, USER, USER)
    return alt


def install(ctx: Context) -> None:
    _bindir()


def start(ctx: Context) -> dict:
    bindir, home = _bindir(), _home(ctx)
    data = home / "data"
    if not (data / "PG_VERSION").exists():
        if data.exists():
            shutil.rmtree(data)  # a half-made cluster from an interrupted initdb
        _as_postgres(ctx, [bindir / "initdb", "-D", data, "-A", "trust", "-U", USER, "--no-sync"])
    port = ctx.free_port()
    log = ctx.log(NAME)
    log.touch()
    shutil.chown(log, USER, USER)
    options = " ".join(
        [
            f"-p {port}",
            f"-k {home}",
            "-c listen_addresses=127.0.0.1",
            "-c fsync=off",
            "-c synchronous_commit=off",
            "-c full_page_writes=off",
            "-c max_connections=200",
        ]
    )
    proc = _as_postgres(
        ctx,
        [bindir / "pg_ctl", "-D", data, "-o", options, "-l", log, "-w", "-t", "60", "start"],
        check=False,
        timeout=90,
    )
    if proc.returncode != 0:
        raise StackError(f"pg_ctl start failed: {proc.stdout}{proc.stderr}\n{tail(log)}")
    pid = int((data / "postmaster.pid").read_text().split()[0])
    return {
        "pids": [pid],
        "host": "127.0.0.1",
        "port": port,
        "user": USER,
        "url": f"postgresql://{USER}@127.0.0.1:{port}/postgres",
        "sqlalchemy_url": f"postgresql+psycopg://{USER}@127.0.0.1:{port}/postgres",
        "socket_dir": str(home),
        "data_dir": str(data),
        "bindir": str(bindir),
    }


def stop(ctx: Context, record: dict) -> None:
    data = record.get("data_dir")
    pids = record.get("pids", [])
    started = record.get("started", {})
    if data and any(pid_alive(p, started.get(str(p))) for p in pids):
        _as_postgres(
            ctx,
            [pathlib.Path(record["bindir"]) / "pg_ctl", "-D", data, "-m", "fast", "-w", "stop"],
            check=False,
            timeout=60,
        )
    ctx.kill(pids, started)
    if data and not any(pid_alive(p) for p in pids):
        # A killed postmaster leaves its pid file; the next start must not trip on it.
        pidfile = pathlib.Path(data) / "postmaster.pid"
        if (
            pidfile.exists()
            and os.path.getsize(pidfile)
            and not pid_alive(int(pidfile.read_text().split()[0]))
        ):
            pidfile.unlink()

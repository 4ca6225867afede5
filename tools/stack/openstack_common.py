"""What keystone.py and glance.py share: the one OpenStack venv, ports, catalog edits.

Keystone and Glance run from a single venv (``DIR/venvs/openstack``), apart from
stowkit's own environment.  Catalog edits (projects, users, endpoints) are made by
this very file run as a script by the venv's python, because python-keystoneclient
lives there and one process doing every edit costs about a second, where the
``openstack`` CLI costs about three seconds per call.  So the module level imports
only the standard library.
"""

from __future__ import annotations

import glob
import json
import pathlib
import sys
import time
from typing import Any

VENV = "openstack"
# Ranges that were run together here; gunicorn 27 is the first with --no-control-socket,
# which the gunicorn command lines below pass.
PACKAGES = [
    "keystone>=30,<31",
    "glance>=33,<34",
    "python-glanceclient>=4",
    "python-keystoneclient>=5",
    "keystoneauth1>=5",
    "gunicorn>=27,<28",
]

# gunicorn options shared by every OpenStack server of the harness: one worker keeps
# memory modest; a short graceful timeout keeps `stop` quick.
GUNICORN_OPTS = ["--no-control-socket", "--workers", "1", "--graceful-timeout", "5"]


class Phases:
    """Wall time of each start phase, printed as one line (slow starts say where)."""

    def __init__(self, name: str):
        self.name, self.parts, self.last = name, [], time.monotonic()

    def done(self, phase: str) -> None:
        now = time.monotonic()
        self.parts.append(f"{phase} {now - self.last:.1f}s")
        self.last = now

    def report(self) -> None:
        print(f"{self.name}: " + ", ".join(self.parts), file=sys.stderr, flush=True)


# Prepended to the wsgi entry modules of Keystone and Glance.  Several request threads
# writing one sqlite file fail with "database is locked": oslo.db opens transactions
# with a deferred BEGIN, and two of them that both upgrade to writing cannot both wait.
# Turning that BEGIN into BEGIN IMMEDIATE makes them queue (busy_timeout) instead,
# which a test stack can afford.
SQLITE_SERIAL = """
import sqlite3

from sqlalchemy import event
from sqlalchemy.engine import Engine


@event.listens_for(Engine, "connect")
def _sqlite_busy_timeout(dbapi_conn, _record):
    if isinstance(dbapi_conn, sqlite3.Connection):
        dbapi_conn.execute("PRAGMA busy_timeout = 60000")


@event.listens_for(Engine, "before_cursor_execute", retval=True)
def _sqlite_begin_immediate(conn, _cursor, statement, parameters, _context, _many):
    if conn.dialect.name == "sqlite" and statement.strip().upper() == "BEGIN":
        statement = "BEGIN IMMEDIATE"
    return statement, parameters
"""


def wsgi_shim(path: pathlib.Path, doc: str, body: str) -> None:
    """Write a gunicorn entry module: the sqlite fix, then ``body`` (which imports the app)."""
    path.write_text(f'"""{doc}"""\n{SQLITE_SERIAL}\n{body}')


def venv(ctx) -> pathlib.Path:
    return ctx.venv(VENV, PACKAGES)


def package_version(venv_path: pathlib.Path, dist: str) -> str:
    """Installed version of ``dist`` in the venv, from its dist-info directory name.

    Used to key cached template databases, so an upgrade never reuses an old schema.
    """
    pattern = str(venv_path / "lib" / "python3*" / "site-packages" / f"{dist}-*.dist-info")
    found = sorted(glob.glob(pattern))
    if not found:
        return "unknown"
    return pathlib.Path(found[-1]).name[len(dist) + 1 : -len(".dist-info")]


def sticky_port(ctx, key: str) -> int:
    """A free port, the same as last time for ``key`` when that one is still free.

    Keeping ports across restarts keeps URLs that other services or a person copied
    valid (Glance's token checks point at Keystone's URL, for example).
    """
    # Imported here: this file also runs as a script in the OpenStack venv,
    # where the harness package is not importable.
    from tools.stack.base import port_free

    path = ctx.dir / "ports.json"
    with ctx.lock("openstack-ports"):
        try:
            ports = json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            ports = {}
        port = ports.get(key)
        taken = {p for k, p in ports.items() if k != key}
        if not isinstance(port, int) or not port_free(port):
            port = ctx.free_port()
            while port in taken:
                port = ctx.free_port()
        ports[key] = port
        path.write_text(json.dumps(ports, indent=2, sort_keys=True) + "\n")
    return port


def write_ini(path: pathlib.Path, sections: dict[str, dict[str, Any]]) -> None:
    lines = []
    for section, options in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {value}" for key, value in options.items())
        lines.append("")
    path.write_text("\n".join(lines))


def edit_catalog(ctx, venv_path: pathlib.Path, requests: list[dict[str, Any]]) -> list[dict]:
    """Apply catalog requests (see ``_apply``) with the venv's keystoneclient."""
    proc = ctx.run(
        [venv_path / "bin" / "python", pathlib.Path(__file__).resolve()],
        input=json.dumps(requests),
        timeout=180,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- run by the venv's python -------------------------------------------------------


def _apply(request: dict[str, Any]) -> dict[str, Any]:
    """One Keystone's edits; idempotent, so a restart may repeat them.

    request = {"auth_url", "admin": creds, "projects": [name], "users": [{"name",
    "password", "project", "role"}], "services": {type: name}, "endpoints": {type:
    {region: url}}}; existing endpoints of that type in those regions are replaced.
    """
    from keystoneauth1 import session
    from keystoneauth1.identity import v3
    from keystoneclient.v3 import client

    admin = request["admin"]
    auth = v3.Password(
        auth_url=request["auth_url"],
        username=admin["username"],
        password=admin["password"],
        project_name=admin["project_name"],
        user_domain_name=admin["user_domain_name"],
        project_domain_name=admin["project_domain_name"],
    )
    ks = client.Client(session=session.Session(auth=auth), interface="public")
    domain = ks.domains.find(name="Default")
    roles = {r.name: r for r in ks.roles.list()}

    projects = {p.name: p for p in ks.projects.list(domain=domain)}
    for name in request.get("projects", []):
        if name not in projects:
            projects[name] = ks.projects.create(name=name, domain=domain)

    users = {u.name: u for u in ks.users.list(domain=domain)}
    for spec in request.get("users", []):
        project = projects[spec["project"]]
        user = users.get(spec["name"])
        if user is None:
            user = ks.users.create(
                name=spec["name"],
                password=spec["password"],
                domain=domain,
                default_project=project,
            )
        else:
            user = ks.users.update(user, password=spec["password"], default_project=project)
        users[spec["name"]] = user
        ks.roles.grant(roles[spec["role"]], user=user, project=project)

    services = {s.type: s for s in ks.services.list()}
    for stype, name in request.get("services", {}).items():
        if stype not in services:
            services[stype] = ks.services.create(name=name, type=stype)

    regions = {r.id for r in ks.regions.list()}
    for stype, urls in request.get("endpoints", {}).items():
        service = services[stype]
        for region, url in urls.items():
            if region not in regions:
                ks.regions.create(id=region)
                regions.add(region)
            for old in ks.endpoints.list(service=service, region_id=region):
                ks.endpoints.delete(old)
            for interface in ("public", "internal", "admin"):
                ks.endpoints.create(service=service, url=url, interface=interface, region=region)

    return {
        "projects": {name: p.id for name, p in projects.items()},
        "users": {name: u.id for name, u in users.items()},
    }


if __name__ == "__main__":
    # Last stdout line is the JSON answer; library chatter goes to stderr.
    print(json.dumps([_apply(req) for req in json.loads(sys.stdin.read())]))

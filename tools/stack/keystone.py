"""Two independent Keystones (identity v3) on 127.0.0.1, served by gunicorn.

The primary Keystone fronts three Glance regions; the ``second`` one fronts one more,
with other passwords, so cross-credential image syncs are tested for real.  Each
Keystone gets fresh state on every start (sqlite, fernet keys), a ``service``
project with a ``glance`` user holding the admin role (Glance's token checks), and
two non-admin users in their own projects (``demo`` and ``demo2``) for isolation
tests.  Glance adds its endpoints to the catalogs when it starts.

Setting a Keystone up (bootstrap, users) costs seconds of imports and requests, so
the database as it stands right after set-up is kept in ``snapshots/`` and copied
on the next start when nothing it depends on changed (Keystone version, this code,
the port).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import pathlib
import shutil
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tools.stack import openstack_common as common

NAME = "keystone"
REQUIRES: list[str] = []

# instance name -> (the region of its own identity endpoint, password suffix)
INSTANCES = {"primary": "RegionOne", "second": "RegionOther"}

# record key -> (user name, project name, role)
USERS = {
    "admin": ("admin", "admin", "admin"),
    "service": ("glance", "service", "admin"),
    "member": ("demo", "demo", "member"),
    "other": ("demo2", "demo2", "member"),
}

# Keystone's option parser reads sys.argv and rejects gunicorn's own arguments.
SHIM = """
import sys

sys.argv = sys.argv[:1]
from keystone.wsgi.api import application  # noqa: E402,F401
"""


def password(instance: str, user: str) -> str:
    # Distinct per Keystone, so using one Keystone's credentials on the other fails.
    return f"{user}-{instance}-pass"


def install(ctx) -> None:
    common.venv(ctx)


def _fernet_repo(path: pathlib.Path) -> None:
    """What ``keystone-manage fernet_setup`` writes: a staged key 0 and a primary key 1.

    Written here because each keystone-manage run costs seconds of imports.
    """
    path.mkdir(mode=0o700)
    for index in ("0", "1"):
        key = path / index
        key.write_bytes(base64.urlsafe_b64encode(os.urandom(32)))
        key.chmod(0o600)


def _conf(path: pathlib.Path, home: pathlib.Path, db: pathlib.Path) -> None:
    common.write_ini(
        path,
        {
            "DEFAULT": {"use_stderr": "true"},
            "database": {"connection": f"sqlite:///{db}"},
            "token": {"provider": "fernet"},
            "fernet_tokens": {"key_repository": home / "fernet-keys"},
            "fernet_receipts": {"key_repository": home / "fernet-receipts"},
            "credential": {"key_repository": home / "credential-keys"},
            # Must be set before bootstrap hashes the admin password: logins ~4x faster.
            "identity": {"password_hash_rounds": 4},
            # Without a cache every token check is ~60 sqlite queries (0.3 s on a busy
            # machine).  One worker process, so an in-process cache stays coherent.
            "cache": {"enabled": "true", "backend": "dogpile.cache.memory"},
        },
    )


def _template_db(ctx, venv: pathlib.Path, top: pathlib.Path) -> pathlib.Path:
    """An empty, migrated database, made once per Keystone version and then copied."""
    template = top / f"template-{common.package_version(venv, 'keystone')}.db"
    if template.exists():
        return template
    work = top / "template-work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    _conf(work / "keystone.conf", work, work / "keystone.db")
    ctx.run([venv / "bin" / "keystone-manage", "--config-file", work / "keystone.conf", "db_sync"])
    os.replace(work / "keystone.db", template)
    shutil.rmtree(work)
    return template


def _creds(instance: str, key: str, auth_url: str) -> dict[str, Any]:
    user, project, _role = USERS[key]
    return {
        "auth_url": auth_url,
        "username": user,
        "password": password(instance, user),
        "project_name": project,
        "user_domain_name": "Default",
        "project_domain_name": "Default",
    }


def _snapshot_key(venv: pathlib.Path, instance: str, port: int) -> str:
    """What a set-up database depends on: versions, this code, the instance and its URL."""
    digest = hashlib.sha256()
    for part in (common.package_version(venv, "keystone"), instance, str(port)):
        digest.update(part.encode() + b"\0")
    for source in (__file__, common.__file__):
        digest.update(pathlib.Path(source).read_bytes())
    return digest.hexdigest()[:16]


def _prepare(ctx, venv: pathlib.Path, top: pathlib.Path, template: pathlib.Path, instance: str):
    """Fresh state for one instance; returns (home, port, ids or None).

    A database saved right after an earlier set-up with the same key is reused
    (``ids`` then comes with it); otherwise the instance is bootstrapped and
    ``ids`` is None until ``start`` has created the users.
    """
    home = top / instance
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir()
    port = common.sticky_port(ctx, f"keystone-{instance}")
    url = f"http://127.0.0.1:{port}/v3"
    for repo in ("fernet-keys", "fernet-receipts", "credential-keys"):
        _fernet_repo(home / repo)
    _conf(home / "keystone.conf", home, home / "keystone.db")
    common.wsgi_shim(home / "keystone_wsgi.py", "gunicorn entry point of Keystone", SHIM)
    snapshot = top / "snapshots" / f"{instance}-{_snapshot_key(venv, instance, port)}"
    if snapshot.with_suffix(".json").exists():
        shutil.copyfile(snapshot.with_suffix(".db"), home / "keystone.db")
        return home, port, json.loads(snapshot.with_suffix(".json").read_text())
    shutil.copyfile(template, home / "keystone.db")
    ctx.run(
        [
            venv / "bin" / "keystone-manage", "--config-file", home / "keystone.conf",
            "bootstrap", "--bootstrap-password", password(instance, "admin"),
            "--bootstrap-region-id", INSTANCES[instance],
            "--bootstrap-admin-url", url,
            "--bootstrap-public-url", url,
            "--bootstrap-internal-url", url,
        ]
    )  # fmt: skip
    return home, port, None


def _save_snapshot(venv, top: pathlib.Path, instance: str, port: int, ids: dict) -> None:
    """Keep the just set-up database (sqlite backup: the server has it open)."""
    snapshots = top / "snapshots"
    snapshots.mkdir(exist_ok=True)
    for old in snapshots.glob(f"{instance}-*"):
        old.unlink()
    snapshot = snapshots / f"{instance}-{_snapshot_key(venv, instance, port)}"
    with contextlib.closing(sqlite3.connect(top / instance / "keystone.db")) as src:
        with contextlib.closing(sqlite3.connect(snapshot.with_suffix(".db"))) as dst:
            src.backup(dst)
    # The .json is written last: its presence says the snapshot is complete.
    snapshot.with_suffix(".json").write_text(json.dumps(ids))


def _users_request(instance: str, url: str) -> dict[str, Any]:
    return {
        "auth_url": url,
        "admin": _creds(instance, "admin", url),
        "projects": sorted({project for _u, project, _r in USERS.values()}),
        "users": [
            {"name": user, "password": password(instance, user), "project": project, "role": role}
            for key, (user, project, role) in USERS.items()
            if key != "admin"
        ],
    }


def start(ctx) -> dict[str, Any]:
    phases = common.Phases(NAME)
    venv = common.venv(ctx)
    top = ctx.service_dir(NAME)
    template = _template_db(ctx, venv, top)
    phases.done("schema")
    # The two bootstraps are independent: run them side by side.
    with ThreadPoolExecutor(len(INSTANCES)) as pool:
        futures = {i: pool.submit(_prepare, ctx, venv, top, template, i) for i in INSTANCES}
        prepared = {i: f.result() for i, f in futures.items()}
    phases.done("bootstrap")

    pids, urls, logs = [], {}, {}
    for instance, (home, port, _ids) in prepared.items():
        logs[instance] = ctx.log(f"keystone-{instance}")
        env = dict(os.environ, OS_KEYSTONE_CONFIG_FILES=str(home / "keystone.conf"))
        pids.append(
            ctx.spawn(
                [
                    venv / "bin" / "gunicorn", *common.GUNICORN_OPTS, "--threads", "4",
                    "--bind", f"127.0.0.1:{port}", "--pythonpath", home,
                    "keystone_wsgi:application",
                ],
                log=logs[instance],
                env=env,
                cwd=home,
            )
        )  # fmt: skip
        urls[instance] = f"http://127.0.0.1:{port}/v3"
    for instance, url in urls.items():
        ctx.wait_http(url, ok=lambda s: s == 200, timeout=120, log=logs[instance])
    phases.done("servers up")

    ids = {instance: found for instance, (_h, _p, found) in prepared.items()}
    todo = [instance for instance, found in ids.items() if found is None]
    if todo:
        answers = common.edit_catalog(ctx, venv, [_users_request(i, urls[i]) for i in todo])
        for instance, answer in zip(todo, answers, strict=True):
            ids[instance] = answer
            _save_snapshot(venv, top, instance, prepared[instance][1], answer)
    phases.done("users")
    phases.report()

    sections = {}
    for instance, url in urls.items():
        section: dict[str, Any] = {"auth_url": url, "region": INSTANCES[instance]}
        for key, (user, project, _role) in USERS.items():
            creds = _creds(instance, key, url)
            creds["project_id"] = ids[instance]["projects"][project]
            creds["user_id"] = ids[instance]["users"][user]
            section[key] = creds
        section["dir"] = str(top / instance)
        section["log"] = str(logs[instance])
        sections[instance] = section
    record = dict(sections["primary"])
    record["second"] = sections["second"]
    record["pids"] = pids
    return record


def stop(ctx, record: dict[str, Any]) -> None:
    ctx.kill(record.get("pids", []), record.get("started"))

"""Glance v2 API servers: three regions on the primary Keystone, one on the second.

Each region is its own Glance (own sqlite database, own image directory) served by
gunicorn on a loopback port, with Keystone token checks.  Ports are chosen at start
(kept across restarts when still free) and written into the Keystone catalogs as
public, internal and admin endpoints of the ``image`` service.

A test that needs a region to go away mid-operation uses ``stop_region`` and then
``start_region`` (or the ``region_stopped`` context manager); the region comes back
on the same URL with its images.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
from collections.abc import Iterator
from typing import Any

from tools.stack import base
from tools.stack import openstack_common as common

NAME = "glance"
REQUIRES = ["keystone"]

# keystone record section ("primary" is the top level) -> regions it fronts
REGIONS = {
    "primary": ["RegionOne", "RegionTwo", "RegionThree"],
    "second": ["RegionOther"],
}


def install(ctx) -> None:
    common.venv(ctx)


def _conf(home: pathlib.Path, db: pathlib.Path, keystone: dict[str, Any] | None) -> None:
    sections: dict[str, dict[str, Any]] = {
        "DEFAULT": {"enabled_backends": "fs:file", "use_stderr": "true"},
        "database": {"connection": f"sqlite:///{db}"},
        "glance_store": {"default_backend": "fs"},
        "fs": {"filesystem_store_datadir": home / "images"},
        "os_glance_staging_store": {"filesystem_store_datadir": home / "staging"},
        "os_glance_tasks_store": {"filesystem_store_datadir": home / "tasks"},
        # Tests upload arbitrary bytes whatever disk_format they claim (else HTTP 415).
        "image_format": {"require_image_format_match": "false"},
        "oslo_concurrency": {"lock_path": home / "locks"},
        "paste_deploy": {"flavor": "keystone", "config_file": home / "glance-api-paste.ini"},
    }
    if keystone is not None:
        svc = keystone["service"]
        sections["keystone_authtoken"] = {
            "www_authenticate_uri": keystone["auth_url"],
            "auth_url": keystone["auth_url"],
            "auth_type": "password",
            "username": svc["username"],
            "password": svc["password"],
            "project_name": svc["project_name"],
            "user_domain_name": svc["user_domain_name"],
            "project_domain_name": svc["project_domain_name"],
        }
    common.write_ini(home / "glance-api.conf", sections)


def _template_db(ctx, venv: pathlib.Path, top: pathlib.Path) -> pathlib.Path:
    """An empty, migrated database, made once per Glance version and then copied."""
    template = top / f"template-{common.package_version(venv, 'glance')}.db"
    if template.exists():
        return template
    work = top / "template-work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    _conf(work, work / "glance.db", None)
    conf = work / "glance-api.conf"
    ctx.run([venv / "bin" / "glance-manage", "--config-file", conf, "db_sync"])
    os.replace(work / "glance.db", template)
    shutil.rmtree(work)
    return template


def _spawn(ctx, venv: pathlib.Path, home: pathlib.Path, port: int, log: pathlib.Path) -> int:
    return ctx.spawn(
        [
            venv / "bin" / "gunicorn", *common.GUNICORN_OPTS, "--threads", "4",
            "--bind", f"127.0.0.1:{port}", "--pythonpath", home, "glance_wsgi:application",
        ],
        log=log,
        env=dict(os.environ, OS_GLANCE_CONFIG_DIR=str(home)),
        cwd=home,
    )  # fmt: skip


def _wait(ctx, url: str, log: pathlib.Path) -> None:
    # Glance answers its root with 300 Multiple Choices (the API versions).
    ctx.wait_http(url + "/", ok=lambda s: s == 300, timeout=120, log=log)


def start(ctx) -> dict[str, Any]:
    keystone = ctx.state.get("keystone")
    if keystone is None:
        raise base.StackError("glance needs keystone: python3 -m tools.stack start keystone")
    keystones = {"primary": keystone, "second": keystone["second"]}
    phases = common.Phases(NAME)
    venv = common.venv(ctx)
    top = ctx.service_dir(NAME)
    template = _template_db(ctx, venv, top)
    phases.done("schema")
    paste = venv / "etc" / "glance" / "glance-api-paste.ini"

    urls: dict[str, str] = {}
    homes: dict[str, str] = {}
    logs: dict[str, pathlib.Path] = {}
    region_pids: dict[str, int] = {}
    for section, regions in REGIONS.items():
        for region in regions:
            home = top / region
            shutil.rmtree(home, ignore_errors=True)
            for sub in ("images", "staging", "tasks", "locks"):
                (home / sub).mkdir(parents=True)
            shutil.copyfile(paste, home / "glance-api-paste.ini")
            shutil.copyfile(template, home / "glance.db")
            _conf(home, home / "glance.db", keystones[section])
            common.wsgi_shim(
                home / "glance_wsgi.py",
                "gunicorn entry point of Glance",
                "from glance.wsgi.api import application  # noqa: E402,F401\n",
            )
            port = common.sticky_port(ctx, f"glance-{region}")
            logs[region] = ctx.log(f"glance-{region}")
            region_pids[region] = _spawn(ctx, venv, home, port, logs[region])
            urls[region] = f"http://127.0.0.1:{port}"
            homes[region] = str(home)

    phases.done("spawn")
    # Register the endpoints while the servers import Glance.
    common.edit_catalog(
        ctx,
        venv,
        [
            {
                "auth_url": keystones[section]["auth_url"],
                "admin": keystones[section]["admin"],
                "services": {"image": "glance"},
                "endpoints": {"image": {region: urls[region] for region in regions}},
            }
            for section, regions in REGIONS.items()
        ],
    )
    phases.done("endpoints")
    for region, url in urls.items():
        _wait(ctx, url, logs[region])
    phases.done("servers up")
    phases.report()

    second = REGIONS["second"]
    return {
        "pids": list(region_pids.values()),
        "region_pids": region_pids,
        "auth_url": keystone["auth_url"],
        "regions": {region: urls[region] for region in REGIONS["primary"]},
        "second": {
            "auth_url": keystone["second"]["auth_url"],
            "regions": {region: urls[region] for region in second},
            "region": second[0],
            "url": urls[second[0]],
        },
        "dirs": homes,
        "logs": {region: str(log) for region, log in logs.items()},
        "stopped": [],
        # Which Keystone processes hold our endpoints: a restarted Keystone has none.
        "keystone_pids": keystone["pids"],
    }


def alive(ctx, record: dict[str, Any]) -> bool:
    """Beyond live pids: every region up, and the Keystone we registered in still there.

    A region left down by an interrupted test, or a Keystone restarted since (fresh
    catalog, no image endpoints), makes ``start glance`` start Glance afresh.
    """
    keystone = ctx.state.get("keystone")
    return (
        not record.get("stopped")
        and keystone is not None
        and keystone.get("pids") == record.get("keystone_pids")
    )


def stop(ctx, record: dict[str, Any]) -> None:
    ctx.kill(record.get("pids", []), record.get("started"))


# --- one region down and up again, for tests of partial failures ----------------------


def stop_region(region: str, ctx: base.Context | None = None) -> None:
    """Stop one region's Glance; the record keeps its URL and lists it in ``stopped``."""
    ctx = ctx or base.Context()
    with ctx.lock(f"service-{NAME}"):
        record = ctx.state.get(NAME)
        if record is None:
            raise base.StackError("glance is not running")
        if region in record["stopped"]:
            return
        pid = record["region_pids"].pop(region)
        ctx.kill([pid], record.get("started"))
        record["pids"].remove(pid)
        record["started"].pop(str(pid), None)
        record["stopped"].append(region)
        ctx.update_state(NAME, record)


def start_region(region: str, ctx: base.Context | None = None) -> None:
    """Start a region stopped by ``stop_region`` again, on the same URL with its images."""
    ctx = ctx or base.Context()
    with ctx.lock(f"service-{NAME}"):
        record = ctx.state.get(NAME)
        if record is None:
            raise base.StackError("glance is not running")
        if region not in record["stopped"]:
            return
        url = {**record["regions"], **record["second"]["regions"]}[region]
        port = int(url.rsplit(":", 1)[1])
        log = pathlib.Path(record["logs"][region])
        pid = _spawn(ctx, common.venv(ctx), pathlib.Path(record["dirs"][region]), port, log)
        try:
            _wait(ctx, url, log)
        except BaseException:
            ctx.kill([pid])
            raise
        record["region_pids"][region] = pid
        record["pids"].append(pid)
        record["started"][str(pid)] = base.proc_start_time(pid)
        record["stopped"].remove(region)
        ctx.update_state(NAME, record)


@contextlib.contextmanager
def region_stopped(region: str, ctx: base.Context | None = None) -> Iterator[None]:
    """``with region_stopped("RegionTwo"): ...`` -- down inside, back up afterwards."""
    stop_region(region, ctx)
    try:
        yield
    finally:
        start_region(region, ctx)


def purge_deleted(region: str, ctx: base.Context | None = None) -> None:
    """Forget deleted images in one region, so their ids may be used again (else 409).

    ``db purge`` first (rows that point at images), then the images themselves.
    """
    ctx = ctx or base.Context()
    record = ctx.state.get(NAME)
    if record is None:
        raise base.StackError("glance is not running")
    manage = [
        common.venv(ctx) / "bin" / "glance-manage",
        "--config-file",
        pathlib.Path(record["dirs"][region]) / "glance-api.conf",
        "db",
    ]
    ctx.run([*manage, "purge", "--age_in_days", "0", "--max_rows", "-1"])
    ctx.run([*manage, "purge_images_table", "--age_in_days", "0", "--max_rows", "-1"])

"""The catalog deployed like freezer-api: a WSGI server, Keystone's catalog, policy.

gunicorn (from the test extra, in stowkit's venv) serves
``stowkit.corelib.catalogapi.wsgi:application`` configured by
``STOWKIT_CONFIG_FILE``; ``stowkit catalog register`` puts it in the harness
Keystone as the ``backup`` service (in a region of its own, removed after),
and the unmodified ``freezer`` CLI finds it there without ``OS_BACKUP_URL``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

import pytest

from tests.commands import STOWKIT
from tests.fakes import keystone_admin
from tests.fakes.catalog import BACKUP
from tests.fakes.catalog_process import db_sync
from tests.fakes.keystone_catalog import Api, authtoken_section
from tests.fakes.net import free_port


def _os_env(user, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    env.update(
        OS_AUTH_URL=user["auth_url"],
        OS_USERNAME=user["username"],
        OS_PASSWORD=user["password"],
        OS_PROJECT_NAME=user["project_name"],
        OS_USER_DOMAIN_NAME=user["user_domain_name"],
        OS_PROJECT_DOMAIN_NAME=user["project_domain_name"],
        OS_IDENTITY_API_VERSION="3",
        **extra,
    )
    return env


@pytest.fixture(scope="module")
def keystone(service):
    return service("keystone")


APP = "stowkit.corelib.catalogapi.wsgi:application"


def gunicorn(port: int, conf) -> list[str]:
    return [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "2", APP]


def uwsgi(port: int, conf) -> list[str]:
    # Debian's uwsgi-core and uwsgi-plugin-python3 (built for Python 3.11, as the venv).
    return [
        "uwsgi",
        "--plugin",
        "python3",
        "--virtualenv",
        sys.prefix,
        "--http-socket",
        f"127.0.0.1:{port}",
        "--module",
        APP,
        "--master",
        "--processes",
        "2",
        "--lazy-apps",
        "--need-app",
        "--die-on-term",
    ]


def catalog_serve(port: int, conf) -> list[str]:
    # stowkit's own server: the same middleware pipeline as the WSGI application
    return [*STOWKIT, "--config-file", str(conf), "catalog", "serve", "--port", str(port)]


#: The WSGI servers the application is shown under: name -> argv(port, config file).
SERVERS = {"gunicorn": gunicorn, "uwsgi": uwsgi, "catalog-serve": catalog_serve}


@pytest.fixture(scope="module", params=sorted(SERVERS))
def server_url(request, keystone, tmp_path_factory):
    work = tmp_path_factory.mktemp(f"catalog-{request.param}")
    svc = keystone["service"]
    conf = work / "stowkit.conf"
    conf.write_text(
        f"""[DEFAULT]
state_dir = {work}
[catalog_api]
auth_strategy = keystone
{authtoken_section(keystone, svc)}"""
    )
    db_sync(conf)
    port = free_port()
    log = open(work / "server.log", "wb")
    proc = subprocess.Popen(
        SERVERS[request.param](port, conf),
        env={**os.environ, "STOWKIT_CONFIG_FILE": str(conf)},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(url + "/healthcheck", timeout=2)
            break
        except OSError:
            assert proc.poll() is None, (work / "server.log").read_text()
            assert time.monotonic() < deadline, f"{request.param} not ready"
            time.sleep(0.3)
    yield url
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)
    log.close()


@pytest.fixture(scope="module")
def registered(keystone, server_url):
    """``catalog register`` in a region of its own; the service, endpoints, region go after."""
    admin = keystone["admin"]
    region = f"stowkit-{uuid.uuid4().hex[:8]}"
    name = f"stowkit-test-{uuid.uuid4().hex[:8]}"
    argv = [*STOWKIT, "catalog", "register", "--url", server_url, "--region", region]
    argv += ["--name", name, "-f", "json"]
    proc = subprocess.run(argv, env=_os_env(admin), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    import json

    rows = json.loads(proc.stdout)
    assert {r["interface"] for r in rows} == {"public", "internal", "admin"}
    assert {r["change"] for r in rows} == {"created"}
    again = subprocess.run(argv, env=_os_env(admin), capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert {r["change"] for r in json.loads(again.stdout)} == {"unchanged"}
    yield region
    sess = keystone_admin.session(admin)
    ident = {"service_type": "identity", "interface": "public", "version": (3, 0)}
    service_id = rows[0]["service_id"]
    for ep in sess.get(f"/endpoints?service_id={service_id}", endpoint_filter=ident).json()[
        "endpoints"
    ]:
        sess.delete(f"/endpoints/{ep['id']}", endpoint_filter=ident)
    sess.delete(f"/services/{service_id}", endpoint_filter=ident)
    sess.delete(f"/regions/{region}", endpoint_filter=ident)


def test_healthcheck_and_request_id(server_url):
    with urllib.request.urlopen(server_url + "/healthcheck", timeout=10) as resp:
        assert resp.status == 200
        assert resp.headers["x-openstack-request-id"].startswith("req-")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(server_url + "/v2/x/backups", timeout=10)
    assert err.value.code == 401  # behind keystonemiddleware


def test_freezer_cli_finds_stowkit_in_the_keystone_catalog(service, keystone, registered):
    binary = service("freezerclient")["bin"]
    env = _os_env(keystone["member"], OS_REGION_NAME=registered)
    assert "OS_BACKUP_URL" not in env
    host = f"host-{uuid.uuid4().hex[:8]}.example.org"
    client_id = f"{keystone['member']['project_id']}_{host}"
    proc = subprocess.run(
        [binary, "client-list", "-f", "json"], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    api = Api(registered_url(keystone, registered), keystone["member"])
    assert api.call("POST", f"/v2/{api.project}/clients", {"client_id": client_id})[0] == 201
    proc = subprocess.run(
        [binary, "client-list", "-f", "json"], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert client_id in proc.stdout


def registered_url(keystone, region):
    sess = keystone_admin.session(keystone["admin"])
    return sess.get_endpoint(service_type="backup", interface="public", region_name=region)


@pytest.fixture()
def reader(keystone):
    """A user with only the reader role on the member's project, removed after."""
    admin, member = keystone["admin"], keystone["member"]
    sess = keystone_admin.session(admin)
    ident = {"service_type": "identity", "interface": "public", "version": (3, 0)}
    password = uuid.uuid4().hex
    name = f"reader-{uuid.uuid4().hex[:8]}"
    user = sess.post(
        "/users",
        json={"user": {"name": name, "password": password, "domain_id": "default"}},
        endpoint_filter=ident,
    ).json()["user"]
    role = sess.get("/roles?name=reader", endpoint_filter=ident).json()["roles"][0]
    sess.put(
        f"/projects/{member['project_id']}/users/{user['id']}/roles/{role['id']}",
        endpoint_filter=ident,
    )
    yield {**member, "username": name, "password": password, "user_id": user["id"]}
    sess.delete(f"/users/{user['id']}", endpoint_filter=ident)


def test_reader_cannot_delete(server_url, keystone, reader):
    member = Api(server_url, keystone["member"])
    status, created = member.call("POST", f"/v2/{member.project}/backups", BACKUP)
    assert status in (201, 409), created
    backup_id = "_".join(
        str(BACKUP[k]) for k in ("container", "hostname", "backup_name", "time_stamp")
    )
    backup_id += "_0"
    ro = Api(server_url, reader)
    assert ro.call("GET", f"/v2/{ro.project}/backups/{backup_id}")[0] == 200
    status, err = ro.call("DELETE", f"/v2/{ro.project}/backups/{backup_id}")
    assert status == 403 and "backups:delete" in err["description"]
    assert member.call("DELETE", f"/v2/{member.project}/backups/{backup_id}")[0] == 204

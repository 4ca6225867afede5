"""The catalog served for real behind the harness Keystone, and its clients.

``catalog_server`` runs ``stowkit catalog serve`` with keystonemiddleware; ``Api``
speaks raw HTTP to it with a real token; ``freezer_runner`` drives it with the
unmodified ``freezer`` CLI of the harness.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import signal
import subprocess
import time
import urllib.error
import urllib.request
from typing import Any

from tests.commands import STOWKIT
from tests.fakes import keystone_admin
from tests.fakes.catalog_process import db_sync
from tests.fakes.net import free_port


def authtoken_section(keystone: dict[str, Any], svc: dict[str, Any]) -> str:
    """``[keystone_authtoken]`` for a catalog served behind the harness Keystone."""
    return (
        "[keystone_authtoken]\n"
        f"www_authenticate_uri = {keystone['auth_url']}\n"
        f"auth_url = {keystone['auth_url']}\n"
        "auth_type = password\n"
        + "".join(
            f"{key} = {svc[key]}\n"
            for key in (
                "username",
                "password",
                "project_name",
                "user_domain_name",
                "project_domain_name",
            )
        )
    )


@contextlib.contextmanager
def catalog_server(work: pathlib.Path, database: str, keystone: dict[str, Any], extra: str = ""):
    """``stowkit catalog serve`` on ``database`` behind the harness Keystone; yields its URL.

    ``extra`` is appended to its configuration file (more groups).
    """
    svc = keystone["service"]
    port = free_port()
    conf = work / "stowkit.conf"
    conf.write_text(
        f"""[DEFAULT]
state_dir = {work}
[catalog_sql]
connection = {database}
[catalog_api]
auth_strategy = keystone
max_body_size = 65536
{authtoken_section(keystone, svc)}{extra}"""
    )
    db_sync(conf)
    log = open(work / "server.log", "wb")
    proc = subprocess.Popen(
        [*STOWKIT, "--config-file", str(conf), "catalog", "serve", "--port", str(port)]
        + ["--workers", "2"],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    try:
        while True:
            try:
                urllib.request.urlopen(url + "/", timeout=2)
            except urllib.error.HTTPError:
                break  # 300 Multiple Choices: it answers
            except OSError:
                assert proc.poll() is None, (work / "server.log").read_text()
                assert time.monotonic() < deadline, "catalog server not ready"
                time.sleep(0.2)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()


class Api:
    """Raw HTTP as one Keystone user."""

    def __init__(self, url: str, user: dict[str, Any]) -> None:
        self.url = url
        self.project = user["project_id"]
        self.token = keystone_admin.token(user)

    def call(
        self, method: str, path: str, body: Any = None, raw: bytes | None = None
    ) -> tuple[int, Any]:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("X-Auth-Token", self.token)
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                status, payload = resp.status, resp.read()
        except urllib.error.HTTPError as err:
            status, payload = err.code, err.read()
        try:
            return status, json.loads(payload) if payload else None
        except ValueError:
            return status, payload.decode(errors="replace")


def freezer_runner(binary: str, user: dict[str, Any], url: str):
    """Run the real ``freezer`` CLI at ``binary`` as ``user`` against the catalog at ``url``."""
    env = dict(
        os.environ,
        OS_AUTH_URL=user["auth_url"],
        OS_USERNAME=user["username"],
        OS_PASSWORD=user["password"],
        OS_PROJECT_NAME=user["project_name"],
        OS_USER_DOMAIN_NAME=user["user_domain_name"],
        OS_PROJECT_DOMAIN_NAME=user["project_domain_name"],
        OS_BACKUP_URL=url,
        OS_IDENTITY_API_VERSION="3",
    )

    def run(*args: str, fmt: bool = True) -> Any:
        argv = [binary, *args] + (["-f", "json"] if fmt else [])
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"{' '.join(args)}: {proc.stderr[-2000:]}"
        return json.loads(proc.stdout) if fmt and proc.stdout.strip() else proc.stdout

    run.env = env  # type: ignore[attr-defined]
    run.python = str(pathlib.Path(binary).with_name("python"))  # type: ignore[attr-defined]
    return run

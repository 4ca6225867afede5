"""Smoke tests of the harness: each service answers a real request.

They prove the records the ``service`` fixture hands out are right (paths,
endpoints, credentials), so a failure in a job's functional tests is the job's.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import uuid

import pytest


def run(argv: list[str], timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    """Run a command; fail the test with its output when it exits non-zero."""
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    assert proc.returncode == 0, f"{argv} exited {proc.returncode}: {proc.stdout}{proc.stderr}"
    return proc


@pytest.mark.parametrize("host", ["a", "b"])
def test_btrfs_subvolume_on_each_host(service, host):
    rec = service("btrfs")
    mount = pathlib.Path(rec["hosts"][host])
    assert mount in {pathlib.Path(m) for m in rec["mounts"]}
    name = f"smoke-{uuid.uuid4().hex[:8]}"
    run(["btrfs", "subvolume", "create", str(mount / name)])
    try:
        listing = run(["btrfs", "subvolume", "list", "-o", str(mount)]).stdout
        assert any(line.split()[-1] == name for line in listing.splitlines()), listing
        fstype = run(["stat", "-f", "-c", "%T", str(mount / name)]).stdout.strip()
        assert fstype == "btrfs"
    finally:
        run(["btrfs", "subvolume", "delete", str(mount / name)])


def test_btrfs_hosts_are_separate_filesystems(service):
    rec = service("btrfs")
    uuids = {
        run(["findmnt", "-n", "-o", "UUID", "--target", m]).stdout.strip() for m in rec["mounts"]
    }
    assert len(uuids) == 2


def test_docker_runs_a_container(service):
    rec = service("docker")
    token = uuid.uuid4().hex
    docker = ["docker", "-H", rec["host"]]
    out = run(
        [*docker, "run", "--rm", *rec["run_options"], rec["image"], "sh", "-c", f"echo {token}"],
        timeout=120,
    )
    assert out.stdout.strip() == token


def test_docker_named_volume_keeps_data(service):
    rec = service("docker")
    docker = ["docker", "-H", rec["host"]]
    vol = f"smoke-{uuid.uuid4().hex[:8]}"
    run([*docker, "volume", "create", vol])
    try:
        base = [*docker, "run", "--rm", *rec["run_options"], "-v", f"{vol}:/data", rec["image"]]
        run([*base, "sh", "-c", "echo kept > /data/f"], timeout=120)
        assert run([*base, "cat", "/data/f"], timeout=120).stdout == "kept\n"
    finally:
        run([*docker, "volume", "rm", vol])


def test_swift_object_put_and_get(service):
    from swiftclient import client as swift

    rec = service("swift")
    conn = swift.Connection(authurl=rec["auth_url"], user=rec["user"], key=rec["key"], retries=0)
    container, body = f"smoke-{uuid.uuid4().hex[:8]}", uuid.uuid4().bytes * 1000
    conn.put_container(container)
    try:
        etag = conn.put_object(container, "obj", body)
        headers, got = conn.get_object(container, "obj")
        assert got == body
        assert headers["etag"] == etag
        assert conn.url == rec["storage_url"]
    finally:
        conn.delete_object(container, "obj")
        conn.delete_container(container)


def test_swift_accounts_are_isolated(service):
    from swiftclient import client as swift
    from swiftclient.exceptions import ClientException

    rec = service("swift")
    other_user = "test2:tester2"
    other = swift.Connection(
        authurl=rec["auth_url"], user=other_user, key=rec["users"][other_user]["key"], retries=0
    )
    with pytest.raises(ClientException) as err:
        # tester2 is admin of test2 only: the test account is out of reach.
        swift.get_account(rec["storage_url"], other.get_auth()[1])
    assert err.value.http_status == 403


def test_swift_accepts_keystone_tokens(service):
    from keystoneauth1 import session
    from keystoneauth1.identity import v3
    from swiftclient import client as swift

    rec = service("swift")
    ks = service("keystone")
    assert "keystone" in rec, "swift was started before keystone: restart swift"
    member = ks["member"]
    auth = v3.Password(
        auth_url=member["auth_url"],
        username=member["username"],
        password=member["password"],
        project_name=member["project_name"],
        user_domain_name=member["user_domain_name"],
        project_domain_name=member["project_domain_name"],
    )
    # Storage URL from Keystone's catalog: proves swift registered itself there.
    conn = swift.Connection(
        session=session.Session(auth=auth),
        os_options={"region_name": rec["keystone"]["region"]},
        retries=0,
    )
    container = f"smoke-{uuid.uuid4().hex[:8]}"
    conn.put_container(container)
    try:
        conn.put_object(container, "obj", b"via keystone")
        assert conn.get_object(container, "obj")[1] == b"via keystone"
        assert conn.url == rec["keystone"]["storage_url_template"].format(
            project_id=member["project_id"]
        )
    finally:
        conn.delete_object(container, "obj")
        conn.delete_container(container)


def test_ssh_runs_a_command(service):
    rec = service("sshd")
    token = uuid.uuid4().hex
    out = run(
        ["ssh", *rec["ssh_options"], f"{rec['user']}@{rec['host']}", f"echo {token}; id -u"],
        timeout=60,
    )
    assert out.stdout.split() == [token, "0"]


def test_postgres_query(service):
    rec = service("postgres")
    out = run(["psql", rec["url"], "-At", "-c", "select 6 * 7, current_user"], timeout=60)
    assert out.stdout.strip() == f"42|{rec['user']}"


def test_postgres_query_with_psycopg(service):
    import psycopg

    rec = service("postgres")
    with psycopg.connect(rec["url"], connect_timeout=10) as conn:
        row = conn.execute("select %s::jsonb ->> 'k'", [json.dumps({"k": "v"})]).fetchone()
    assert row == ("v",)

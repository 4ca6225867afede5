"""Keystone credentials on the harness: every OpenStack backend from every source.

A fresh project and member user on the primary Keystone, an application
credential created for that user through keystoneauth1, and a clouds.yaml
(with its secrets in secure.yaml) naming both.  Then, for each source (the
password cloud, the application-credential cloud, OS_* with a password, OS_*
with the application credential), the Glance image store lists and writes
images, the Swift block store (Keystone mode) writes and reads a device, and
image sync copies a master image from RegionOne to RegionTwo.
"""

from __future__ import annotations

import hashlib
import io
import os
import secrets
import uuid

import pytest

from stowkit.corelib import config as core_config
from stowkit.corelib import imagesync, registry
from stowkit.plugins.glance.store import GlanceImageStore
from tests.fakes.harness import missing

SOURCES = ("cloud-password", "cloud-appcred", "env-password", "env-appcred")
OS = 64 << 10
#: what each source's [GROUP] lines make the login say it used
EXPECTED_SOURCE = {"cloud = pw\n": "cloud pw", "cloud = ac\n": "cloud ac", "": "environment"}


def _session(auth_url: str, **kw):
    from keystoneauth1 import session
    from keystoneauth1.identity import v3

    return session.Session(auth=v3.Password(auth_url=auth_url, **kw))


@pytest.fixture(scope="module")
def account(service):
    """A project, a member user on it and an application credential of the user."""
    ks = service("keystone")
    service("glance")
    admin = ks["admin"]
    url = admin["auth_url"].rstrip("/")
    sess = _session(
        url,
        username=admin["username"],
        password=admin["password"],
        project_name=admin["project_name"],
        user_domain_name="Default",
        project_domain_name="Default",
    )
    name = f"skcred-{uuid.uuid4().hex[:8]}"
    password = uuid.uuid4().hex
    project = sess.post(
        f"{url}/projects", json={"project": {"name": name, "domain_id": "default"}}
    ).json()["project"]["id"]
    user = sess.post(
        f"{url}/users",
        json={"user": {"name": name, "password": password, "domain_id": "default"}},
    ).json()["user"]["id"]
    role = sess.get(f"{url}/roles?name=member").json()["roles"][0]["id"]
    sess.put(f"{url}/projects/{project}/users/{user}/roles/{role}").raise_for_status()
    own = _session(
        url,
        username=name,
        password=password,
        project_id=project,
        user_domain_name="Default",
    )
    answer = own.post(
        f"{url}/users/{user}/application_credentials",
        json={"application_credential": {"name": name}},
    )
    answer.raise_for_status()
    appcred = answer.json()["application_credential"]
    info = {
        "auth_url": url,
        "name": name,
        "password": password,
        "project": project,
        "appcred_id": appcred["id"],
        "appcred_secret": appcred["secret"],
    }
    try:
        yield info
    finally:
        store = GlanceImageStore(core_config.load_conf(), "image_glance")
        store.conf.set_override("auth_url", url, "image_glance")
        store.conf.set_override("username", name, "image_glance")
        store.conf.set_override("password", password, "image_glance")
        store.conf.set_override("project_id", project, "image_glance")
        for region in ("RegionOne", "RegionTwo"):
            try:
                for image in store.list_images(region):
                    if image.owner == project:
                        store.delete_image(region, image.id)
            except Exception:
                pass
        store.close()
        # The credential first: deleting the user removes its application
        # credentials in bulk, which on SQLite leaves their role rows behind, and
        # the next credential created on this Keystone would collide with them.
        own.delete(f"{url}/users/{user}/application_credentials/{appcred['id']}")
        sess.delete(f"{url}/users/{user}")
        sess.delete(f"{url}/projects/{project}")


@pytest.fixture(params=SOURCES)
def source(request, account, tmp_path, monkeypatch):
    """Configure one credential source; returns the [GROUP] lines that select it."""
    for var in [v for v in os.environ if v.startswith("OS_")]:
        monkeypatch.delenv(var)
    clouds = tmp_path / "clouds.yaml"
    secure = tmp_path / "secure.yaml"
    a = account
    clouds.write_text(
        "clouds:\n"
        "  pw:\n"
        "    region_name: RegionOne\n"
        "    auth:\n"
        f"      auth_url: {a['auth_url']}\n"
        f"      username: {a['name']}\n"
        f"      project_name: {a['name']}\n"
        "      user_domain_name: Default\n"
        "      project_domain_name: Default\n"
        "  ac:\n"
        "    auth_type: v3applicationcredential\n"
        "    region_name: RegionOne\n"
        "    auth:\n"
        f"      auth_url: {a['auth_url']}\n"
        f"      application_credential_id: {a['appcred_id']}\n"
    )
    secure.write_text(
        "clouds:\n"
        f"  pw:\n    auth:\n      password: {a['password']}\n"
        f"  ac:\n    auth:\n      application_credential_secret: {a['appcred_secret']}\n"
    )
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(clouds))
    monkeypatch.setenv("OS_CLIENT_SECURE_FILE", str(secure))
    if request.param == "cloud-password":
        return "cloud = pw\n"
    if request.param == "cloud-appcred":
        return "cloud = ac\n"
    monkeypatch.setenv("OS_AUTH_URL", a["auth_url"])
    monkeypatch.setenv("OS_REGION_NAME", "RegionOne")
    if request.param == "env-password":
        for var, value in {
            "OS_USERNAME": a["name"],
            "OS_PASSWORD": a["password"],
            "OS_PROJECT_NAME": a["name"],
            "OS_USER_DOMAIN_NAME": "Default",
            "OS_PROJECT_DOMAIN_NAME": "Default",
            "OS_IDENTITY_API_VERSION": "3",
        }.items():
            monkeypatch.setenv(var, value)
    else:
        monkeypatch.setenv("OS_AUTH_TYPE", "v3applicationcredential")
        monkeypatch.setenv("OS_APPLICATION_CREDENTIAL_ID", a["appcred_id"])
        monkeypatch.setenv("OS_APPLICATION_CREDENTIAL_SECRET", a["appcred_secret"])
    return ""


def _conf(tmp_path, text: str):
    path = tmp_path / "stowkit.conf"
    path.write_text(f"[DEFAULT]\nstate_dir = {tmp_path}\n{text}")
    return core_config.load_conf([str(path)])


def test_glance_store(source, account, tmp_path):
    conf = _conf(tmp_path, f"[image_glance]\n{source}")
    store = registry.load("image", conf, "glance")
    try:
        assert {"RegionOne", "RegionTwo"} <= set(store.regions())
        assert store.tenant_id() == account["project"]
        assert store.login().source == EXPECTED_SOURCE[source]
        data = os.urandom(4096)
        name = f"{account['name']}-{secrets.token_hex(3)}"
        image = store.create_image("RegionTwo", name, io.BytesIO(data), size=len(data))
        try:
            assert image.owner == account["project"]
            assert image.checksum == hashlib.md5(data).hexdigest()
            assert b"".join(store.read_image("RegionTwo", image.id)) == data
        finally:
            store.delete_image("RegionTwo", image.id)
    finally:
        store.close()


def test_swift_store(source, service, tmp_path):
    rec = service("swift")
    if "keystone" not in rec:
        missing("swift was started without keystone (start keystone, then swift)")
    prefix = f"t{secrets.token_hex(3)}-"
    conf = _conf(
        tmp_path,
        f"[blockstore_swift]\n{source}auth_version = 3\ncontainer_prefix = {prefix}\n"
        f"region_name = {rec['keystone']['region']}\nretries = 1\ntimeout = 20\n",
    )
    store = registry.load("blockstore", conf, "swift")
    try:
        store.create_device("c", 4 * OS, OS)
        data = os.urandom(OS)
        store.write_object("c", 1, data)
        assert store.read_object("c", 1) == data
        assert store.factory.login().source == EXPECTED_SOURCE[source]
        store.delete_device("c")
        assert store.list_devices() == []
    finally:
        store.close()


def test_image_sync(source, account, tmp_path):
    """The master target's credentials: the section's cloud, or OS_* in the environment."""
    conf = _conf(tmp_path, "[image_glance]\n")  # nothing: the sync config decides
    store = registry.load("image", conf, "glance")
    data = os.urandom(2048)
    name = f"{account['name']}-sync-{secrets.token_hex(3)}"
    seed = GlanceImageStore(_conf(tmp_path, f"[image_glance]\n{source}"), "image_glance")
    master = seed.create_image("RegionOne", name, io.BytesIO(data), size=len(data))
    seed.close()
    sync_file = tmp_path / "glancesync.conf"
    sync_file.write_text(
        "[main]\nmaster_region = RegionOne\n\n"
        f"[master]\n{source}forcesyncs = {master.id}\nignore_regions = RegionThree\n"
    )
    try:
        sync = imagesync.build(conf, store, str(sync_file))
        report = sync.sync(["RegionTwo"])
        assert not report.failed, report.summary()
        assert sync.store("master").login().source == EXPECTED_SOURCE[source]
        copies = [i for i in sync.store("master").list_images("RegionTwo") if i.name == name]
        assert [c.checksum for c in copies] == [hashlib.md5(data).hexdigest()]
    finally:
        store.close()

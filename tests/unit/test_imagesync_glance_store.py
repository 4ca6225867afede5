"""The Glance store's pure parts: image mapping, error translation, credentials."""

from __future__ import annotations

import pytest

from stowkit.corelib import config as core_config
from stowkit.corelib.errors import BackendUnavailable, ConfigError, Conflict, NotFound
from stowkit.corelib.image import Credentials, ImageCapability
from stowkit.plugins.glance import store as G


def make(**opts):
    conf = core_config.load_conf()
    conf.register_opts(G.GlanceImageStore.options, group="image_glance")
    for key, value in opts.items():
        conf.set_override(key, value, "image_glance")
    return G.GlanceImageStore(conf, "image_glance")


def test_to_image_keeps_only_user_properties():
    raw = {
        "id": "i1",
        "name": "n",
        "owner": "p",
        "size": 3,
        "checksum": "md5",
        "os_hash_algo": "sha512",
        "os_hash_value": "sha",
        "status": "active",
        "visibility": "public",
        "kernel_id": "k",
        "disk_format": "ami",
        "container_format": "ami",
        "stores": "fs",
        "os_hidden": False,
        "file": "/v2/images/i1/file",
        "schema": "/v2/schemas/image",
        "tags": [],
        "min_disk": 0,
        "os_glance_importing_to_stores": "",
        "nid": "7",
        "type": "base",
    }
    image = G.GlanceImageStore._to_image("R", raw)
    assert image.properties == {"nid": "7", "type": "base"}
    assert image.is_public and image.kernel_id == "k" and image.os_hash_value == "sha"
    other_algo = G.GlanceImageStore._to_image("R", {**raw, "os_hash_algo": "sha256"})
    assert other_algo.os_hash_value is None  # not comparable with a sha512


def test_errors_translate_to_one_line_stowkit_errors():
    from glanceclient import exc as gexc
    from keystoneauth1 import exceptions as kexc

    assert isinstance(G._translate(kexc.Unauthorized("no"), "k"), ConfigError)
    assert isinstance(G._translate(gexc.HTTPNotFound("x"), "r"), NotFound)
    assert isinstance(G._translate(gexc.HTTPConflict("x"), "r"), Conflict)
    err = G._translate(kexc.ConnectFailure("refused\nsecond line"), "RegionTwo: listing")
    assert isinstance(err, BackendUnavailable) and "\n" not in str(err)


@pytest.fixture(autouse=True)
def no_clouds(tmp_path, monkeypatch):
    """No OS_* of the caller, no clouds.yaml but the test's own."""
    import os

    for var in [v for v in os.environ if v.startswith("OS_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(tmp_path / "clouds.yaml"))
    monkeypatch.setenv("OS_CLIENT_SECURE_FILE", str(tmp_path / "secure.yaml"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)


def test_incomplete_credentials_are_a_config_error():
    with pytest.raises(ConfigError, match="incomplete.*password"):
        make(auth_url="http://k/v3").login()
    with pytest.raises(ConfigError, match=r"no Keystone credentials.*\[image_glance\]"):
        make().login()


def test_for_credentials_makes_another_store():
    base = make(auth_url="http://k/v3", username="u", password="p", project_name="x")
    assert base.for_credentials(None) is base
    assert base.login().where == "http://k/v3" and base.login().source == "[image_glance]"
    other = base.for_credentials(Credentials("u2", "p2", "http://k2/v2.0", "t2"))
    assert other is not base and other.login().where == "http://k2/v3"
    assert other.login().session.auth.auth_url == "http://k2/v3"
    assert base.supports(ImageCapability.REPORTS_HASHES)


def test_clouds_yaml(tmp_path):
    (tmp_path / "clouds.yaml").write_text(
        "clouds:\n  c1:\n    auth:\n      auth_url: http://k/v3\n      username: u\n"
        "      password: p\n      project_name: x\n    interface: internal\n"
    )
    store = make(cloud="c1")
    login = store.login()
    assert login.source == "cloud c1" and login.where == "http://k/v3"
    assert store.interface == "internal"  # the cloud's, over [image_glance] interface
    assert login.session.auth._username == "u"
    with pytest.raises(ConfigError, match="nope"):
        make(cloud="nope").login()


def test_application_credential_cloud(tmp_path):
    (tmp_path / "clouds.yaml").write_text(
        "clouds:\n  ac:\n    auth_type: v3applicationcredential\n    auth:\n"
        "      auth_url: http://k/v3\n      application_credential_id: abc\n"
    )
    (tmp_path / "secure.yaml").write_text(
        "clouds:\n  ac:\n    auth:\n      application_credential_secret: s3cret\n"
    )
    auth = make(cloud="ac").login().session.auth
    method = auth.auth_methods[0]
    assert (method.application_credential_id, method.application_credential_secret) == (
        "abc",
        "s3cret",
    )

"""Reading GlanceSync's configuration file as it is."""

from __future__ import annotations

import base64

import pytest

from stowkit.corelib.errors import ConfigError, InvalidArgument, InvalidName
from stowkit.corelib.imagesync import config as C

SAMPLE = """
[main]
master_region = Spain2
preferable_order = Trento, Lannion, Waterford
max_children = 3
images_dir = /var/lib/glance/images

[DEFAULT]
# replace = 9046fd22131a96502cb0d85b4a406a5a
forcesyncs = 6e240dd4-e304-4599-b7d8-e38e13cef058
metadata_condition = image.is_public and\\
  ('nid' in image.user_properties or 'type' in image.user_properties)
metadata_set = nid , type, sdc_aware, nid_version
only_tenant_images = True

[master]
credential = user,{pw},http://server:4730/v2.0,tenantid1
ignore_regions = Spain1

[experimental]
credential = user2,\\
  {pw},\\
  http://server2:4730/v2.0,tenantid2
only_tenant_images = False
metadata_condition = image.is_public and image.user_properties.get('type', None) == 'baseimages'
obsolete_syncprops = nid
support_obsolete_images = False
list_images_timeout = 20
rename = any
dontupdate = abc, def
""".replace("{pw}", base64.b64encode(b"s3cr3t,with comma").decode())


def test_sample_config():
    cfg = C.parse(SAMPLE)
    assert cfg.master_region == "Spain2"
    assert cfg.preferable_order == ("Trento", "Lannion", "Waterford")
    assert cfg.max_children == 3 and cfg.images_dir == "/var/lib/glance/images"
    master, exp = cfg.targets["master"], cfg.targets["experimental"]
    assert master.credentials.user == "user"
    assert master.credentials.password == "s3cr3t,with comma"
    assert master.credentials.auth_url == "http://server:4730/v2.0"
    assert master.credentials.project == "tenantid1"
    assert master.ignore_regions == {"Spain1"}
    assert master.forcesyncs == {"6e240dd4-e304-4599-b7d8-e38e13cef058"}
    assert master.metadata_set == {"nid", "type", "sdc_aware", "nid_version"}
    assert master.only_tenant_images and master.support_obsolete_images
    assert master.list_images_timeout == 30
    assert exp.credentials.user == "user2" and exp.credentials.project == "tenantid2"
    assert not exp.only_tenant_images and not exp.support_obsolete_images
    assert exp.obsolete_syncprops == {"nid"} and exp.rename == {"any"}
    assert exp.dontupdate == {"abc", "def"} and exp.list_images_timeout == 20
    assert "baseimages" in exp.metadata_condition.source
    assert "s3cr3t" not in repr(master.credentials)


def test_overrides():
    cfg = C.parse(
        SAMPLE,
        C.parse_overrides(
            [
                "experimental.only_tenant_images=True",
                "metadata_set=nid",
                "main.max_children=1",
                "master.metadata_condition=",
            ]
        ),
    )
    assert cfg.targets["experimental"].only_tenant_images
    assert cfg.targets["experimental"].metadata_set == {"nid"}  # [DEFAULT] reaches every target
    assert cfg.max_children == 1
    assert cfg.targets["master"].metadata_condition is None


@pytest.mark.parametrize("pair", ["novalue", "=x", "a.b.c=1", ".x=1", "a.=1"])
def test_bad_override_pairs(pair):
    with pytest.raises(InvalidArgument):
        C.parse_overrides([pair])


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[main]\nmaster_region = R\n[t]\ncredential = a,b\n", "credential must be"),
        ("[main]\nmaster_region = R\n[t]\ncredential = a,!!!,u,t\n", "base64"),
        (
            "[main]\nmaster_region = R\n[t]\nonly_tenant_images = maybe\ncredential = a,cA==,u,t\n",
            "not a boolean",
        ),
        ("[main]\nmaster_region = R\n[t]\nuser = x\n", "needs credential"),
        ("[main]\nmaster_region = R\n[master]\nmetadata_condition = image.x\n", "no attribute"),
        (
            "[main]\nmaster_region = R\n[master]\nmetadata_condition = image.is_public and (\n",
            "malformed",
        ),
        ("[main\nmaster_region = R\n", "cannot parse"),
        ("[main]\nmax_children = lots\nmaster_region = R\n", "not a number"),
    ],
)
def test_bad_configs(text, match):
    with pytest.raises(ConfigError, match=match):
        C.parse(text)


def test_no_master_region(monkeypatch):
    monkeypatch.delenv("OS_REGION_NAME", raising=False)
    with pytest.raises(ConfigError, match="no master region"):
        C.parse("[master]\n")
    assert C.parse(None, master_region="R1").master_region == "R1"
    monkeypatch.setenv("OS_REGION_NAME", "R2")
    assert C.parse("").master_region == "R2"


def test_bad_region_name():
    with pytest.raises(InvalidName):
        C.parse("[main]\nmaster_region = ../x\n")


def test_master_credentials_from_environment(monkeypatch):
    monkeypatch.setenv("OS_USERNAME", "admin")
    monkeypatch.setenv("OS_PASSWORD", "pw")
    monkeypatch.setenv("OS_AUTH_URL", "http://k:5000/v3")
    monkeypatch.setenv("OS_PROJECT_NAME", "admin")
    cfg = C.parse("[main]\nmaster_region = R\n")
    assert cfg.master.credentials.user == "admin" and cfg.master.credentials.password == "pw"


def test_four_options_and_cloud(monkeypatch):
    for var in ("OS_USERNAME", "OS_PASSWORD", "OS_AUTH_URL", "OS_PROJECT_NAME", "OS_TENANT_NAME"):
        monkeypatch.delenv(var, raising=False)
    cfg = C.parse(
        "[main]\nmaster_region = R\n[master]\nuser = u\npassword = p\nkeystone_url = http://k\n"
        "tenant = t\n[c]\ncloud = mycloud\nregions = A, B\n"
    )
    assert cfg.master.credentials.password == "p"  # plain, as GlanceSync's four options
    assert cfg.targets["c"].credentials.cloud == "mycloud"
    assert cfg.targets["c"].regions == ("A", "B")
    assert C.parse("[main]\nmaster_region = R\n").master.credentials is None


def test_region_names():
    assert C.region_parts("R1") == ("master", "R1")
    assert C.region_parts("exp:R1") == ("exp", "R1")
    assert C.region_parts("exp:") == ("exp", "")
    assert C.full_region_name("master", "R") == "R"
    assert C.full_region_name("exp", "R") == "exp:R"
    assert C.order_regions(["c", "a", "b"], ["b", "x"]) == ["b", "a", "c"]


def test_load_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        C.load(str(tmp_path / "nope.conf"))
    assert C.load(str(tmp_path / "nope.conf"), must_exist=False, master_region="R").targets


def test_unknown_options_of_the_file_warn_once_each(caplog):
    # GlanceSync's reader ignores keys it does not know: the file loads.
    text = (
        "[main]\nmaster_region = R\nlog_level = debug\n"
        "[DEFAULT]\nold_key = 1\n"
        "[master]\nfoo = 1\n"
        "[t]\ncredential = a,cA==,u,t\nfoo = 2\n"
    )
    with caplog.at_level("WARNING", logger="stowkit.imagesync"):
        cfg = C.parse(text, source="gs.conf")
    assert set(cfg.targets) == {"master", "t"}
    assert cfg.warnings == (
        "gs.conf: [DEFAULT] unknown option 'old_key' ignored",
        "gs.conf: [main] unknown option 'log_level' ignored",
        "gs.conf: [master] unknown option 'foo' ignored",
        "gs.conf: [t] unknown option 'foo' ignored",
    )
    # one warning per key: [DEFAULT]'s key is not repeated for every section
    assert [r.getMessage() for r in caplog.records] == list(cfg.warnings)


@pytest.mark.parametrize("key", ["master.foo", "foo"])
def test_unknown_override_is_still_an_error(key):
    with pytest.raises(ConfigError, match="unknown option 'foo'"):
        C.parse("[main]\nmaster_region = R\n[master]\n", {key: "1"})

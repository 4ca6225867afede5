"""stowkit.plugins.openstack_auth: every source of Keystone credentials, offline.

Building a keystoneauth1 session does not talk to Keystone, so each test
checks the auth plugin a source produced, and the errors of a source that is
incomplete.  The live logins are in tests/functional/test_credentials_openstack.py.
"""

from __future__ import annotations

import os

import pytest
from oslo_config import cfg

from stowkit.corelib import config as core_config
from stowkit.corelib.errors import ConfigError
from stowkit.corelib.image import Credentials
from stowkit.plugins import openstack_auth as A
from stowkit.plugins.swift.auth import ConnectionFactory
from stowkit.plugins.swift.store import SwiftBlockStore

GROUP = "image_glance"


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No OS_* of the caller, no clouds.yaml but the test's own."""
    for var in [v for v in os.environ if v.startswith("OS_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(tmp_path / "clouds.yaml"))
    monkeypatch.setenv("OS_CLIENT_SECURE_FILE", str(tmp_path / "secure.yaml"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)


def conf_with(text: str = "", tmp_path=None) -> cfg.ConfigOpts:
    files = []
    if text:
        path = tmp_path / "stowkit.conf"
        path.write_text(text)
        files = [str(path)]
    conf = core_config.load_conf(files) if files else core_config.load_conf()
    conf.register_opts(A.AuthOptions(), group=GROUP)
    return conf


def login(conf, credentials=None, **kw):
    return A.login(conf, GROUP, credentials, service_type="image", **kw)


def test_options_are_keystoneauths_and_lazy():
    names = [o.dest for o in A.AuthOptions([cfg.StrOpt("extra")])]
    assert names[:3] == ["cloud", "auth_type", "auth_section"]
    for name in ("auth_url", "username", "password", "project_name", "user_domain_name"):
        assert name in names
    assert names[-1] == "extra"
    # The same objects every time: registering twice is harmless.
    assert list(A.AuthOptions())[4] is list(A.AuthOptions())[4]


def test_backend_classes_do_not_import_keystoneauth():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import stowkit.plugins.glance.store, stowkit.plugins.openstack_auth\n"
        "assert 'keystoneauth1.loading' not in sys.modules, 'loading'\n"
        "assert 'openstack' not in sys.modules, 'openstack'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_legacy_password_options_default_the_domains(tmp_path):
    conf = conf_with(
        f"[{GROUP}]\nauth_url = http://k/v3\nusername = u\npassword = p\nproject_name = x\n",
        tmp_path,
    )
    got = login(conf, timeout=7.0, cacert="/ca.pem")
    auth = got.session.auth
    assert type(auth).__name__ == "Password" and auth.auth_url == "http://k/v3"
    assert (auth._username, auth._password, auth._project_name) == ("u", "p", "x")
    assert auth._default_domain_name == "Default"
    assert got.session.verify == "/ca.pem" and got.session.timeout == 7.0
    assert got.source == f"[{GROUP}]" and got.where == "http://k/v3"


def test_explicit_domain_is_kept(tmp_path):
    conf = conf_with(
        f"[{GROUP}]\nauth_type = password\nauth_url = http://k/v3\nusername = u\n"
        "password = p\nuser_domain_id = d1\n",
        tmp_path,
    )
    auth = login(conf, insecure=True).session.auth
    assert auth._user_domain_id == "d1" and auth._default_domain_name is None


def test_application_credential_in_the_group(tmp_path):
    conf = conf_with(
        f"[{GROUP}]\nauth_type = v3applicationcredential\nauth_url = http://k/v3\n"
        "application_credential_id = abc\napplication_credential_secret = s\n",
        tmp_path,
    )
    got = login(conf)
    method = got.session.auth.auth_methods[0]
    assert (method.application_credential_id, method.application_credential_secret) == (
        "abc",
        "s",
    )


def test_token_and_auth_section(tmp_path):
    conf = conf_with(
        f"[{GROUP}]\nauth_section = my_auth\n[my_auth]\nauth_type = v3token\n"
        "auth_url = http://k/v3\ntoken = tok\nproject_id = p1\n",
        tmp_path,
    )
    auth = login(conf).session.auth
    assert auth.auth_methods[0].token == "tok" and auth.project_id == "p1"


@pytest.mark.parametrize(
    ("text", "needs"),
    [
        ("auth_url = http://k/v3\n", "username/user_id, password"),
        (
            "auth_type = v3applicationcredential\nauth_url = http://k/v3\n",
            "application_credential_",
        ),
        ("auth_type = v3token\nauth_url = http://k/v3\n", "token"),
        ("auth_type = password\nusername = u\npassword = p\n", "auth_url"),
    ],
)
def test_incomplete_group_is_one_config_error(tmp_path, text, needs):
    conf = conf_with(f"[{GROUP}]\n{text}", tmp_path)
    with pytest.raises(ConfigError, match=rf"\[{GROUP}\] .*incomplete.*{needs}"):
        login(conf)


def test_unknown_auth_type(tmp_path):
    conf = conf_with(f"[{GROUP}]\nauth_type = nope\n", tmp_path)
    with pytest.raises(ConfigError, match="auth_type"):
        login(conf)


def test_nothing_configured():
    with pytest.raises(ConfigError, match="no Keystone credentials.*OS_CLOUD"):
        login(conf_with())


CLOUDS = """clouds:
  pw:
    region_name: RegionTwo
    interface: internal
    cacert: /ca.pem
    auth:
      auth_url: http://k/v3
      username: u
      project_name: x
      user_domain_name: Default
      project_domain_name: Default
  ac:
    auth_type: v3applicationcredential
    verify: false
    auth:
      auth_url: http://k2/v3
      application_credential_id: abc
"""
SECURE = """clouds:
  pw:
    auth:
      password: from-secure
  ac:
    auth:
      application_credential_secret: s3
"""


@pytest.fixture
def clouds(tmp_path):
    (tmp_path / "clouds.yaml").write_text(CLOUDS)
    (tmp_path / "secure.yaml").write_text(SECURE)


def test_cloud_option_reads_clouds_and_secure_yaml(clouds, tmp_path):
    conf = conf_with(f"[{GROUP}]\ncloud = pw\nauth_url = http://ignored/v3\n", tmp_path)
    got = login(conf)
    assert got.source == "cloud pw" and got.where == "http://k/v3"
    assert got.session.auth._password == "from-secure"
    assert (got.region_name, got.interface, got.verify) == ("RegionTwo", "internal", "/ca.pem")


def test_application_credential_cloud(clouds, tmp_path):
    got = login(conf_with(f"[{GROUP}]\ncloud = ac\n", tmp_path))
    method = got.session.auth.auth_methods[0]
    assert method.application_credential_secret == "s3" and got.verify is False
    assert got.session.verify is False


def test_command_line_cloud_beats_the_group(clouds, tmp_path):
    conf = conf_with(f"[{GROUP}]\ncloud = pw\n", tmp_path)
    conf.set_override(A.CLI_CLOUD, "ac")  # what cli/app.py's --os-cloud does
    got = login(conf)
    assert got.source == "cloud ac (--os-cloud)" and got.where == "http://k2/v3"


def test_unknown_cloud(clouds, tmp_path):
    with pytest.raises(ConfigError, match="cloud 'nope'"):
        login(conf_with(f"[{GROUP}]\ncloud = nope\n", tmp_path))


def test_os_cloud_environment(clouds, monkeypatch):
    monkeypatch.setenv("OS_CLOUD", "ac")
    got = login(conf_with())
    assert got.source == "environment" and got.where == "http://k2/v3"


def test_os_environment_variables(monkeypatch):
    monkeypatch.setenv("OS_AUTH_URL", "http://k3/v3")
    monkeypatch.setenv("OS_AUTH_TYPE", "v3applicationcredential")
    monkeypatch.setenv("OS_APPLICATION_CREDENTIAL_ID", "id3")
    monkeypatch.setenv("OS_APPLICATION_CREDENTIAL_SECRET", "s3")
    monkeypatch.setenv("OS_REGION_NAME", "R3")
    monkeypatch.setenv("OS_INTERFACE", "admin")
    got = login(conf_with())
    assert got.where == "http://k3/v3" and (got.region_name, got.interface) == ("R3", "admin")
    assert got.session.auth.auth_methods[0].application_credential_id == "id3"


def test_group_beats_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("OS_AUTH_URL", "http://env/v3")
    conf = conf_with(f"[{GROUP}]\nauth_url = http://k/v3\nusername = u\npassword = p\n", tmp_path)
    assert login(conf).where == "http://k/v3"


def test_target_credentials(clouds, monkeypatch):
    conf = conf_with()
    got = login(conf, Credentials("u", "p", "http://k/v2.0", "d901871c31944cdd8dd0630a5642facf"))
    auth = got.session.auth
    assert got.where == "http://k/v3" and auth._project_id == "d901871c31944cdd8dd0630a5642facf"
    named = login(conf, Credentials("u", "p", "http://k/v3", "demo", project_domain="D2")).session
    assert (named.auth._project_name, named.auth._project_domain_name) == ("demo", "D2")
    with pytest.raises(ConfigError, match="missing password"):
        login(conf, Credentials(user="u", auth_url="http://k/v3", project="x"))
    assert login(conf, Credentials(cloud="ac")).source == "cloud ac"
    monkeypatch.setenv("OS_CLOUD", "pw")
    assert login(conf, Credentials(environment=True)).where == "http://k/v3"


# -- Swift -----------------------------------------------------------------------


def swift_factory(tmp_path, text: str) -> ConnectionFactory:
    path = tmp_path / "s.conf"
    path.write_text(f"[blockstore_swift]\n{text}")
    conf = core_config.load_conf([str(path)])
    conf.register_opts(SwiftBlockStore.options, group="blockstore_swift")
    return ConnectionFactory(conf.blockstore_swift, conf, "blockstore_swift")


def test_swift_tempauth_stays(tmp_path):
    factory = swift_factory(tmp_path, "auth_url = http://s:8080/auth/v1.0\nuser = a:b\nkey = k\n")
    assert factory.version == "1"
    with pytest.raises(ConfigError, match="tempauth needs auth_url, user and key"):
        swift_factory(tmp_path, "auth_url = http://s:8080/auth/v1.0\nuser = a:b\n")


def test_swift_keystone_through_the_shared_login(tmp_path, clouds):
    factory = swift_factory(tmp_path, "cloud = pw\ninsecure = true\n")
    assert factory.version == "3"
    got = factory.login()
    assert got.session.auth._password == "from-secure" and got.region_name == "RegionTwo"
    common = factory._common()
    # the cloud's cacert wins over the group's insecure
    assert (common["cacert"], common["insecure"]) == ("/ca.pem", False)
    app = swift_factory(
        tmp_path,
        "auth_type = v3applicationcredential\nauth_url = http://k/v3\n"
        "application_credential_id = i\napplication_credential_secret = s\n",
    )
    assert app.login().session.auth.auth_methods[0].application_credential_id == "i"
    with pytest.raises(ConfigError, match="no Keystone credentials.*blockstore_swift"):
        swift_factory(tmp_path, "").login()


# -- image sync: the master target's credential from the environment -------------


def test_sync_master_from_os_cloud(monkeypatch):
    from stowkit.corelib.imagesync import config as C

    assert C.parse("[main]\nmaster_region = R\n").master.credentials is None
    monkeypatch.setenv("OS_CLOUD", "ac")
    creds = C.parse("[main]\nmaster_region = R\n").master.credentials
    assert creds.environment and creds.user is None
    # a section that names a credential keeps it
    other = C.parse("[main]\nmaster_region = R\n[master]\ncloud = pw\n").master.credentials
    assert other.cloud == "pw" and not other.environment


def test_sync_master_from_os_variables(monkeypatch):
    from stowkit.corelib.imagesync import config as C

    for var, value in {
        "OS_AUTH_URL": "http://k/v3",
        "OS_USERNAME": "u",
        "OS_PASSWORD": "p",
        "OS_PROJECT_NAME": "x",
    }.items():
        monkeypatch.setenv(var, value)
    creds = C.parse("[main]\nmaster_region = R\n").master.credentials
    assert creds.environment and creds.user == "u"  # GlanceSync's reading kept too
    # part in the section, part from OS_*: GlanceSync's merged password
    mixed = C.parse("[main]\nmaster_region = R\n[master]\nuser = v\n").master.credentials
    assert mixed.user == "v" and not mixed.environment


def test_corelib_reaches_the_one_keystone_owner_through_the_registry_with_its_whole_contract():
    import inspect

    from stowkit.corelib import keystone, registry

    owner = registry.keystone()
    assert isinstance(owner, A.Keystone) and registry.keystone() is owner
    wanted = {
        name: inspect.signature(member)
        for name, member in vars(keystone.Keystone).items()
        if inspect.isfunction(member) and not name.startswith("_")
    }
    assert wanted  # the contract names its methods
    for name, signature in wanted.items():
        given = inspect.signature(getattr(owner, name))
        assert list(given.parameters) == list(signature.parameters)[1:], name

"""How ``stowkit agent`` authenticates: no auth by default, Keystone when configured, trusts.

Keystone is a small fake speaking v3 token requests (stdlib HTTP server on
127.0.0.1); the catalog is the real WSGI application in process, as in
test_agent_sessions.py.
"""

from __future__ import annotations

import pytest

from stowkit.cli import agent as agent_cli
from stowkit.corelib import catalogclient
from stowkit.corelib.agent import actions, engine, options
from stowkit.corelib.catalogclient import CatalogClient
from stowkit.corelib.errors import ConfigError
from tests.fakes.agent_catalog import FakeCatalog
from tests.fakes.agent_conf import conf_with, password_conf
from tests.fakes.keystone import SERVICE_PROJECT, USER_PROJECT


def keystone_catalog(conf, **given):
    """The agent's client when it logs in to Keystone."""
    login = catalogclient.login(conf)
    assert login is not None
    return catalogclient.connect(conf, login, **given)


# -- which strategy ---------------------------------------------------------------------------


def test_no_auth_options_mean_no_auth(tmp_path, clean_env):
    assert not catalogclient.keystone_wanted(conf_with(tmp_path))


def test_auth_options_os_cloud_or_the_environment_mean_keystone(tmp_path, clean_env, monkeypatch):
    assert catalogclient.keystone_wanted(conf_with(tmp_path, "auth_url = http://k/v3\n"))
    assert catalogclient.keystone_wanted(conf_with(tmp_path, "cloud = mine\n"))
    monkeypatch.setenv("OS_CLOUD", "mine")
    assert catalogclient.keystone_wanted(conf_with(tmp_path))
    # forced: the environment does not count
    assert not catalogclient.keystone_wanted(conf_with(tmp_path, "auth_strategy = noauth\n"))


# -- Keystone login --------------------------------------------------------------------------


def test_password_login_takes_the_project_from_the_token_and_the_url_from_the_catalog(
    tmp_path, keystone, clean_env
):
    conf = password_conf(tmp_path, keystone)
    catalog = keystone_catalog(conf)
    url = catalog.url
    assert catalog.project == SERVICE_PROJECT
    assert url == catalog.base == keystone.catalog_url
    assert catalog.headers() == {"X-Auth-Token": "service-token"}
    assert not catalog.all_projects
    login = keystone.requests[0]["auth"]
    assert login["identity"]["password"]["user"]["domain"] == {"name": "Default"}


def test_catalog_url_given_wins_over_the_keystone_catalog(tmp_path, keystone, clean_env):
    conf = password_conf(tmp_path, keystone)
    catalog = keystone_catalog(conf, url="http://elsewhere:1")
    assert catalog.url == catalog.base == "http://elsewhere:1"


def test_refused_credentials_are_one_config_error(tmp_path, keystone, clean_env):
    conf = conf_with(
        tmp_path,
        f"auth_type = password\nauth_url = {keystone.url}\nusername = alice\n"
        "password = wrong\nproject_name = p\n",
    )
    with pytest.raises(ConfigError, match="Keystone refused"):
        keystone_catalog(conf)


def test_missing_backup_endpoint_names_the_fix(tmp_path, keystone, clean_env):
    conf = password_conf(tmp_path, keystone, "region_name = Nowhere\n")
    with pytest.raises(ConfigError, match="catalog register"):
        keystone_catalog(conf)


def test_agent_command_with_bad_credentials_exits_with_the_config_code(
    tmp_path, keystone, clean_env
):
    from stowkit.cli.app import main

    conf = tmp_path / "a.conf"
    conf.write_text(
        f"[DEFAULT]\nstate_dir = {tmp_path}\n[agent]\nauth_url = {keystone.url}\n"
        "username = alice\npassword = wrong\nproject_name = p\n"
    )
    code = main(["--config-file", str(conf), "agent", "--once"])
    assert code == ConfigError.exit_code


def test_central_needs_keystone(tmp_path, clean_env):
    from stowkit.cli.app import main

    conf = tmp_path / "a.conf"
    conf.write_text(f"[DEFAULT]\nstate_dir = {tmp_path}\n[agent]\ncentral = true\n")
    assert main(["--config-file", str(conf), "agent", "--once"]) == ConfigError.exit_code


# -- central agent: trusts ---------------------------------------------------------------------


def test_a_trust_job_gets_a_catalog_of_its_project_with_the_trust_token(
    tmp_path, keystone, clean_env
):
    conf = password_conf(tmp_path, keystone, "central = true\n")
    login = catalogclient.login(conf)
    own = catalogclient.connect(conf, login)
    url = own.url
    assert own.all_projects  # polls every project's jobs of the client
    trusts = agent_cli.TrustCatalogs(login, own)
    job = {"job_id": "j", "project_id": USER_PROJECT, "user_credentials": {"trust_id": "t1"}}
    catalog = trusts(job)
    assert isinstance(catalog, CatalogClient) and catalog is not own
    assert catalog.project == USER_PROJECT and catalog.base == url
    assert catalog.headers() == {"X-Auth-Token": "trust-token-t1"}
    exchange = keystone.requests[-1]["auth"]
    assert exchange["identity"] == {"methods": ["token"], "token": {"id": "service-token"}}
    assert exchange["scope"] == {"OS-TRUST:trust": {"id": "t1"}}
    # the agent's own project without a trust: its own catalog; another project: left alone
    assert trusts({"job_id": "k", "project_id": SERVICE_PROJECT}) is own
    assert trusts({"job_id": "m", "project_id": USER_PROJECT}) is None


class Counting(FakeCatalog):
    """A FakeCatalog sharing another's jobs: one catalog per project, one store."""

    def __init__(self, shared: FakeCatalog | None = None) -> None:
        super().__init__()
        if shared is not None:
            self.jobs, self.versions, self.lock = shared.jobs, shared.versions, shared.lock
        self.writes = 0

    def patch_job(self, job_id, body, if_version):
        self.writes += 1
        return super().patch_job(job_id, body, if_version)

    def add_backup(self, meta):
        self.writes += 1
        return super().add_backup(meta)


def test_central_engine_runs_a_trust_job_through_the_jobs_catalog():
    main = Counting()
    project = Counting(main)
    main.add("j", project_id=USER_PROJECT, user_credentials={"trust_id": "t1"})
    main.add("k", project_id="other")
    ran: list[str] = []

    def run(ctx, action):
        ran.append(action["action"])
        return actions.Outcome("done", [{"container": "v"}])

    def catalog_for(job):
        return project if job.get("user_credentials") else None

    agent = engine.Agent(
        main,
        "p_host",
        "host",
        lambda: actions.Context(hostname="host"),
        run_action=run,
        catalog_for=catalog_for,
        central=True,
    )
    agent.register()
    agent.poll_once()
    agent.wait_runs(10)
    assert ran == ["fake"]  # job k (no trust) was left alone
    assert main.writes == 0 and project.writes >= 2  # claim, backup, result
    assert main.clients[0]["is_central"] is True
    assert project.backups and main.jobs["j"]["job_schedule"]["result"] == "success"
    assert main.jobs["k"]["job_schedule"].get("status") is None


def test_agent_user_id_is_keystoneauths_own_option_and_defaults_to_stowkit_agent(tmp_path):
    from stowkit.corelib import registry
    from stowkit.corelib.catalogclient import noauth_headers

    shared = registry.keystone().auth_options()
    (ours,) = [o for o in options.own_opts if o.dest == "user_id"]
    (theirs,) = [o for o in shared if o.dest == "user_id"]
    assert ours == theirs  # else registering the login's options in [agent] fails
    conf = conf_with(tmp_path)
    conf.register_opts(shared, group=options.GROUP)
    assert noauth_headers(conf.agent.user_id)() == {"X-User-Id": options.NOAUTH_USER}

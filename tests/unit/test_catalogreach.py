"""Commands reach the catalog as the agent does: Keystone when configured, else no auth."""

from __future__ import annotations

import pytest

from stowkit.cli import catalogreach
from stowkit.corelib.catalogdocs import CommandCatalog
from stowkit.corelib.errors import InvalidArgument
from tests.fakes.agent_conf import conf_with, password_conf
from tests.fakes.keystone import SERVICE_PROJECT


def test_with_keystone_the_token_names_the_project_and_the_catalog(tmp_path, keystone, clean_env):
    reach = catalogreach.reach(password_conf(tmp_path, keystone, "hostname = web-1\n"))
    assert isinstance(reach.catalog, CommandCatalog)  # whole searches, job edits
    assert (reach.project, reach.url) == (SERVICE_PROJECT, keystone.catalog_url)
    assert reach.catalog.headers() == {"X-Auth-Token": "service-token"}
    assert (reach.hostname, reach.client_id) == ("web-1", f"{SERVICE_PROJECT}_web-1")


def test_with_keystone_a_given_url_wins_and_a_given_project_is_refused(
    tmp_path,
    keystone,
    clean_env,
):
    conf = password_conf(tmp_path, keystone)
    assert catalogreach.reach(conf, "http://elsewhere:1").url == "http://elsewhere:1"
    with pytest.raises(InvalidArgument, match="the project is the token's"):
        catalogreach.reach(conf, project="other")


def test_without_credentials_it_is_the_no_auth_client(tmp_path, clean_env):
    reach = catalogreach.reach(conf_with(tmp_path, "project = demo\nhostname = h\n"))
    assert (reach.project, reach.client_id) == ("demo", "demo_h")
    assert "X-Auth-Token" not in reach.catalog.headers()


def test_refused_credentials_are_configuration_not_an_outage():
    from stowkit.corelib.agent.client import HttpCatalog
    from stowkit.corelib.errors import BackendUnavailable, ConfigError, NotFound

    for status in (401, 403):
        err = HttpCatalog._fail(status, {"description": "no"}, "listing jobs")
        assert isinstance(err, ConfigError) and "refused this host's credentials" in str(err)
    assert isinstance(HttpCatalog._fail(503, None, "x"), BackendUnavailable)
    assert isinstance(HttpCatalog._fail(404, None, "x"), NotFound)

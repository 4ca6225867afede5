"""Every user reaches the catalog as the agent does: Keystone when configured, else no auth."""

from __future__ import annotations

import pytest

from stowkit.corelib import catalogclient
from stowkit.corelib.catalogclient import CatalogClient
from stowkit.corelib.errors import BackendUnavailable, ConfigError, InvalidArgument, NotFound
from tests.fakes.agent_conf import conf_with, password_conf
from tests.fakes.keystone import SERVICE_PROJECT


def reach(conf, **given):
    return catalogclient.connect(conf, catalogclient.login(conf), **given)


def test_with_keystone_the_token_names_the_project_and_the_catalog(tmp_path, keystone, clean_env):
    client = reach(password_conf(tmp_path, keystone, "hostname = web-1\n"))
    assert isinstance(client, CatalogClient)  # whole searches, job edits
    assert (client.project, client.url) == (SERVICE_PROJECT, keystone.catalog_url)
    assert client.headers() == {"X-Auth-Token": "service-token"}
    assert (client.hostname, client.client_id) == ("web-1", f"{SERVICE_PROJECT}_web-1")


def test_with_keystone_a_given_url_wins_and_a_given_project_is_refused(
    tmp_path,
    keystone,
    clean_env,
):
    conf = password_conf(tmp_path, keystone)
    assert reach(conf, url="http://elsewhere:1").url == "http://elsewhere:1"
    with pytest.raises(InvalidArgument, match="the project is the token's"):
        reach(conf, project="other")
    assert len(keystone.requests) == 1  # refused before logging in again


def test_without_credentials_it_is_the_no_auth_client(tmp_path, clean_env):
    conf = conf_with(tmp_path, "project = demo\nhostname = h\n")
    assert catalogclient.login(conf) is None
    client = reach(conf)
    assert (client.project, client.client_id) == ("demo", "demo_h")
    assert "X-Auth-Token" not in client.headers()


def test_refused_credentials_are_configuration_not_an_outage():
    for status in (401, 403):
        err = CatalogClient._fail(status, {"description": "no"}, "listing jobs")
        assert isinstance(err, ConfigError) and "refused this host's credentials" in str(err)
    assert isinstance(CatalogClient._fail(503, None, "x"), BackendUnavailable)
    assert isinstance(CatalogClient._fail(404, None, "x"), NotFound)


def test_an_unreachable_catalog_is_an_outage(tmp_path, clean_env):
    client = reach(conf_with(tmp_path, "catalog_url = http://127.0.0.1:9\n"))
    with pytest.raises(BackendUnavailable, match="unreachable"):
        client.poll_jobs("c")

"""Keystone trusts for centralized jobs, on the harness Keystone: the job gets a real trust
from its user to the service user, the service user logs in with it into the user's
project, and the trust goes with the last job that names it."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.fakes.keystone_catalog import Api, catalog_server


@pytest.fixture(scope="module")
def central_catalog(keystone, tmp_path_factory):
    """Trusts for central clients only (the default), not for every job."""
    work = tmp_path_factory.mktemp("catalog-central")
    with catalog_server(work, f"sqlite:///{work}/catalog.sqlite", keystone) as url:
        yield url


@pytest.fixture(scope="module")
def trusting_catalog(keystone, tmp_path_factory):
    work = tmp_path_factory.mktemp("catalog-trusts")
    extra = "[centralized_scheduler]\nenforce_trusts = true\n"
    with catalog_server(work, f"sqlite:///{work}/catalog.sqlite", keystone, extra) as url:
        yield url


def _trust_session(svc: dict[str, Any], trust_id: str):
    """The service user (the trustee) logged in with the trust."""
    from keystoneauth1 import session
    from keystoneauth1.identity import v3

    auth = v3.Password(
        auth_url=svc["auth_url"],
        username=svc["username"],
        password=svc["password"],
        user_domain_name=svc["user_domain_name"],
        trust_id=trust_id,
    )
    return session.Session(auth=auth)


def test_a_centralized_job_gets_a_trust_the_service_user_can_use(keystone, trusting_catalog):
    from keystoneauth1 import exceptions

    member, svc = keystone["member"], keystone["service"]
    api = Api(trusting_catalog, member)
    base = f"/v2/{api.project}/jobs"
    job = {"job_actions": [], "job_schedule": {}, "client_id": "central-host", "description": "x"}
    status, made = api.call("POST", base, job)
    assert status == 201, made
    job_id = made["job_id"]
    status, doc = api.call("GET", f"{base}/{job_id}")
    creds = doc["user_credentials"]
    assert creds["trustor_user_id"] == member["user_id"]
    # what a central scheduler does with it: a token in the user's project, as the trustee
    trusted = _trust_session(svc, creds["trust_id"])
    assert trusted.get_project_id() == member["project_id"]
    assert trusted.get_user_id() == svc["user_id"]
    # a second job of the same user reuses the trust
    status, again = api.call("POST", base, job)
    second = again["job_id"]
    assert api.call("GET", f"{base}/{second}")[1]["user_credentials"] == creds
    assert api.call("DELETE", f"{base}/{job_id}")[0] == 204
    assert _trust_session(svc, creds["trust_id"]).get_project_id() == member["project_id"]
    assert api.call("DELETE", f"{base}/{second}")[0] == 204
    with pytest.raises(exceptions.http.HttpError):  # the last job took its trust along
        _trust_session(svc, creds["trust_id"]).get_token()


def test_a_members_job_for_an_admins_central_client_carries_a_trust(keystone, central_catalog):
    """freezer-api's central clients: an admin registers one in the admin project; a member
    of another project sees it, schedules a job on it, and the job carries the member's trust
    (the trust is for central clients only here: a job for the member's own client has none)."""
    admin, member = (
        Api(central_catalog, keystone["admin"]),
        Api(central_catalog, keystone["member"]),
    )
    assert admin.project != member.project
    tag = uuid.uuid4().hex[:8]
    central = {"client_id": f"central-{tag}", "hostname": "scheduler", "is_central": True}
    status, made = admin.call("POST", f"/v2/{admin.project}/clients", central)
    assert status == 201, made
    status, listed = member.call("GET", f"/v2/{member.project}/clients?limit=1000")
    assert status == 200
    assert central["client_id"] in [c["client_id"] for c in listed["clients"]]
    jobs = f"/v2/{member.project}/jobs"
    job = {"job_actions": [], "job_schedule": {}, "client_id": central["client_id"]}
    status, made = member.call("POST", jobs, job)
    assert status == 201, made
    creds = member.call("GET", f"{jobs}/{made['job_id']}")[1]["user_credentials"]
    assert creds["trustor_user_id"] == keystone["member"]["user_id"]
    trusted = _trust_session(keystone["service"], creds["trust_id"])
    assert trusted.get_project_id() == member.project  # the member's project, by the trustee
    status, own = member.call("POST", jobs, {**job, "client_id": f"own-{tag}"})
    assert "user_credentials" not in member.call("GET", f"{jobs}/{own['job_id']}")[1]
    # a second central client of that (client_id, hostname) would make jobs ambiguous
    status, err = admin.call("POST", f"/v2/{admin.project}/clients", central)
    assert status == 409, err
    for job_id in (made["job_id"], own["job_id"]):
        assert member.call("DELETE", f"{jobs}/{job_id}")[0] == 204

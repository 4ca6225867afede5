"""Keystone trusts for centralized jobs (the rules; Keystone itself is faked here, and real
in tests/functional/test_catalog_trusts.py)."""

from __future__ import annotations

import pytest

from stowkit.corelib import config, registry
from stowkit.corelib.catalogapi.service import CatalogService, Identity, Scope
from stowkit.corelib.errors import BackendUnavailable, NotFound

JOB = {"job_actions": [], "job_schedule": {}, "description": "nightly"}


class FakeKeeper:
    def __init__(self, enforce: bool = False, fail: bool = False) -> None:
        self.enforce, self.fail = enforce, fail
        self.made: list[str] = []
        self.deleted: list[str] = []

    def wanted(self, central: bool) -> bool:
        return self.enforce or central

    def create(self, who: Identity) -> dict[str, str]:
        if self.fail:
            raise BackendUnavailable("cannot reach Keystone to create a trust")
        assert who.token == "tok"  # made with the user's own token
        self.made.append(f"trust-{len(self.made)}")
        return {"trust_id": self.made[-1], "trustor_user_id": who.user_id}

    def delete(self, who: Identity, trust_id: str) -> None:
        self.deleted.append(trust_id)


@pytest.fixture()
def catalog(tmp_path):
    conf = config.load_conf()
    conf.set_override("state_dir", str(tmp_path))
    cat = registry.load("catalog", conf)
    cat.sync()
    yield cat
    cat.close()


USER = Identity("proj", "alice", token="tok")
#: what the API's policy resolves for an admin registering a central client
ADMIN = Identity("proj", "root", roles=frozenset({"admin"}), token="tok", scope=Scope(central=True))


def test_a_job_of_a_central_client_gets_a_trust_others_do_not(catalog):
    keeper = FakeKeeper()
    svc = CatalogService(catalog, keeper)
    svc.create(ADMIN, "clients", {"client_id": "central", "is_central": True})
    svc.create(USER, "clients", {"client_id": "host-1"})
    central = svc.create(USER, "jobs", {**JOB, "client_id": "central"})
    plain = svc.create(USER, "jobs", {**JOB, "client_id": "host-1"})
    assert svc.get(USER, "jobs", central)["user_credentials"] == {
        "trust_id": "trust-0",
        "trustor_user_id": "alice",
    }
    assert "user_credentials" not in svc.get(USER, "jobs", plain)
    # a client cannot bring its own credentials
    forged = svc.create(USER, "jobs", {**JOB, "client_id": "host-1", "user_credentials": {}})
    assert "user_credentials" not in svc.get(USER, "jobs", forged)


def test_enforce_trusts_gives_every_job_one(catalog):
    svc = CatalogService(catalog, FakeKeeper(enforce=True))
    job = svc.create(USER, "jobs", {**JOB, "client_id": "anything"})
    assert svc.get(USER, "jobs", job)["user_credentials"]["trust_id"] == "trust-0"


def test_a_trust_that_cannot_be_made_leaves_no_job(catalog):
    svc = CatalogService(catalog, FakeKeeper(enforce=True, fail=True))
    with pytest.raises(BackendUnavailable):
        svc.create(USER, "jobs", {**JOB, "job_id": "j1", "client_id": "c"})
    with pytest.raises(NotFound):
        svc.get(USER, "jobs", "j1")


def test_the_trust_goes_with_the_last_job_naming_it(catalog):
    keeper = FakeKeeper(enforce=True)
    svc = CatalogService(catalog, keeper)
    first = svc.create(USER, "jobs", {**JOB, "client_id": "c"})
    # a second job reusing the same trust (Keystone returned the existing one)
    keeper.made.clear()
    second = svc.create(USER, "jobs", {**JOB, "client_id": "c"})
    assert svc.get(USER, "jobs", second)["user_credentials"]["trust_id"] == "trust-0"
    svc.delete(USER, "jobs", first)
    assert keeper.deleted == []  # still named by the second job
    svc.delete(USER, "jobs", second)
    assert keeper.deleted == ["trust-0"]


def test_without_a_keeper_no_trusts(catalog):
    svc = CatalogService(catalog)
    job = svc.create(USER, "jobs", {**JOB, "client_id": "c"})
    assert "user_credentials" not in svc.get(USER, "jobs", job)
    svc.delete(USER, "jobs", job)


def test_a_job_in_another_project_for_a_central_client_gets_a_trust(catalog):
    """freezer-api's central clients serve every project: a user of another project's
    job for one is a centralized job, so it carries the user's trust."""
    keeper = FakeKeeper()
    svc = CatalogService(catalog, keeper)
    svc.create(ADMIN, "clients", {"client_id": "central", "is_central": True})
    other = Identity("other", "bob", token="tok")
    job = svc.create(other, "jobs", {**JOB, "client_id": "central"})
    assert svc.get(other, "jobs", job)["user_credentials"]["trustor_user_id"] == "bob"
    svc.create(USER, "clients", {"client_id": "plain"})  # not central: no trust elsewhere
    assert "user_credentials" not in svc.get(
        other, "jobs", svc.create(other, "jobs", {**JOB, "client_id": "plain"})
    )

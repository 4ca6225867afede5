"""The catalog's oslo.policy rules: freezer-api's names, enforced with keystone auth."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

from stowkit.corelib import config
from stowkit.corelib.catalogapi import policy, server
from stowkit.corelib.catalogapi.app import CatalogApp
from stowkit.corelib.catalogapi.service import CatalogService, Identity
from tests.fakes.catalog import BACKUP, JOB, Client

REPO = pathlib.Path(__file__).resolve().parents[2]

#: freezer-api 19's operation rules (freezer_api/common/policies), by name.
FREEZER_RULES = {
    *(f"actions:{v}" for v in ("create", "delete", "get", "get_all", "update", "replace")),
    *(f"backups:{v}" for v in ("create", "delete", "get", "get_all", "update")),
    *(f"clients:{v}" for v in ("create", "delete", "get", "get_all", "create_central")),
    *(
        f"jobs:{v}"
        for v in (
            "create",
            "delete",
            "get",
            "get_all",
            "get_all_projects",
            "update",
            "event:create",
        )
    ),
    *(
        f"sessions:{v}"
        for v in (
            "create",
            "delete",
            "get",
            "get_all",
            "update",
            "replace",
            "action:create",
            "job:add",
            "job:remove",
        )
    ),
}
FREEZER_BASE = {
    "context_is_admin",
    "admin_or_owner",
    "admin_or_owner_or_service",
    "admin_or_service",
    "project_member",
    "project_reader",
    "admin_or_reader_or_service",
}


def test_rule_names_are_freezer_apis():
    names = {rule.name for rule in policy.list_rules()}
    assert policy.RULE_NAMES == FREEZER_RULES
    assert names == FREEZER_RULES | FREEZER_BASE


def test_sample_policy_file_is_generated_from_the_code(tmp_path):
    out = tmp_path / "policy.yaml"
    gen = pathlib.Path(sys.executable).with_name("oslopolicy-sample-generator")
    subprocess.run(
        [str(gen), "--namespace", "stowkit.catalog", "--output-file", str(out)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    sample = REPO / "contrib" / "catalog" / "policy.yaml.sample"
    assert out.read_text() == sample.read_text(), "regenerate contrib/catalog/policy.yaml.sample"
    assert '#"backups:delete": "rule:admin_or_owner_or_service"' in sample.read_text()


@pytest.fixture()
def conf(tmp_path):
    conf = config.load_conf(overrides=[(None, "state_dir", str(tmp_path))])
    server.register_opts(conf)
    return conf


@pytest.fixture()
def keystone_app(conf):
    catalog = server.registry.load("catalog", conf)
    catalog.sync()
    app = CatalogApp(CatalogService(catalog), auth="keystone", authorize=policy.Authorizer(conf))
    yield app
    catalog.close()


def _as(app, roles: str, project: str = "p1") -> Client:
    # What keystonemiddleware's auth_token sets for a valid token.
    return Client(
        app,
        {
            "X-Identity-Status": "Confirmed",
            "X-Project-Id": project,
            "X-User-Id": f"user-{roles.replace(',', '-')}",
            "X-Roles": roles,
        },
    )


def test_reader_reads_but_cannot_delete(keystone_app):
    member, reader = _as(keystone_app, "member,reader"), _as(keystone_app, "reader")
    status, created = member.request("POST", "/v2/p1/backups", BACKUP)
    assert status == 201
    backup_id = created["backup_id"]
    assert reader.request("GET", f"/v2/p1/backups/{backup_id}")[0] == 200
    assert reader.request("GET", "/v2/p1/backups")[0] == 200
    status, err = reader.request("DELETE", f"/v2/p1/backups/{backup_id}")
    assert status == 403 and "backups:delete" in err["description"]
    assert reader.request("POST", "/v2/p1/jobs", JOB)[0] == 403
    assert member.request("GET", f"/v2/p1/backups/{backup_id}")[0] == 200  # still there
    assert member.request("DELETE", f"/v2/p1/backups/{backup_id}")[0] == 204


def test_no_role_no_access_and_service_may_write_backups(keystone_app):
    nobody = _as(keystone_app, "")
    assert nobody.request("GET", "/v2/p1/backups")[0] == 403
    service_user = _as(keystone_app, "service")
    assert service_user.request("POST", "/v2/p1/backups", BACKUP)[0] == 201
    assert service_user.request("POST", "/v2/p1/jobs", JOB)[0] == 403  # admin_or_owner


def test_every_route_asks_its_rule(keystone_app):
    asked: list[str] = []
    keystone_app.authorize = lambda rule, who: asked.append(rule) or True
    member = _as(keystone_app, "member")
    _, job = member.request("POST", "/v2/p1/jobs", JOB)
    job_id = job["job_id"]
    member.request("GET", "/v2/p1/jobs?all_projects=true")
    member.request("POST", f"/v2/p1/jobs/{job_id}/event", {"start": None})
    _, session = member.request("POST", "/v2/p1/sessions", {"description": "s"})
    sid = session["session_id"]
    member.request("PUT", f"/v2/p1/sessions/{sid}/jobs/{job_id}")
    member.request("DELETE", f"/v2/p1/sessions/{sid}/jobs/{job_id}")
    member.request("POST", f"/v2/p1/sessions/{sid}", {"description": "t"})
    member.request("POST", "/v2/p1/clients", {"client_id": "c1", "is_central": True})
    assert asked == [
        "jobs:create",
        "jobs:get_all",
        "jobs:get_all_projects",
        "jobs:event:create",
        "sessions:create",
        "sessions:job:add",
        "sessions:job:remove",
        "sessions:replace",
        "clients:create",
        "clients:create_central",
    ]
    assert set(asked) <= policy.RULE_NAMES


def test_policy_file_overrides_a_default(tmp_path):
    rules = tmp_path / "policy.yaml"
    rules.write_text('"backups:delete": "role:admin"\n')
    ini = tmp_path / "stowkit.conf"
    ini.write_text(f"[oslo_policy]\npolicy_file = {rules}\n")
    authorize = policy.Authorizer(config.load_conf([str(ini)]))
    member = Identity("p1", "u", "", frozenset({"member"}))
    assert not authorize("backups:delete", member)
    assert authorize("backups:get", member)
    assert authorize("backups:delete", Identity("p1", "u", "", frozenset({"admin"})))


def test_noauth_has_no_policy_only_the_admin_roles_privileges(conf):
    app = server.build_app(conf, auth="noauth")
    try:
        assert isinstance(app.app.authorize, policy.RoleDefaults)
        member = Identity("p1", "u", "", frozenset({"member"}))
        admin = Identity("p1", "u", "", frozenset({"service"}))
        assert app.app.authorize("backups:delete", member)
        assert not app.app.authorize("jobs:get_all_projects", member)
        assert app.app.authorize("jobs:get_all_projects", admin)
    finally:
        app.service.catalog.close()


def test_the_policy_decides_who_is_privileged(tmp_path):
    rules = tmp_path / "policy.yaml"
    rules.write_text('"clients:create_central": "role:member"\n"jobs:get_all_projects": "!"\n')
    ini = tmp_path / "stowkit.conf"
    ini.write_text(f"[DEFAULT]\nstate_dir = {tmp_path}\n[oslo_policy]\npolicy_file = {rules}\n")
    conf = config.load_conf([str(ini)])
    catalog = server.registry.load("catalog", conf)
    catalog.sync()
    app = CatalogApp(CatalogService(catalog), auth="keystone", authorize=policy.Authorizer(conf))
    try:
        member, admin = _as(app, "member"), _as(app, "admin")
        central = {"client_id": "c1", "is_central": True}
        assert member.request("POST", "/v2/p1/clients", central)[0] == 201  # policy allows it
        again = {**central, "client_id": "c2"}
        status, err = admin.request("POST", "/v2/p1/clients", again)  # the role alone: no
        assert status == 403 and "clients:create_central" in err["description"]
        assert _as(app, "member", "p2").request("POST", "/v2/p2/jobs", JOB)[0] == 201
        # get_all_projects denied to everyone: an admin sees their own project only.
        _, jobs = admin.request("GET", "/v2/p1/jobs?all_projects=true")
        assert jobs == {"jobs": []}
    finally:
        catalog.close()

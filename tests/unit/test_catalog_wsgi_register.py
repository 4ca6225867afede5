"""``stowkit catalog register``: Keystone v3 calls against a fake, idempotent."""

from __future__ import annotations

import itertools
import os
from typing import Any

import pytest

from stowkit.cli import catalog_register
from stowkit.cli.catalog_register import RegisterError, register
from stowkit.corelib import registry


class FakeSession:
    """Keystone's services, regions and endpoints in memory; records every call."""

    def __init__(self) -> None:
        self.services: list[dict[str, Any]] = []
        self.regions = [{"id": "RegionOne"}]
        self.endpoints: list[dict[str, Any]] = []
        self.calls: list[tuple[str, str]] = []
        self.ids = (f"id{n}" for n in itertools.count())

    def request(self, path, method, json=None, endpoint_filter=None, raise_exc=True):
        assert endpoint_filter["service_type"] == "identity"
        self.calls.append((method, path))
        route, _, query = path.partition("?")
        answer: Any
        if (method, route) == ("GET", "/services"):
            kind = query.split("=", 1)[1]
            answer = {"services": [s for s in self.services if s["type"] == kind]}
        elif (method, route) == ("POST", "/services"):
            answer = {"service": {**json["service"], "id": next(self.ids)}}
            self.services.append(answer["service"])
        elif (method, route) == ("GET", "/regions"):
            answer = {"regions": self.regions}
        elif (method, route) == ("POST", "/regions"):
            self.regions.append(json["region"])
            answer = json
        elif (method, route) == ("GET", "/endpoints"):
            sid = query.split("=", 1)[1]
            answer = {"endpoints": [e for e in self.endpoints if e["service_id"] == sid]}
        elif (method, route) == ("POST", "/endpoints"):
            answer = {"endpoint": {**json["endpoint"], "id": next(self.ids)}}
            self.endpoints.append(answer["endpoint"])
        elif method == "PATCH" and route.startswith("/endpoints/"):
            ep = next(e for e in self.endpoints if e["id"] == route.rsplit("/", 1)[1])
            ep.update(json["endpoint"])
            answer = {"endpoint": ep}
        else:
            raise AssertionError(f"unexpected {method} {path}")
        return _Response(answer)


class _Response:
    def __init__(self, doc):
        self.doc = doc
        self.content = b"x"

    def json(self):
        return self.doc


def Keystone(session):
    return registry.keystone().identity_admin(session, RegisterError)


URLS = {"public": "https://backup.example.org", "internal": "http://10.0.0.5:9090"}
URLS["admin"] = URLS["internal"]


def test_register_creates_then_changes_nothing_then_updates():
    sess = FakeSession()
    ks = Keystone(sess)
    rows = register(ks, "freezer", "d", "RegionTwo", URLS)
    assert [r[1:] for r in rows] == [
        ("public", "RegionTwo", "https://backup.example.org", "created"),
        ("internal", "RegionTwo", "http://10.0.0.5:9090", "created"),
        ("admin", "RegionTwo", "http://10.0.0.5:9090", "created"),
    ]
    assert sess.services == [{"type": "backup", "name": "freezer", "description": "d", "id": "id0"}]
    assert {"id": "RegionTwo"} in sess.regions
    assert {r[4] for r in register(ks, "freezer", "d", "RegionTwo", URLS)} == {"unchanged"}
    moved = {**URLS, "public": "https://backup2.example.org"}
    changes = [r[4] for r in register(ks, "freezer", "d", "RegionTwo", moved)]
    assert changes == ["updated", "unchanged", "unchanged"]
    assert len(sess.services) == 1 and len(sess.endpoints) == 3


def test_keystone_errors_are_one_line():
    from keystoneauth1 import exceptions

    class Refusing:
        def request(self, *a, **kw):
            raise exceptions.Forbidden("You are not authorized")

    with pytest.raises(RegisterError, match="Keystone GET /services"):
        Keystone(Refusing()).call("GET", "/services")


def test_command_table_and_options():
    from stowkit.cli.app import StowkitApp

    assert catalog_register.COMMANDS == {"catalog register": catalog_register.Register}
    cmd = catalog_register.Register(StowkitApp(), None)
    parser = cmd.get_parser("stowkit catalog register")
    args = parser.parse_args(["--url", "http://x:9090", "--os-auth-url", "http://k/v3"])
    assert args.region == "RegionOne" and args.name == "freezer"
    assert args.os_auth_url == "http://k/v3"


def test_missing_credentials_are_a_config_error(monkeypatch):
    from stowkit.cli.app import StowkitApp
    from stowkit.corelib.errors import ConfigError

    for name in [k for k in os.environ if k.startswith("OS_")]:
        monkeypatch.delenv(name)
    cmd = catalog_register.Register(StowkitApp(), None)
    args = cmd.get_parser("stowkit catalog register").parse_args(["--url", "http://x:9090"])
    with pytest.raises(ConfigError, match="credentials incomplete"):
        cmd.take_action(args)

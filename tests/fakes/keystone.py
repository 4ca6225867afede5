"""A small Keystone speaking v3 token requests (stdlib HTTP server on 127.0.0.1).

It knows one user (alice/secret, of SERVICE_PROJECT) and trusts (a token of
USER_PROJECT for a trust id); the ``keystone`` fixture (tests/unit/conftest.py) serves it.
"""

from __future__ import annotations

import http.server
import json
from typing import Any

SERVICE_PROJECT = "a" * 32


USER_PROJECT = "b" * 32


class FakeKeystone(http.server.ThreadingHTTPServer):
    """POST /v3/auth/tokens: password (alice/secret) or token + trust; records the bodies."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[dict[str, Any]] = []
        self.url = f"http://127.0.0.1:{self.server_address[1]}/v3"
        self.catalog_url = "http://catalog.example:9090"

    def answer(self, body: dict[str, Any]) -> tuple[int, dict[str, Any], str]:
        self.requests.append(body)
        ident, scope = body["auth"]["identity"], body["auth"].get("scope", {})
        if ident["methods"] == ["password"]:
            user = ident["password"]["user"]
            if (user.get("name"), user.get("password")) != ("alice", "secret"):
                return 401, {"error": {"code": 401, "message": "bad password"}}, ""
            project, token = SERVICE_PROJECT, "service-token"
        elif ident["methods"] == ["token"] and "OS-TRUST:trust" in scope:
            if ident["token"]["id"] != "service-token":
                return 401, {"error": {"code": 401, "message": "bad token"}}, ""
            project, token = USER_PROJECT, "trust-token-" + scope["OS-TRUST:trust"]["id"]
        else:
            return 400, {"error": {"code": 400, "message": "unexpected"}}, ""
        doc = {
            "token": {
                "methods": ident["methods"],
                "expires_at": "2999-01-01T00:00:00.000000Z",
                "issued_at": "2020-01-01T00:00:00.000000Z",
                "user": {"id": "u1", "name": "alice", "domain": {"id": "default"}},
                "project": {"id": project, "name": "p", "domain": {"id": "default"}},
                "roles": [{"id": "r", "name": "member"}],
                "catalog": [
                    {
                        "type": "backup",
                        "name": "freezer",
                        "id": "s1",
                        "endpoints": [
                            {
                                "id": "e1",
                                "interface": "public",
                                "region": "RegionOne",
                                "region_id": "RegionOne",
                                "url": self.catalog_url,
                            }
                        ],
                    }
                ],
            }
        }
        return 201, doc, token


class _Handler(http.server.BaseHTTPRequestHandler):
    server: FakeKeystone

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        status, doc, token = self.server.answer(body)
        raw = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        if token:
            self.send_header("X-Subject-Token", token)
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args: Any) -> None:
        pass

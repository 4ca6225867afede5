"""The deployable WSGI application: config from the environment, oslo.middleware pipeline."""

from __future__ import annotations

import importlib
import io
import json

import pytest

from stowkit.corelib import config
from stowkit.corelib.catalogapi import server, wsgi


def _call(app, method, path, data=b"", headers=None, chunked=False):
    environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "catalog.test",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.input": io.BytesIO(data),
        "wsgi.url_scheme": "http",
        "HTTP_HOST": "catalog.test",
    }
    if chunked:
        environ["HTTP_TRANSFER_ENCODING"] = "chunked"
        environ["wsgi.input_terminated"] = True  # as gunicorn and cheroot say of a chunked body
    elif data:
        environ["CONTENT_LENGTH"] = str(len(data))
    for key, value in (headers or {}).items():
        environ["HTTP_" + key.upper().replace("-", "_")] = value
    seen = []
    body = b"".join(app(environ, lambda status, hdrs, exc=None: seen.append((status, hdrs))))
    status, hdrs = seen[0]
    return int(status.split()[0]), dict(hdrs), body


@pytest.fixture()
def conf_file(tmp_path):
    path = tmp_path / "stowkit.conf"
    path.write_text(
        f"[DEFAULT]\nstate_dir = {tmp_path}\n"
        "[catalog_api]\nauth_strategy = noauth\nmax_body_size = 2048\n"
        "[oslo_middleware]\nenable_proxy_headers_parsing = true\n"
    )
    conf = config.load_conf([str(path)])
    catalog = server.registry.load("catalog", conf)
    catalog.sync()
    catalog.close()
    return path


@pytest.fixture()
def application(conf_file, monkeypatch):
    monkeypatch.setenv(wsgi.CONFIG_ENV, str(conf_file))
    return wsgi.Application()  # what the module's ``application`` is, not yet built


def test_importing_reads_no_config(monkeypatch, tmp_path):
    monkeypatch.setenv(wsgi.CONFIG_ENV, str(tmp_path / "missing.conf"))
    module = importlib.reload(wsgi)
    assert isinstance(module.__dict__["application"], wsgi.Application)  # uwsgi's lookup
    status, _, body = _call(module.application, "GET", "/")
    assert status == 500 and "not configured" in json.loads(body)["description"]


def test_the_wsgi_entry_serves_the_apis_one_pipeline(application):
    """The WSGI entry point and `catalog serve` build the app the same way: server.build_app."""
    assert isinstance(application.load(), server.Pipeline)
    assert application.load().app.auth == "noauth"


def test_application_is_built_from_the_env_file(application):
    status, _, body = _call(
        application, "POST", "/v2/p1/clients", json.dumps({"client_id": "c"}).encode()
    )
    assert status == 201 and json.loads(body) == {"client_id": "c"}
    assert wsgi.config_files({wsgi.CONFIG_ENV: "a.conf, b.conf"}) == ["a.conf", "b.conf"]


def test_healthcheck_needs_no_auth(application):
    assert _call(application, "GET", "/healthcheck")[0] == 200


def test_request_id_header(application):
    _, headers, _ = _call(application, "GET", "/v2/p1/jobs")
    assert headers["x-openstack-request-id"].startswith("req-")


def test_proxy_headers_make_the_links(application):
    _, _, body = _call(
        application,
        "GET",
        "/",
        headers={"X-Forwarded-Proto": "https", "X-Forwarded-Host": "backup.example.org"},
    )
    links = [v["links"][0]["href"] for v in json.loads(body)["versions"]]
    assert links == ["https://backup.example.org/v1/", "https://backup.example.org/v2/"]


def test_one_body_limit(application):
    big = json.dumps({"client_id": "c2", "pad": "x" * 3000}).encode()
    # Declared too large: 413 before the app; chunked: the catalog's reader cuts it.
    assert _call(application, "POST", "/v2/p1/clients", big)[0] == 413
    status, _, body = _call(application, "POST", "/v2/p1/clients", big, chunked=True)
    assert status == 413 and json.loads(body)["code"] == 413
    small = json.dumps({"client_id": "c3", "pad": "x" * 1500}).encode()
    assert _call(application, "POST", "/v2/p1/clients", small, chunked=True)[0] == 201


def test_the_limit_is_the_catalogs(conf_file):
    conf = config.load_conf([str(conf_file)])
    app = server.build_app(conf)
    assert conf.oslo_middleware.max_request_body_size == 2048
    assert app is not None


def test_console_script_reports_a_bad_config(tmp_path, capsys):
    assert wsgi.main(["--config-file", str(tmp_path / "missing.conf")]) != 0
    assert "missing.conf" in capsys.readouterr().err


def test_a_declared_oversize_body_is_a_json_413(application):
    # oslo's sizelimit would answer in plain text before the app sees it
    big = b"[" * (2 << 20)
    status, headers, body = _call(application, "POST", "/v2/p/backups", big)
    assert status == 413 and headers["Content-Type"] == "application/json"
    assert "body too large" in json.loads(body)["description"]

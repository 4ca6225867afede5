"""The Swift backend reads the environment (proxies, CA bundle) once per HTTP
connection, not on every request, and still honours it."""

from __future__ import annotations

import requests.sessions

from tests.fakes.swift import FakeSwift


def test_the_environment_is_read_once_per_connection_not_per_request(swift, monkeypatch):
    calls = []
    lookup = requests.sessions.get_environ_proxies
    monkeypatch.setattr(
        requests.sessions,
        "get_environ_proxies",
        lambda *a, **k: (calls.append(a[0]), lookup(*a, **k))[1],
    )
    for index in range(5):
        swift.write_object("dev", index, b"\x01" * 4096)
    assert len(FakeSwift.puts) == 5
    # One look-up for the storage connection, one for authentication's own.
    assert len(calls) <= 2, calls


def test_a_proxy_from_the_environment_is_still_used(swift, monkeypatch):
    # The fake Swift doubles as the proxy: requests sent through a proxy name
    # the whole URL in their request line.
    port = swift.opts.auth_url.split(":")[2].split("/")[0]
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{port}")
    swift.write_object("dev", 1, b"\x02" * 4096)
    assert FakeSwift.puts == [(f"http://127.0.0.1:{port}/v1/AUTH_t/dev/disk.part/00000001", 4096)]

"""The one name rule, snapshot names, peer and rate syntax: hostile input is refused."""

from __future__ import annotations

import datetime as dt

import pytest

from stowkit.corelib.errors import InvalidArgument, InvalidName
from stowkit.corelib.names import MAX_NAME_LENGTH, check_name
from stowkit.corelib.volume import parse_rate, snapshot_name, split_snapshot_name
from stowkit.plugins.btrfs.transport import parse_peer

HOSTILE = [
    "",
    ".",
    "..",
    "../x",
    "a/b",
    "/etc",
    "x;touch /tmp/p",
    "$(reboot)",
    "`id`",
    "a b",
    " a",
    "a\nb",
    "a\x00b",
    "-rf",
    ".hidden",
    "a|b",
    "a&b",
    "a>b",
    "é",
    "x" * (MAX_NAME_LENGTH + 1),
    None,
    42,
    b"bytes",
]


@pytest.mark.parametrize("name", ["a", "A1", "db_data", "web-1.2", "0", "x" * MAX_NAME_LENGTH])
def test_good_names(name):
    assert check_name(name) == name


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_names(name):
    with pytest.raises(InvalidName) as err:
        check_name(name, "volume name")
    assert "\n" not in str(err.value)


def test_snapshot_name_roundtrip_is_utc_and_sortable():
    when = dt.datetime(2026, 11, 22, 3, 40, 5, 123456, tzinfo=dt.UTC)
    name = snapshot_name("db", when)
    assert name == "db@2026-11-22T03-40-05.123456"
    assert ":" not in name
    assert split_snapshot_name(name) == ("db", when)
    later = snapshot_name("db", when + dt.timedelta(microseconds=1))
    assert sorted([later, name]) == [name, later]


def test_snapshot_name_converts_to_utc():
    paris = dt.timezone(dt.timedelta(hours=1))
    name = snapshot_name("db", dt.datetime(2026, 1, 1, 1, 0, tzinfo=paris))
    assert name == "db@2026-01-01T00-00-00.000000"


@pytest.mark.parametrize(
    "name",
    [
        "db",
        "db@",
        "@2026-11-22T03-40-05.123456",
        "../db@2026-11-22T03-40-05.123456",
        "db@2026-11-22T03:40:05.123456",
        "db@yesterday",
        "db@2026-11-22T03-40-05.123456/../../x",
        "db@2026-11-22T03-40-05.123456;id",
        "a@b@2026-11-22T03-40-05.123456",
        None,
    ],
)
def test_bad_snapshot_names(name):
    with pytest.raises(InvalidName):
        split_snapshot_name(name)


@pytest.mark.parametrize(
    ("spec", "user", "host", "port"),
    [
        ("127.0.0.1", "root", "127.0.0.1", 22),
        ("b.example.org:2222", "root", "b.example.org", 2222),
        ("backup@node-2", "backup", "node-2", 22),
        ("[::1]:2200", "root", "[::1]", 2200),
    ],
)
def test_peers(spec, user, host, port):
    peer = parse_peer(spec, "root", 22)
    assert (peer.user, peer.host, peer.port) == (user, host, port)


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "-oProxyCommand=touch /tmp/p",
        "host;id",
        "a b",
        "host:0",
        "host:99999",
        "user@",
        "@host",
        "-p",
        "host/x",
        "$(id)",
        None,
    ],
)
def test_hostile_peers(spec):
    with pytest.raises(InvalidArgument):
        parse_peer(spec, "root", 22)


@pytest.mark.parametrize(
    ("text", "rate"),
    [("0", 0), ("1000", 1000), ("500K", 512000), ("10M", 10 << 20), ("1g", 1 << 30)],
)
def test_rates(text, rate):
    assert parse_rate(text) == rate


@pytest.mark.parametrize("text", ["fast", "-1", "10X", ""])
def test_bad_rates(text):
    with pytest.raises(InvalidArgument):
        parse_rate(text)

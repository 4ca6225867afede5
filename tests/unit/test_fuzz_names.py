"""Property-based fuzzing of the name and host rules and the CLI's name arguments.

Budget: ``STOWKIT_FUZZ_EXAMPLES`` examples per property (default 150; the CLI
runs a third of it).  A failure prints the smallest input hypothesis found.
"""

from __future__ import annotations

import os
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stowkit.cli.app import main
from stowkit.corelib.errors import InvalidArgument, InvalidName
from stowkit.corelib.names import MAX_NAME_LENGTH, check_host, check_name
from stowkit.plugins.btrfs import transport

EXAMPLES = int(os.environ.get("STOWKIT_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# Mostly the characters that matter to the rules, some of anything.
_ALPHABET = st.sampled_from("aZ09_.-@:[]/ ;$\\\x00\n\u00e9\u0663") | st.characters()
name_like = st.text(_ALPHABET, max_size=40) | st.text(
    st.sampled_from("ab1.-_"), min_size=190, max_size=260
)
anything = name_like | st.none() | st.integers() | st.binary(max_size=10) | st.lists(st.text())


@FUZZ
@given(name=anything)
def test_check_name_accepts_only_safe_path_components(name):
    try:
        got = check_name(name)
    except InvalidName as err:
        assert "\n" not in str(err)
        return
    assert got == name and isinstance(name, str)
    assert 0 < len(name) <= MAX_NAME_LENGTH
    assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name, re.ASCII)
    base = "/srv/root"
    joined = os.path.join(base, name)
    assert os.path.dirname(joined) == base and os.path.normpath(joined) == joined
    assert len(name.encode()) + len("@2026-12-01T10-00-00.000000") <= 255


hosts = (
    st.text(_ALPHABET, max_size=30)
    | st.builds(
        lambda u, h, p: u + h + p,
        st.sampled_from(["", "root@", "u" * 32 + "@", "u" * 33 + "@", "-o@", "_x@"]),
        st.sampled_from(["h", "10.0.0.1", "[::1]", "[::1", "h" * 253, "h" * 254, "-h", "h_1"]),
        st.sampled_from(["", ":22", ":0", ":65535", ":65536", ":99999", ":", ":abc", ":000022"]),
    )
    | anything
)


@FUZZ
@given(spec=hosts)
def test_one_host_rule_for_send_sync_and_the_scheduler(spec):
    """The scheduler's rule (names.check_host) accepts exactly what send/sync accept."""
    try:
        transport.parse_peer(spec, "root", 22)
        peer_ok = True
    except InvalidArgument:
        peer_ok = False
    try:
        check_host(spec)
        ours = True
    except InvalidArgument as err:
        assert "\n" not in str(err) and len(str(err)) < 300
        ours = False
    assert ours == peer_ok


@pytest.fixture(scope="module")
def conf(tmp_path_factory):
    where = tmp_path_factory.mktemp("names")
    path = where / "s.conf"
    path.write_text(f"[DEFAULT]\nstate_dir = {where}/state\n")
    return str(path)


@settings(FUZZ, max_examples=max(10, EXAMPLES // 3))
@given(name=name_like.filter(lambda n: not n.startswith("-")))
def test_cli_name_arguments_are_refused_in_one_line(conf, capsys, name):
    code = main(["--config-file", conf, "schedule", "add", name, "snapshot", "5"])
    out = capsys.readouterr()
    try:
        check_name(name)
    except InvalidName:
        assert code == 4, out.err
        lines = out.err.strip().splitlines()
        assert len(lines) == 1 and "invalid volume name" in lines[0], out.err
        assert "Traceback" not in out.err
    else:
        assert code == 0, out.err
        assert main(["--config-file", conf, "schedule", "remove", name, "snapshot"]) == 0
        capsys.readouterr()

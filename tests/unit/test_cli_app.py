import json
import subprocess
import sys

import pytest

from stowkit.cli.app import split_config_args, split_config_files
from stowkit.cli.common import parse_size
from stowkit.corelib.errors import InvalidArgument


def stowkit(*args, check=False):
    proc = subprocess.run(
        [sys.executable, "-m", "stowkit.cli.app", *args], capture_output=True, text=True, timeout=60
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_help_lists_commands():
    out = stowkit("--help", check=True).stdout
    assert "usage: stowkit" in out
    assert "backends" in out


def test_backends_json_lists_every_namespace(tmp_path):
    conf = tmp_path / "s.conf"
    conf.write_text("[image]\nbackend = glance\n")
    rows = json.loads(
        stowkit("--config-file", str(conf), "backends", "-f", "json", check=True).stdout
    )
    by_key = {(r["namespace"], r["name"]): r for r in rows}
    assert {ns for ns, _ in by_key} == {"volume", "image", "blockstore", "catalog", "imagetask"}
    assert by_key[("image", "glance")]["selected"] is True
    assert by_key[("image", "local")]["selected"] is False


def test_config_file_may_follow_the_command(tmp_path):
    conf = tmp_path / "s.conf"
    conf.write_text("[catalog]\nbackend = other\n")
    rows = json.loads(
        stowkit(
            "backends",
            "--namespace",
            "catalog",
            "-f",
            "json",
            "--config-file",
            str(conf),
            check=True,
        ).stdout
    )
    assert all(r["selected"] is False for r in rows)


@pytest.mark.parametrize(
    "args,code,pattern",
    [
        (["--config-file", "/nonexistent/stowkit.conf", "backends"], 10, "config file not found"),
        (["backends", "--bogus"], 2, "unrecognized arguments: --bogus"),
        (["backends", "--namespace", "toaster"], 2, "invalid choice"),
        (["--bogus"], 2, "Unknown command"),
    ],
)
def test_user_mistakes_get_one_line_and_an_exit_code(args, code, pattern):
    proc = stowkit(*args)
    assert proc.returncode == code
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert pattern in lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout


def test_split_config_files():
    files, rest = split_config_files(
        ["--config-file", "a", "volume", "list", "--config-file=b", "-f", "json"]
    )
    assert files == ["a", "b"]
    assert rest == ["volume", "list", "-f", "json"]
    assert split_config_files(["x", "--config-file"]) == ([], ["x", "--config-file"])


def test_split_config_args_lifts_config_dir_too():
    files, dirs, rest = split_config_args(
        ["--config-dir", "d1", "volume", "list", "--config-file=b", "--config-dir=d2", "-f", "json"]
    )
    assert (files, dirs) == (["b"], ["d1", "d2"])
    assert rest == ["volume", "list", "-f", "json"]
    assert split_config_args(["x", "--config-dir"]) == ([], [], ["x", "--config-dir"])


def test_config_dir_may_follow_the_command(tmp_path):
    conf_d = tmp_path / "conf.d"
    conf_d.mkdir()
    (conf_d / "backend.conf").write_text("[image]\nbackend = glance\n")
    for argv in (
        ["--config-dir", str(conf_d), "backends", "--namespace", "image", "-f", "json"],
        ["backends", "--namespace", "image", "-f", "json", "--config-dir", str(conf_d)],
    ):
        proc = stowkit(*argv)
        assert proc.returncode == 0, proc.stderr
        selected = {r["name"] for r in json.loads(proc.stdout) if r["selected"]}
        assert selected == {"glance"}
    proc = stowkit("backends", "--config-dir", str(tmp_path / "nope"))
    assert proc.returncode == 10
    assert proc.stderr.strip() == f"stowkit: config directory not found: {tmp_path / 'nope'}"


@pytest.mark.parametrize(
    "text,value",
    [("4096", 4096), ("64K", 65536), ("1G", 1 << 30), ("1.5M", 3 << 19), ("2MiB", 2 << 20)],
)
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "abc", "-1K", "0", "1.3", "5X"])
def test_parse_size_rejects(text):
    with pytest.raises(InvalidArgument, match="invalid size"):
        parse_size(text)


def test_a_builtin_command_module_that_cannot_be_imported_fails_loudly(monkeypatch):
    from stowkit.cli import app

    missing = "stowkit.cli.no_such_job"
    monkeypatch.setattr(app, "BUILTIN_MODULES", (*app.BUILTIN_MODULES, missing))
    with pytest.raises(ModuleNotFoundError, match=missing):
        app.StowkitApp()


def test_the_app_parser_never_takes_an_abbreviation_for_config_file():
    # What lets `image sync --config k=v` reach the command untouched.
    from stowkit.cli.app import StowkitApp

    parser = StowkitApp().parser
    options, rest = parser.parse_known_args(["--config", "master.x=y", "image", "status"])
    assert options.config_file is None
    assert rest == ["--config", "master.x=y", "image", "status"]


def test_backends_checks_availability_quietly():
    # Importing the client libraries must not print (alembic logs while loading).
    proc = stowkit("backends", "-f", "json", check=True)
    assert proc.stderr == ""
    rows = {(r["namespace"], r["name"]): r for r in json.loads(proc.stdout)}
    assert rows[("catalog", "sql")]["status"] == "ok"


def test_os_cloud_sets_the_cloud_every_openstack_backend_uses(tmp_path):
    from stowkit.cli.app import StowkitApp

    app = StowkitApp([str(_empty_conf(tmp_path))])
    app.options, _ = app.parser.parse_known_args(["--os-cloud", "mycloud", "backends"])
    assert app.conf.os_cloud == "mycloud"
    plain = StowkitApp([str(_empty_conf(tmp_path))])
    plain.options, _ = plain.parser.parse_known_args(["backends"])
    assert plain.conf.os_cloud is None


def _empty_conf(tmp_path):
    path = tmp_path / "empty.conf"
    path.write_text(f"[DEFAULT]\nstate_dir = {tmp_path}\n")
    return path

"""A mistake in the configuration or on the command line: one line, the right exit code.

The examples of issue 13 ("Mistakes"), run as users run stowkit (a process),
plus the in-process paths every command shares.
"""

from __future__ import annotations

import subprocess

import pytest
from oslo_config import cfg

from stowkit.cli.app import main
from stowkit.corelib import config
from stowkit.corelib.errors import ConfigError
from tests.commands import STOWKIT


def _stowkit(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*STOWKIT, *args], capture_output=True, text=True, timeout=60)


def _one_line(proc: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_bad_backend_option_value_names_group_option_and_file(tmp_path):
    conf = tmp_path / "stowkit.conf"
    conf.write_text(f"[DEFAULT]\nstate_dir = {tmp_path}\n[volume_btrfs]\ncopyonwrite = maybe\n")
    proc = _stowkit("--config-file", str(conf), "volume", "list")
    assert proc.returncode == ConfigError.exit_code == 10
    line = _one_line(proc)
    assert line.startswith("stowkit: invalid value for [volume_btrfs] copyonwrite")
    assert str(conf) in line and "'maybe'" in line
    assert "LocationInfo" not in line


def test_server_port_out_of_range_is_refused_before_announcing(tmp_path):
    conf = tmp_path / "stowkit.conf"
    conf.write_text(f"[DEFAULT]\nstate_dir = {tmp_path}\n")
    proc = _stowkit("--config-file", str(conf), "catalog", "serve", "--no-auth", "--port", "99999")
    assert proc.returncode == 2
    assert "invalid port '99999'" in _one_line(proc)
    assert "catalog API on" not in proc.stdout + proc.stderr
    assert not (tmp_path / "catalog.sqlite").exists()


def test_unknown_column_is_a_usage_error(tmp_path, capsys):
    conf = tmp_path / "stowkit.conf"
    conf.write_text(f"[DEFAULT]\nstate_dir = {tmp_path}\n")
    for columns in (["-c", "Nope"], ["-c", "name", "-c", "Nope"]):
        assert main(["--config-file", str(conf), "blockstore", "list", *columns]) == 2
        out, err = capsys.readouterr()
        assert out == ""
        assert err.splitlines() == [
            "stowkit: error: unknown column 'Nope' (-c): choose from name, size, object_size, "
            "objects, objects_stored, locked_by (see --help)"
        ]
    proc = _stowkit("--config-file", str(conf), "backends", "-c", "Nope")
    assert proc.returncode == 2 and "unknown column 'Nope'" in _one_line(proc)


def test_server_group_checked_before_any_work(tmp_path, capsys):
    conf = tmp_path / "stowkit.conf"
    conf.write_text(f"[DEFAULT]\nstate_dir = {tmp_path}\n[catalog_api]\nport = 99999\n")
    assert main(["--config-file", str(conf), "catalog", "serve", "--no-auth"]) == 10
    err = capsys.readouterr().err
    assert err.splitlines() == [
        f"stowkit: invalid value for [catalog_api] port (set in {conf}): "
        "Should be less than or equal to 65535"
    ]
    assert not (tmp_path / "catalog.sqlite").exists()


def test_bad_core_option_is_a_config_error(tmp_path):
    path = tmp_path / "a.conf"
    path.write_text("[blockstore]\nbackend = local\n")
    config.load_conf([str(path)])  # fine
    conf = cfg.ConfigOpts()
    conf.register_opts([cfg.IntOpt("workers")], group="pool")
    path.write_text("[pool]\nworkers = many\n")
    conf(args=[], default_config_files=[str(path)], default_config_dirs=[])
    with pytest.raises(ConfigError, match=r"^invalid value for \[pool\] workers \(set in "):
        config.check_values(conf)
    config.check_values(conf, groups=["other"])  # only the groups asked for


def test_option_read_mid_command_is_still_one_line(tmp_path):
    # An option registered and read late (not checked up front) still comes
    # out as the ConfigError naming it, never oslo's internal text.
    path = tmp_path / "a.conf"
    path.write_text("[late]\nlimit = lots\n")
    conf = config.load_conf([str(path)])
    conf.register_opts([cfg.IntOpt("limit")], group="late")
    with pytest.raises(cfg.ConfigFileValueError) as raised:
        conf.late.limit  # noqa: B018
    err = config.as_config_error(conf, raised.value)
    assert str(err).startswith("invalid value for [late] limit (set in ")
    assert err.exit_code == 10

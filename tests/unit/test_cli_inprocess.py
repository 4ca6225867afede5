"""The app can run many times in one process, as tests and embedding scripts do."""

import io
import logging

from stowkit.cli.app import main


def test_repeated_in_process_runs_keep_one_console_handler(capsys, tmp_path):
    missing = str(tmp_path / "missing.conf")
    root = logging.getLogger()
    before = len(root.handlers)
    for _ in range(3):
        assert main(["backends", "--namespace", "volume", "-f", "value"]) == 0
        capsys.readouterr()
    assert len(root.handlers) <= before + 1
    # A handler left from a run whose stream is gone must not break a later run.
    stale = io.StringIO()
    for handler in root.handlers:
        if getattr(handler, "_stowkit", False):
            handler.setStream(stale)
    stale.close()
    assert main(["--config-file", missing, "backends"]) == 10
    err = capsys.readouterr().err
    assert "Logging error" not in err
    assert err.strip().splitlines() == [f"stowkit: config file not found: {missing}"]


def test_builtin_commands_do_not_scan_installed_distributions(monkeypatch, capsys):
    # cliff's epilog note maps every installed distribution to its modules
    # (0.6 s per run); stowkit's own commands skip it, plugin commands keep it.
    import cliff.command

    def scan():
        raise AssertionError("scanned every installed distribution")

    monkeypatch.setattr(cliff.command, "_get_distributions_by_modules", scan)
    assert main(["backends", "--namespace", "volume", "-f", "value"]) == 0
    assert main(["blockstore", "setup", "x", "--size", "lots"]) == 3
    assert "invalid size 'lots'" in capsys.readouterr().err

"""oslo.log for long-running commands: [DEFAULT] log_file and friends, stderr by default,
one config-error line for a log that cannot be kept, short commands untouched."""

from __future__ import annotations

import subprocess

import pytest

from tests.commands import STOWKIT
from tests.fakes.catalog_process import conf_file, serve_and_stop
from tests.fakes.net import free_port

STOP_LINE = "INFO stowkit.corelib.wsgiserve [-] stowkit-catalog: stop signal"


def test_a_service_logs_to_the_configured_file_in_oslo_format(tmp_path):
    log = tmp_path / "logs" / "catalog.log"
    log.parent.mkdir()
    done = serve_and_stop(conf_file(tmp_path, f"log_file = {log}\n"))
    assert done.returncode == 0, done.stderr
    text = log.read_text()
    assert STOP_LINE in text  # timestamp, pid, level, logger, request id, message
    assert "stop signal" not in done.stderr  # the file, not the terminal


def test_without_a_destination_a_service_logs_to_stderr_never_stdout(tmp_path):
    done = serve_and_stop(conf_file(tmp_path))
    assert done.returncode == 0, done.stderr
    assert STOP_LINE in done.stderr
    assert "stop signal" not in done.stdout


def test_log_file_and_debug_from_the_command_line_win(tmp_path):
    log = tmp_path / "cli.log"
    done = serve_and_stop(conf_file(tmp_path, "debug = false\n"), "--log-file", str(log), "--debug")
    assert done.returncode == 0, done.stderr
    text = log.read_text()
    assert "DEBUG stowkit.corelib.servicelog" in text and STOP_LINE in text


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("log_file = {tmp}/no/such/dir/x.log\n", "cannot open the log {tmp}/no/such/dir/x.log: "),
        ("log_config_append = {tmp}/missing.ini\n", "cannot load [DEFAULT] log_config_append: "),
    ],
)
def test_a_log_that_cannot_be_kept_is_one_config_error_before_any_work(tmp_path, extra, message):
    conf = conf_file(tmp_path, extra.format(tmp=tmp_path))
    proc = subprocess.run(
        [
            *STOWKIT,
            "--config-file",
            conf,
            "catalog",
            "serve",
            "--no-auth",
            "--port",
            str(free_port()),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 10
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("stowkit: " + message.format(tmp=tmp_path))
    assert not (tmp_path / "catalog.sqlite").exists()


def test_short_commands_keep_cliffs_console_logging(tmp_path):
    log = tmp_path / "never.log"
    proc = subprocess.run(
        [
            *STOWKIT,
            "--config-file",
            conf_file(tmp_path, f"log_file = {log}\n"),
            "backends",
            "-f",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert not log.exists()

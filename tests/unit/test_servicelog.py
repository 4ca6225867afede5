"""oslo.log for long-running commands: [DEFAULT] log_file and friends, stderr by default,
one config-error line for a log that cannot be kept, short commands untouched."""

from __future__ import annotations

import http.client
import signal
import socket
import subprocess
import time

import pytest

from tests.commands import STOWKIT

STOP_LINE = "INFO stowkit.corelib.wsgiserve [-] stowkit-catalog: stop signal"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _conf(tmp_path, extra: str = "") -> str:
    path = tmp_path / "stowkit.conf"
    path.write_text(f"[DEFAULT]\nstate_dir = {tmp_path}\n{extra}")
    return str(path)


def _serve_and_stop(conf: str, *args: str) -> subprocess.CompletedProcess:
    port = _port()
    argv = [*STOWKIT, "--config-file", conf, *args, "catalog", "serve", "--no-auth"]
    proc = subprocess.Popen(
        [*argv, "--port", str(port), "--workers", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        while True:  # until it answers (any status: / is the 300 versions document)
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/")
                conn.getresponse().read()
                conn.close()
                break
            except OSError:
                assert proc.poll() is None, proc.communicate()
                time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_a_service_logs_to_the_configured_file_in_oslo_format(tmp_path):
    log = tmp_path / "logs" / "catalog.log"
    log.parent.mkdir()
    done = _serve_and_stop(_conf(tmp_path, f"log_file = {log}\n"))
    assert done.returncode == 0, done.stderr
    text = log.read_text()
    assert STOP_LINE in text  # timestamp, pid, level, logger, request id, message
    assert "stop signal" not in done.stderr  # the file, not the terminal


def test_without_a_destination_a_service_logs_to_stderr_never_stdout(tmp_path):
    done = _serve_and_stop(_conf(tmp_path))
    assert done.returncode == 0, done.stderr
    assert STOP_LINE in done.stderr
    assert "stop signal" not in done.stdout


def test_log_file_and_debug_from_the_command_line_win(tmp_path):
    log = tmp_path / "cli.log"
    done = _serve_and_stop(_conf(tmp_path, "debug = false\n"), "--log-file", str(log), "--debug")
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
    conf = _conf(tmp_path, extra.format(tmp=tmp_path))
    proc = subprocess.run(
        [*STOWKIT, "--config-file", conf, "catalog", "serve", "--no-auth", "--port", str(_port())],
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
            _conf(tmp_path, f"log_file = {log}\n"),
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

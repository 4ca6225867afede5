"""`stowkit blockstore serve` and `stowkit-swiftnbd-server`: arguments and errors."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading

import pytest

from stowkit.cli.compat import swiftnbd_server
from tests.commands import STOWKIT


@pytest.fixture
def conf(tmp_path):
    path = tmp_path / "stowkit.conf"
    path.write_text(f"[DEFAULT]\nstate_dir = {tmp_path}/state\n[blockstore]\nbackend = local\n")
    return str(path)


def stowkit(conf: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*STOWKIT, "--config-file", conf, *args], capture_output=True, text=True, timeout=60
    )


def test_serve_unknown_device_is_one_line_not_found(conf):
    out = stowkit(conf, "blockstore", "serve", "--port", "0", "nope")
    assert out.returncode == 5 and len(out.stderr.strip().splitlines()) == 1


def test_serve_bad_cache_size_and_no_devices(conf):
    out = stowkit(conf, "blockstore", "serve", "--cache-size", "lots")
    assert out.returncode == 3 and "invalid size" in out.stderr
    out = stowkit(conf, "blockstore", "serve", "--port", "0")
    assert out.returncode == 3 and "no device to serve" in out.stderr


def test_serve_port_out_of_range_is_a_usage_error(conf):
    out = stowkit(conf, "blockstore", "serve", "--port", "99999")
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert "invalid port '99999': use 0 to 65535" in out.stderr


def test_serve_on_a_busy_port_names_the_address_and_the_reason(conf):
    assert stowkit(conf, "blockstore", "setup", "d", "--size", "1M").returncode == 0
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = stowkit(conf, "blockstore", "serve", "--port", str(port), "--read-only")
    assert out.returncode == 9, out.stderr
    assert out.stderr == f"stowkit: cannot listen on 127.0.0.1:{port}: Address already in use\n"
    assert out.stdout == ""  # nothing announced


def serve_then_stop(conf: str, *args: str) -> str:
    """Start `blockstore serve`, read its first line, SIGTERM it; the line (exit 0 checked).

    No `timeout` wrapper: the signal must reach the server itself, not a wrapper.
    """
    proc = subprocess.Popen(
        [*STOWKIT, "--config-file", conf, "blockstore", "serve", "--port", "0", *args],
        stdout=subprocess.PIPE,
        text=True,
    )
    watchdog = threading.Timer(60, proc.kill)  # a server that never prints cannot hang us
    watchdog.start()
    try:
        line = proc.stdout.readline()
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(30) == 0
        return line
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_serve_refuses_to_start_on_a_device_locked_elsewhere(conf):
    assert stowkit(conf, "blockstore", "setup", "d", "--size", "1M").returncode == 0
    assert stowkit(conf, "blockstore", "lock", "d", "--owner", "backup job").returncode == 0
    out = stowkit(conf, "blockstore", "serve", "--port", "0", "d")
    assert out.returncode == 8, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "backup job" in out.stderr
    assert "serving" not in out.stdout  # never listened
    # Locked only while clients are connected: it starts, and refuses them instead.
    assert serve_then_stop(conf, "--lock-scope", "connection", "d").startswith("serving nbd://")


def test_serve_prints_uri_and_stops_cleanly_on_sigterm(conf):
    assert (
        stowkit(conf, "blockstore", "setup", "d", "--size", "1M", "--object-size", "64K").returncode
        == 0
    )
    line = serve_then_stop(conf)
    assert line.startswith("serving nbd://127.0.0.1:") and line.rstrip().endswith("/d")


def test_swiftnbd_server_flags_match_the_seed():
    parser = swiftnbd_server.build_parser()
    args = parser.parse_args(
        ["--secrets", "S", "-a", "http://x/auth/v1.0", "-b", "0.0.0.0", "-p", "10811", "-c", "8",
         "-l", "L", "--syslog", "-f", "--pid-file", "P", "-v", "-k", "--keystone-region", "R"]
    )  # fmt: skip
    assert (args.secrets_file, args.authurl, args.bind_address, args.bind_port) == (
        "S", "http://x/auth/v1.0", "0.0.0.0", 10811,
    )  # fmt: skip
    assert (args.cache_limit, args.log_file, args.syslog, args.foreground) == (8, "L", True, True)
    assert (args.pidfile, args.verbose, args.keystone, args.keystone_region) == (
        "P",
        True,
        True,
        "R",
    )


def test_swiftnbd_server_refuses_a_tiny_cache_and_missing_secrets(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        swiftnbd_server.main(["-c", "0", "--secrets", str(tmp_path / "none")])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        swiftnbd_server.main(["--secrets", str(tmp_path / "none")])
    assert exc.value.code == 2 and "Failed to load secrets" in capsys.readouterr().err


def test_swiftnbd_server_logs_through_oslo_log_with_swiftnbds_flags(tmp_path, capsys):
    import logging

    # earlier in-process tests may have left this logger quietened (a logging
    # config disables the loggers it does not name): start from a plain one
    named = logging.getLogger("swiftnbd")
    named.disabled, named.propagate = False, True
    named.setLevel(logging.NOTSET)
    secrets = tmp_path / "secrets.conf"
    secrets.write_text("")  # no container: the server says so and exits
    log = tmp_path / "server.log"
    argv = ["--secrets", str(secrets), "-f", "--pid-file", str(tmp_path / "pid"), "-v"]
    try:
        assert swiftnbd_server.main([*argv, "-l", str(log)]) == 1
        text = log.read_text()
        assert " ERROR swiftnbd [-] no container to serve" in text  # oslo.log's format
        assert "DEBUG stowkit.corelib.servicelog" in text  # -v is oslo.log's debug
        bad = tmp_path / "no" / "dir" / "x.log"
        assert swiftnbd_server.main([*argv, "-l", str(bad)]) == 10
        assert (
            capsys.readouterr()
            .err.splitlines()[-1]
            .startswith(f"swiftnbd-server: cannot open the log {bad}: ")
        )
    finally:  # oslo.log configured this process's root logger: give pytest its own back
        for handler in logging.getLogger().handlers[:]:
            if not type(handler).__module__.startswith("_pytest"):
                logging.getLogger().removeHandler(handler)


def test_swiftnbd_server_locks_a_container_while_a_client_uses_it_as_swiftnbd_did(
    tmp_path, monkeypatch
):
    # swiftnbd locked a container at a client's connection and unlocked it at
    # the disconnect; stowkit.conf's [blockstore] lock_scope can say otherwise.
    import stowkit.corelib.nbd.server as nbd_server
    from tests.fakes.nbd import MemoryBlockStore

    store = MemoryBlockStore()
    store.create_device("c1", 1 << 20, 65536)

    class OneStore:
        def __init__(self, args, secrets):
            pass

        def store(self, container):
            return store

    scopes = []
    monkeypatch.setattr(swiftnbd_server, "Ctl", OneStore)
    monkeypatch.setattr(
        nbd_server, "serve_many", lambda entries, b, p, settings, ready: scopes.append(
            settings.lock_scope
        ),
    )  # fmt: skip
    secrets = tmp_path / "secrets.conf"
    secrets.write_text("[c1]\nusername = u\npassword = p\n")
    secrets.chmod(0o600)
    argv = ["--secrets", str(secrets), "-f", "--pid-file", str(tmp_path / "pid")]
    try:
        assert swiftnbd_server.main(argv) == 0
        conf = tmp_path / "stowkit.conf"
        conf.write_text("[blockstore]\nlock_scope = server\n")
        load = swiftnbd_server.config.load_conf
        monkeypatch.setattr(
            swiftnbd_server.config, "load_conf", lambda files=None: load([str(conf)])
        )
        assert swiftnbd_server.main(argv) == 0
    finally:  # oslo.log configured this process's root logger: give pytest its own back
        import logging

        for handler in logging.getLogger().handlers[:]:
            if not type(handler).__module__.startswith("_pytest"):
                logging.getLogger().removeHandler(handler)
    assert scopes == ["connection", "server"]

"""`stowkit blockstore ...` on the local backend, in process; swiftnbd-ctl's parsing."""

import logging
import os

import pytest

from stowkit.cli import app
from stowkit.cli.blockstore import ProgressLine, human
from stowkit.cli.compat import swiftnbd_ctl
from stowkit.corelib import blocklock
from stowkit.plugins.swift.auth import auth_version
from stowkit.plugins.swift.store import SwiftBlockStore


@pytest.fixture
def run(tmp_path, capsys):
    conf = tmp_path / "stowkit.conf"
    conf.write_text(f"[DEFAULT]\nstate_dir = {tmp_path / 'state'}\n")

    def run(*args, code=0):
        # cliff adds a console handler to the root logger on each run, bound
        # to this test's captured stderr: drop it afterwards.
        root = logging.getLogger()
        handlers = list(root.handlers)
        try:
            rc = app.main(["--config-file", str(conf), "blockstore", *args])
        except SystemExit as exc:  # argparse's usage errors
            rc = exc.code
        finally:
            root.handlers[:] = handlers
        out, err = capsys.readouterr()
        assert "Traceback" not in err
        assert rc == code, err
        return out, err

    return run


def test_setup_show_list_delete(run):
    out, _ = run("setup", "d1", "--size", "2M", "--object-size", "64K", "-f", "value")
    assert out.split()[:3] == ["d1", "2097152", "65536"]
    run("setup", "d2", "--size", "1G")
    out, _ = run("list", "-f", "csv")
    assert out.splitlines()[1:] == [
        '"d1",2097152,65536,32,0,""',
        '"d2",1073741824,4194304,256,0,""',
    ]
    out, _ = run("show", "d2", "-f", "value", "-c", "objects", "-c", "object_size")
    assert out.split() == ["4194304", "256"]
    out, _ = run("setup", "d3", "--size", "10M", "-f", "value", "-c", "object_size")
    assert out == "2097152\n"  # the default object size does not divide 10M: 2M does
    run("delete", "d3")
    out, _ = run("delete", "d1")
    assert out == "deleted device d1\n"
    out, _ = run("list", "-f", "value", "-c", "name")
    assert out == "d2\n"


def test_copy_round_trip_and_lock_interplay(run, tmp_path):
    src = tmp_path / "src"
    src.write_bytes(os.urandom(100_000))
    out, err = run("upload", str(src), "img", "--create", "--object-size", "64K")
    assert "uploaded img: 128 KiB" in out and "2 objects" in out
    assert err == ""  # no progress meter: stderr is not a terminal
    run("lock", "img")
    _, err = run("upload", str(src), "img", code=8)
    assert "locked by stowkit blockstore lock" in err and err.count("\n") == 1
    _, err = run("download", "img", str(tmp_path / "x"), code=8)
    assert "--force" in err
    run("download", "img", str(tmp_path / "x"), "--force")
    out, _ = run("unlock", "img")
    assert out.startswith("unlocked device img: broke the lock of stowkit blockstore lock on ")
    dst = tmp_path / "dst"
    run("download", "img", str(dst), "--threads", "3")
    assert dst.read_bytes()[:100_000] == src.read_bytes()
    assert dst.read_bytes()[100_000:] == bytes(131072 - 100_000)


def test_a_command_says_what_it_did_once_and_v_adds_the_librarys_messages(run, tmp_path, capsys):
    """cliff shows the library's INFO on the console by default: the unlock's own line
    came twice (its log, then its output).  As openstackclient: -v shows it."""
    run("setup", "d", "--size", "1M")
    run("lock", "d")
    out, err = run("unlock", "d")
    assert out.startswith("unlocked device d:") and err == ""
    run("lock", "d")
    conf = str(tmp_path / "stowkit.conf")
    root = logging.getLogger()
    handlers = list(root.handlers)
    try:
        assert app.main(["-v", "--config-file", conf, "blockstore", "unlock", "d"]) == 0
    finally:
        root.handlers[:] = handlers
    out, err = capsys.readouterr()
    assert out.startswith("unlocked device d:") and "device d: broke the lock of" in err


@pytest.mark.parametrize(
    "args, code, fragment",
    [
        (("setup", "x", "--size", "lots"), 3, "invalid size"),
        (("setup", "x", "--size=-1M"), 3, "invalid size"),
        (("setup", "x", "--size", "1M", "--object-size", "100K"), 3, "power of two"),
        (("setup", "../x", "--size", "1M"), 4, "invalid device name"),
        (("setup", "$(reboot)", "--size", "1M"), 4, "invalid device name"),
        (("setup", "x"), 2, "--size"),
        (("show", "nope"), 5, "device nope not found"),
        (("delete", "nope"), 5, "device nope not found"),
        (("lock", "nope"), 5, "device nope not found"),
        (("lock", "nope", "--lease", "-3"), 3, "--lease"),
        (("upload", "/nonexistent", "nope"), 3, "cannot read /nonexistent"),
        (("upload", "/etc/hostname", "nope"), 5, "use --create"),
        (("download", "nope", "out"), 5, "not found"),
        (("download", "nope", "out", "--threads", "x"), 3, "--threads"),
    ],
)
def test_bad_input_is_one_line(run, args, code, fragment):
    _, err = run(*args, code=code)
    assert fragment in err and err.count("\n") == 1


def test_existing_device_refused(run):
    run("setup", "d", "--size", "1M")
    _, err = run("setup", "d", "--size", "1M", code=6)
    assert "already exists" in err


def test_human_and_progress(tmp_path):
    assert human(1 << 30) == "1 GiB" and human(1536) == "1.5 KiB" and human(10) == "10 B"
    with open(tmp_path / "p", "w") as stream:
        line = ProgressLine("copy", stream, enabled=True)
        line(50, 100)
        line(100, 100)
        line.finish()
    text = (tmp_path / "p").read_text()
    assert "copy: 100.0%" in text and text.endswith("\n")


def test_swift_auth_version_guess():
    class Opts:
        auth_version = "auto"
        auth_url = "http://h:8080/auth/v1.0"

    assert auth_version(Opts) == "1"
    Opts.auth_url = "http://h:5000/v3"
    assert auth_version(Opts) == "3"
    Opts.auth_version = "1"
    assert auth_version(Opts) == "1"


def test_swift_settings_from_headers():
    settings = SwiftBlockStore._settings
    assert settings(
        {"X-Container-Meta-Stowkit-Size": "1024", "X-Container-Meta-Stowkit-Object-Size": "512"}
    ) == (1, 1024, 512)
    # swiftnbd 0.11 containers; its setup often lost the object size header
    assert settings({"x-container-meta-swiftnbd-objects": "4"}) == (0, 4 * 65536, 65536)
    assert settings({"x-container-meta-other": "1"}) is None
    assert settings({"x-container-meta-stowkit-size": "x"}) is None


def test_swiftnbd_secrets_file(tmp_path, caplog):
    path = tmp_path / "secrets.conf"
    path.write_text(
        "[disk0]\nusername = acct:user\npassword = pw\nauthurl = http://old\n\n"
        "[disk1]\nusername = u\n"
    )
    path.chmod(0o644)
    secrets = swiftnbd_ctl.Secrets(str(path))
    assert "world readable" in caplog.text
    assert secrets.containers() == ["disk0", "disk1"]
    values = secrets.get("disk0")
    assert (values["username"], values["password"], values["read-only"]) == ("acct:user", "pw", "0")
    assert "no longer in use" in caplog.text
    with pytest.raises(swiftnbd_ctl.InvalidArgument):
        secrets.get("disk1")
    with pytest.raises(swiftnbd_ctl.NotFound):
        secrets.get("disk9")


def test_swiftnbd_ctl_usage_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        swiftnbd_ctl.main(["--secrets", str(tmp_path / "none"), "list"])
    assert exc.value.code == 2
    assert "Failed to load secrets" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        swiftnbd_ctl.main(["setup"])
    assert exc.value.code == 2
    secrets = tmp_path / "s.conf"
    secrets.write_text("")
    assert swiftnbd_ctl.main(["--secrets", str(secrets), "lock", "nothere"]) == 5
    assert "nothere not found in" in capsys.readouterr().err


def test_unlock_breaks_only_the_lock_it_read(run, monkeypatch):
    run("setup", "img", "--size", "128K", "--object-size", "64K")
    run("lock", "img", "--owner", "first")
    real = blocklock.read_lock

    def rival_takes_over(store, device):
        seen = real(store, device)
        monkeypatch.setattr(blocklock, "read_lock", real)
        blocklock.unlock(store, device, force=True)  # between the look and the break:
        blocklock.take(store, device, "second", lease_seconds=None)  # someone else locks it
        return seen

    monkeypatch.setattr(blocklock, "read_lock", rival_takes_over)
    _, err = run("unlock", "img", code=8)
    assert "second" in err
    out, _ = run("show", "img", "-f", "value", "-c", "lock_owner")
    assert out.strip() == "second"  # the newer lock is left alone

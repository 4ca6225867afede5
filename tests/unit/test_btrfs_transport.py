"""The ssh side of the btrfs driver, without btrfs or ssh: command lines,
the remote receive script (against a fake ``btrfs``), the send pipe, the rate limit."""

from __future__ import annotations

import io
import os
import shlex
import subprocess
import textwrap

import pytest

from stowkit.corelib.errors import BackendUnavailable
from stowkit.plugins.btrfs import transport

FAKE_BTRFS = textwrap.dedent(
    """\
    #!/bin/sh
    # A stand-in for btrfs: enough of property get / receive / subvolume delete.
    echo "$*" >> "$FAKE_LOG"
    case "$1 $2" in
    "property get")
        if [ -e "$5/.ro" ]; then echo ro=true; else echo ro=false; fi ;;
    "receive -e")
        dest=$4
        read -r name
        mkdir -p "$dest/$name"
        echo "At subvol $name" >&2
        while read -r line; do
            [ "$line" = END ] && { touch "$dest/$name/.ro"; exit 0; }
            echo "$line" >> "$dest/$name/data"
        done
        echo "ERROR: unexpected EOF in stream" >&2
        exit 1 ;;
    "subvolume delete")
        rm -rf -- "$4" ;;
    *) echo "fake btrfs: unsupported $*" >&2; exit 2 ;;
    esac
    """
)


@pytest.fixture
def fake_remote(tmp_path):
    """Run a remote command the way sshd would: through ``sh -c``, with a fake btrfs."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    tool = bindir / "btrfs"
    tool.write_text(FAKE_BTRFS)
    tool.chmod(0o755)
    log = tmp_path / "btrfs.log"
    env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}", FAKE_LOG=str(log))

    def run(command: str, stdin: bytes) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["sh", "-c", command], input=stdin, env=env, capture_output=True, check=False
        )

    return run


def receive_command(dest, name):
    return transport.remote_command(transport.RECEIVE_SCRIPT, str(dest), name, "none")


def test_receive_complete_stream_keeps_subvolume(tmp_path, fake_remote):
    dest = tmp_path / "received"
    proc = fake_remote(receive_command(dest, "v@1"), b"v@1\nhello\nEND\n")
    assert proc.returncode == 0, proc.stderr
    assert (dest / "v@1" / ".ro").exists()


def test_interrupted_stream_leaves_nothing(tmp_path, fake_remote):
    dest = tmp_path / "received"
    proc = fake_remote(receive_command(dest, "v@1"), b"v@1\nhalf of it\n")
    assert proc.returncode == 1
    assert b"unexpected EOF" in proc.stderr
    assert b"At subvol" not in proc.stderr  # noise filtered, the reason kept
    assert list(dest.iterdir()) == []


def test_writable_leftover_is_replaced_complete_one_is_not(tmp_path, fake_remote):
    dest = tmp_path / "received"
    (dest / "v@1").mkdir(parents=True)  # a receive that died with its host
    proc = fake_remote(receive_command(dest, "v@1"), b"v@1\nx\nEND\n")
    assert proc.returncode == 0, proc.stderr
    proc = fake_remote(receive_command(dest, "v@1"), b"v@1\ny\nEND\n")
    assert proc.returncode == 1
    assert b"already exists" in proc.stderr
    assert (dest / "v@1" / "data").read_text() == "x\n"


def test_remote_arguments_are_never_interpreted(tmp_path, fake_remote):
    # Names are checked long before, but the quoting must hold on its own too.
    hostile = "$(touch pwned)`touch pwned2`;touch pwned3"
    command = receive_command(tmp_path / "r", hostile)
    assert shlex.split(command)[:2] == ["sh", "-c"]
    assert shlex.split(command)[-3:] == [str(tmp_path / "r"), hostile, "none"]
    fake_remote(f"cd {shlex.quote(str(tmp_path))} && {command}", b"")
    assert not any(p.name.startswith("pwned") for p in tmp_path.iterdir())


def test_ssh_argv_puts_destination_after_double_dash():
    cfg = transport.SshConfig("ssh", "/k/id", ("BatchMode=yes", "ConnectTimeout=5"))
    peer = transport.parse_peer("bk@node:2222", "root", 22)
    argv = cfg.argv(peer)
    assert argv == [
        "ssh", "-p", "2222", "-i", "/k/id", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5",
        "--", "bk@node",
    ]  # fmt: skip
    assert shlex.split(cfg.rsync_rsh(peer)) == argv[:-2]


def test_parse_subvolume_list():
    out = (
        "ID 256 gen 8 top level 5 received_uuid 1c3d7b11-a9eb-de4a-9a41-40320465776a "
        "uuid bfcea90d-7925-fb4d-9be0-609ea16d6ad5 path root/received/v1@s1\n"
        "ID 257 gen 9 top level 5 received_uuid - uuid 5accf980-0a0f-e746-8952-f6c80a8101f2 "
        "path root/received/v1@s2\n"
        "garbage line\n"
    )
    subs = transport.parse_subvolume_list(out)
    assert [(s.path, s.received_uuid) for s in subs] == [
        ("root/received/v1@s1", "1c3d7b11-a9eb-de4a-9a41-40320465776a"),
        ("root/received/v1@s2", None),
    ]


def test_rate_limiter_with_a_fake_clock():
    now = [100.0]
    limiter = transport.RateLimiter(1000, clock=lambda: now[0])
    assert limiter.delay_for(500) == pytest.approx(0.5)
    now[0] += 0.5
    assert limiter.delay_for(500) == pytest.approx(0.5)
    now[0] += 5
    assert limiter.delay_for(500) == 0.0
    assert transport.RateLimiter(0).delay_for(10**9) == 0.0


def test_pump_sleeps_to_honour_the_rate():
    now = [0.0]
    slept = []

    def sleep(seconds):
        slept.append(seconds)
        now[0] += seconds

    data = os.urandom(300_000)
    sink = io.BytesIO()
    copied = transport.pump(io.BytesIO(data), sink, 100_000, clock=lambda: now[0], sleep=sleep)
    assert copied == len(data)
    assert sink.getvalue() == data
    # 3 s of data at 100 kB/s on a clock that only sleeping moves
    assert sum(slept) == pytest.approx(3.0)


def test_send_stream_copies_and_counts(tmp_path):
    out = tmp_path / "out"
    total = transport.send_stream(
        ["sh", "-c", "head -c 100000 /dev/zero"],
        ["sh", "-c", f"cat > {shlex.quote(str(out))}"],
        compress=False,
        rate=0,
    )
    assert total == 100000 == out.stat().st_size


def test_send_stream_compressed_roundtrip(tmp_path):
    out = tmp_path / "out"
    total = transport.send_stream(
        ["sh", "-c", "head -c 1000000 /dev/zero"],
        ["sh", "-c", f"zstd -d -q -c > {shlex.quote(str(out))}"],
        compress=True,
        rate=0,
    )
    assert out.stat().st_size == 1000000
    assert total < 10000  # zeros compress


def test_send_stream_names_the_failing_side():
    with pytest.raises(BackendUnavailable, match=r"ssh/receive failed: no space left"):
        transport.send_stream(
            ["sh", "-c", "head -c 1000000 /dev/zero"],
            ["sh", "-c", "head -c 10 >/dev/null; echo 'no space left' >&2; exit 1"],
            compress=False,
            rate=0,
        )
    with pytest.raises(BackendUnavailable, match=r"btrfs send failed: cannot open"):
        transport.send_stream(
            ["sh", "-c", "echo 'cannot open' >&2; exit 1"],
            ["sh", "-c", "cat >/dev/null"],
            compress=False,
            rate=0,
        )


def test_send_stream_missing_tool():
    with pytest.raises(BackendUnavailable, match="not installed"):
        transport.send_stream(["/nonexistent/btrfs"], ["cat"], compress=False, rate=0)


def test_run_reports_last_stderr_line():
    with pytest.raises(BackendUnavailable, match="listing failed: second"):
        transport.run(["sh", "-c", "echo first >&2; echo second >&2; exit 3"], what="listing")
    assert transport.run(["sh", "-c", "echo hi"]) == "hi\n"

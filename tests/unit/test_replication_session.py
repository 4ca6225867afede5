"""A send is one ssh connection: discovery, receive and checks on one session.

A fake ``ssh`` logs each connection and runs the remote command through
``sh -c`` here, as sshd would, with a fake ``btrfs`` on the "peer"; a fake
local ``btrfs send`` writes a stream the fake receive understands.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import os
import subprocess
import textwrap
import threading

import pytest

from stowkit.corelib import config, registry
from stowkit.corelib.errors import BackendUnavailable
from stowkit.corelib.volume import Snapshot
from stowkit.plugins.btrfs import replication, transport

S1 = "v@2026-11-22T03-40-05.123456"
S2 = "v@2026-11-22T04-40-05.123456"
UUID1 = "1c3d7b11-a9eb-de4a-9a41-40320465776a"
UUID2 = "bfcea90d-7925-fb4d-9be0-609ea16d6ad5"

REMOTE_BTRFS = textwrap.dedent(
    """\
    #!/bin/sh
    echo "$*" >> "$FAKE_LOG"
    case "$1 $2" in
    "inspect-internal rootid") echo 5 ;;
    "subvolume list") cat "$FAKE_HELD" 2>/dev/null; true ;;
    "property get")
        if [ -e "$5/.ro" ]; then echo ro=true; else echo ro=false; fi ;;
    "receive -e")
        dest=$4
        read -r name
        mkdir -p "$dest/$name"
        while read -r line; do
            [ "$line" = END ] && { touch "$dest/$name/.ro"; exit 0; }
            echo "$line" >> "$dest/$name/data"
        done
        echo "ERROR: unexpected EOF in stream" >&2
        exit 1 ;;
    "subvolume delete") rm -rf -- "$4" ;;
    *) echo "fake btrfs: unsupported $*" >&2; exit 2 ;;
    esac
    """
)

# btrfs send -q [-p PARENT] -- PATH: the name, a line of data, END
LOCAL_BTRFS = textwrap.dedent(
    """\
    #!/bin/sh
    echo "$*" >> "$FAKE_SEND_LOG"
    for last; do :; done
    printf '%s\\nsome data of %s\\nEND\\n' "${last##*/}" "${last##*/}"
    """
)


@pytest.fixture
def setup(tmp_path, monkeypatch):
    remote_bin = tmp_path / "remote-bin"
    remote_bin.mkdir()
    (remote_bin / "btrfs").write_text(REMOTE_BTRFS)
    local_btrfs = tmp_path / "btrfs"
    local_btrfs.write_text(LOCAL_BTRFS)
    ssh = tmp_path / "ssh"
    ssh.write_text(
        "#!/bin/sh\n"
        'echo connection >> "$FAKE_SSH_LOG"\n'
        'for last; do :; done\nPATH="$FAKE_REMOTE_PATH" exec sh -c "$last"\n'
    )
    for f in (remote_bin / "btrfs", local_btrfs, ssh):
        f.chmod(0o755)
    peer_root = tmp_path / "peer"
    for name, value in {
        "FAKE_LOG": tmp_path / "remote.log",
        "FAKE_HELD": tmp_path / "held",
        "FAKE_SEND_LOG": tmp_path / "send.log",
        "FAKE_SSH_LOG": tmp_path / "ssh.log",
        "FAKE_REMOTE_PATH": f"{remote_bin}:{os.environ['PATH']}",
    }.items():
        monkeypatch.setenv(name, str(value))
    drv = registry.load(
        "volume",
        config.load_conf(),
        "btrfs",
        root=str(tmp_path / "root"),
        remote_root=str(peer_root),
        ssh_command=str(ssh),
        btrfs_command=str(local_btrfs),
    )
    when = dt.datetime(2026, 11, 22, 3, 40, 5, tzinfo=dt.UTC)
    snaps = {
        S1: Snapshot(S1, "v", when, str(tmp_path / "snaps" / S1), uuid=UUID1),
        S2: Snapshot(S2, "v", when + dt.timedelta(hours=1), str(tmp_path / "snaps" / S2), UUID2),
    }
    monkeypatch.setattr(drv.snapshots, "path", lambda name: snaps[name].path)
    monkeypatch.setattr(drv.snapshots, "snapshot", lambda path: snaps[os.path.basename(path)])
    monkeypatch.setattr(drv.snapshots, "list", lambda volume=None: list(snaps.values()))
    monkeypatch.setattr(
        drv.layout, "volume_lock", lambda volume, wait=True: contextlib.nullcontext()
    )
    recorded = []
    monkeypatch.setattr(
        drv.replication, "record_sent", lambda peer, snap: recorded.append(snap.name)
    )
    monkeypatch.setattr(replication.subvol, "sync", lambda path: None)

    def connections() -> int:
        log = tmp_path / "ssh.log"
        count = len(log.read_text().splitlines()) if log.exists() else 0
        log.unlink(missing_ok=True)
        return count

    def hold(*names_uuids: tuple[str, str]) -> None:
        received = (peer_root / "received").resolve()
        rel = str(received).lstrip("/")
        (tmp_path / "held").write_text(
            "".join(
                f"ID {300 + i} gen 9 top level 5 received_uuid {u} uuid "
                f"5accf980-0a0f-e746-8952-f6c80a81010{i} path {rel}/{n}\n"
                for i, (n, u) in enumerate(names_uuids)
            )
        )

    return drv, connections, hold, peer_root, recorded, tmp_path


def test_full_send_uses_one_ssh_connection(setup):
    drv, connections, hold, peer_root, recorded, _ = setup
    result = drv.send_snapshot(S1, "peer")
    assert connections() == 1
    assert result.parent is None and not result.already_there
    assert result.bytes_sent == len(f"{S1}\nsome data of {S1}\nEND\n")
    assert (peer_root / "received" / S1 / ".ro").exists()
    assert (peer_root / "received" / S1 / "data").read_text() == f"some data of {S1}\n"
    assert recorded == [S1]


def test_incremental_send_uses_one_ssh_connection(setup):
    drv, connections, hold, peer_root, recorded, tmp_path = setup
    hold((S1, UUID1))
    result = drv.send_snapshot(S2, "peer")
    assert connections() == 1
    assert result.parent == S1
    assert "-p " + str(tmp_path / "snaps" / S1) in (tmp_path / "send.log").read_text()
    assert (peer_root / "received" / S2 / ".ro").exists()


def test_already_there_uses_one_ssh_connection_and_sends_nothing(setup):
    drv, connections, hold, peer_root, recorded, tmp_path = setup
    hold((S2, UUID2))
    result = drv.send_snapshot(S2, "peer")
    assert connections() == 1
    assert result.already_there and result.bytes_sent == 0
    assert not (tmp_path / "send.log").exists()  # no btrfs send started
    assert "receive -e" not in (tmp_path / "remote.log").read_text()


def test_failed_listing_is_reported_and_nothing_sent(setup, monkeypatch):
    drv, connections, hold, peer_root, recorded, tmp_path = setup
    monkeypatch.setenv("FAKE_REMOTE_PATH", "/nonexistent")  # no sh, no btrfs on the "peer"
    with pytest.raises(BackendUnavailable, match="listing snapshots on peer failed"):
        drv.send_snapshot(S1, "peer")
    assert not (tmp_path / "send.log").exists()
    assert recorded == []


def run_session(tmp_path, request: bytes) -> subprocess.CompletedProcess:
    remote_bin = tmp_path / "rb"
    remote_bin.mkdir(exist_ok=True)
    (remote_bin / "btrfs").write_text(REMOTE_BTRFS)
    (remote_bin / "btrfs").chmod(0o755)
    dest = tmp_path / "received"
    return subprocess.run(
        ["sh", "-c", transport.remote_command(transport.SESSION_SCRIPT, str(dest))],
        input=request,
        env=dict(
            os.environ,
            PATH=f"{remote_bin}:{os.environ['PATH']}",
            FAKE_LOG=str(tmp_path / "log"),
            FAKE_HELD=str(tmp_path / "none"),
        ),
        capture_output=True,
        check=False,
    )


@pytest.mark.parametrize(
    "request_line",
    [b"receive ../x none\n", b"receive .hidden none\n", b"receive a/b none\n",
     b"receive v@1 gzip\n", b"receive v@1 none extra\n", b"rm -rf /\n", b""],
)  # fmt: skip
def test_session_refuses_any_other_request(tmp_path, request_line):
    proc = run_session(tmp_path, request_line + b"v@1\nx\nEND\n")
    assert proc.returncode == 1
    assert proc.stdout.decode().endswith(transport.LISTED + "\n")
    assert not (tmp_path / "received" / "v@1").exists()
    assert not (tmp_path / "x").exists()


def test_session_receives_the_stream_from_its_first_byte(tmp_path):
    proc = run_session(tmp_path, b"receive v@1 none\nv@1\nhello\nEND\n")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "received" / "v@1" / "data").read_text() == "hello\n"
    assert run_session(tmp_path, b"done\n").returncode == 0


def test_pump_between_pipes_counts_and_reports_progress():
    data = os.urandom(3 * 1024 * 1024 + 17)
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    cat = subprocess.Popen(["cat"], stdin=r2, stdout=subprocess.PIPE)
    os.close(r2)
    feeder = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=w1)
    os.close(w1)
    seen = []
    result = {}

    def drain():
        result["out"] = cat.communicate()[0]

    reader = threading.Thread(target=drain)
    reader.start()
    writer = threading.Thread(target=lambda: (feeder.stdin.write(data), feeder.stdin.close()))
    writer.start()
    with open(r1, "rb", buffering=0) as src, open(w2, "wb", buffering=0) as sink:
        total = transport.pump(src, sink, 0, progress=seen.append)
    writer.join()
    reader.join()
    out = result["out"]
    feeder.wait()
    assert total == len(data) and out == data
    assert seen and seen[-1] == len(data) and seen == sorted(seen)
    # not pipes: the same through read/write, progress included
    seen.clear()
    assert transport.pump(io.BytesIO(b"abc"), io.BytesIO(), 0, progress=seen.append) == 3
    assert seen == [3]

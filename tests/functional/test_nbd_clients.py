"""The NBD server with real clients (libnbd, qemu, a kernel filesystem) on a real Swift
and on the local backend.

Every server runs as a subprocess (`stowkit blockstore serve --port 0`, the stowkit of
the interpreter running the tests, signalled by its own pid), every client under
`timeout`.  The clients come from Debian packages (tools/commands.txt): libnbd-bin,
qemu-utils, nbdfuse, fuse3, e2fsprogs.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import subprocess
import time

import pytest

from stowkit.corelib.nbd import protocol as p
from tests.commands import STOWKIT
from tests.fakes.nbd import RawClient, _string
from tests.fakes.nbd_clients import Backend, MiB, run, sha256


@pytest.fixture(params=["swift", "local"])
def backend(request, tmp_path):
    conf = tmp_path / "stowkit.conf"
    if request.param == "swift":
        service = request.getfixturevalue("service")
        rec = service("swift")
        prefix = f"nbd{secrets.token_hex(3)}-"
        conf.write_text(
            "[blockstore]\nbackend = swift\n[blockstore_swift]\n"
            f"auth_url = {rec['auth_url']}\nuser = {rec['user']}\nkey = {rec['key']}\n"
            f"container_prefix = {prefix}\n"
        )
    else:
        conf.write_text(f"[DEFAULT]\nstate_dir = {tmp_path}/state\n[blockstore]\nbackend = local\n")
    b = Backend(str(conf), request.param)
    yield b
    b.cleanup()
    listing = b.stowkit("blockstore", "list", "-f", "value", "-c", "name", check=False)
    for name in listing.stdout.split():
        b.stowkit("blockstore", "delete", name, "--force", check=False)


def test_nbdinfo_list_and_json(backend):
    backend.setup("alpha")
    backend.setup("beta", size="1M")
    proc, port = backend.serve()
    listing = run("nbdinfo", "--list", f"nbd://127.0.0.1:{port}").stdout
    assert 'export="alpha"' in listing and 'export="beta"' in listing
    info = json.loads(run("nbdinfo", "--json", f"nbd://127.0.0.1:{port}/alpha").stdout)
    export = info["exports"][0]
    assert info["protocol"] == "newstyle-fixed" and info["structured"] is True
    assert export["export-size"] == 64 * MiB
    assert export["can_flush"] and export["can_fua"] and export["can_trim"] and export["can_zero"]
    assert export["block_size_preferred"] == 256 * 1024
    assert "base:allocation" in export["contexts"]
    assert backend.stop(proc) == 0


def test_nbdcopy_and_qemu_img_both_ways(backend, tmp_path):
    backend.setup("disk")
    proc, port = backend.serve("disk")
    uri = f"nbd://127.0.0.1:{port}/disk"
    src = tmp_path / "src.raw"
    with open(src, "wb") as f:
        f.write(os.urandom(20 * MiB))
        f.truncate(64 * MiB)
    run("nbdcopy", "--flush", str(src), uri)
    back = tmp_path / "back.raw"
    run("nbdcopy", uri, str(back))
    assert sha256(src) == sha256(back)
    assert "virtual size: 64 MiB" in run("qemu-img", "info", uri).stdout
    assert "Images are identical" in run("qemu-img", "compare", str(src), uri).stdout
    # the tail was never written: it maps as a hole
    mapping = run("nbdinfo", "--map", uri).stdout
    assert "hole,zero" in mapping
    qcow = tmp_path / "copy.qcow2"
    run("qemu-img", "convert", "-O", "qcow2", uri, str(qcow))
    assert "Images are identical" in run("qemu-img", "compare", str(qcow), str(src)).stdout
    other = tmp_path / "other.raw"
    with open(other, "wb") as f:
        f.write(os.urandom(64 * MiB))
    run("qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(other), uri)
    assert "Images are identical" in run("qemu-img", "compare", str(other), uri).stdout
    assert backend.stop(proc) == 0


def test_qemu_io_unaligned_reads_and_writes(backend):
    backend.setup("disk")
    proc, port = backend.serve("disk")
    uri = f"nbd://127.0.0.1:{port}/disk"
    out = run(
        "qemu-io", "-f", "raw",
        "-c", "write -P 0x5a 262000 300001",  # straddles two object boundaries
        "-c", "write -P 0x33 3 5",
        "-c", "flush",
        "-c", "read -P 0x5a 262000 300001",
        "-c", "read -P 0x33 3 5",
        "-c", "read -P 0 0 3",
        "-c", "read -P 0 562001 1000",
        uri,
    ).stdout  # fmt: skip
    assert "Pattern verification failed" not in out and out.count("read ") == 4
    assert backend.stop(proc) == 0
    proc, port = backend.serve("disk")  # after a restart, from the backend
    out = run("qemu-io", "-f", "raw", "-r", "-c", "read -P 0x5a 262000 300001",
              f"nbd://127.0.0.1:{port}/disk").stdout  # fmt: skip
    assert "Pattern verification failed" not in out
    assert backend.stop(proc) == 0


def test_sigkill_right_after_flush_loses_nothing(backend, tmp_path):
    backend.setup("disk")
    proc, port = backend.serve("disk")
    src = tmp_path / "src.raw"
    with open(src, "wb") as f:
        f.write(os.urandom(64 * MiB))
    run("nbdcopy", "--flush", str(src), f"nbd://127.0.0.1:{port}/disk")
    proc.kill()
    proc.wait(10)
    proc, port = backend.serve("disk")  # the dead server's lock is broken: same host
    back = tmp_path / "back.raw"
    run("nbdcopy", f"nbd://127.0.0.1:{port}/disk", str(back))
    assert sha256(src) == sha256(back)
    assert backend.stop(proc) == 0


def test_a_second_server_of_a_device_refuses_to_start_until_the_first_stops(backend):
    backend.setup("disk")
    first, port = backend.serve("disk")  # lock_scope = server, the default
    # Locked from the start, before any client: `show` says by whom.
    shown = json.loads(backend.stowkit("blockstore", "show", "disk", "-f", "json").stdout)
    assert "stowkit nbd server" in shown["locked_by"], shown
    second = subprocess.run(
        [*STOWKIT, "--config-file", backend.conf, "blockstore", "serve", "--port", "0", "disk"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert second.returncode == 8, second.stderr
    assert "locked by stowkit nbd server" in second.stderr and "serving" not in second.stdout
    # A client's disconnect keeps the lock; the stop releases it.
    run("qemu-io", "-f", "raw", "-c", "write -P 0x44 0 64k", f"nbd://127.0.0.1:{port}/disk")
    shown = json.loads(backend.stowkit("blockstore", "show", "disk", "-f", "json").stdout)
    assert "stowkit nbd server" in shown["locked_by"], shown
    assert backend.stop(first) == 0
    again, port = backend.serve("disk")
    out = run("qemu-io", "-f", "raw", "-r", "-c", "read -P 0x44 0 64k",
              f"nbd://127.0.0.1:{port}/disk").stdout  # fmt: skip
    assert "Pattern verification failed" not in out
    assert backend.stop(again) == 0


def test_second_writer_refused_lock_released_on_disconnect(backend, tmp_path):
    backend.setup("disk")
    first, port1 = backend.serve("disk", "--lock-scope", "connection")
    second, port2 = backend.serve("disk", "--lock-scope", "connection")
    holder = RawClient(port1)
    holder.greet()
    holder.go("disk")
    refused = run("nbdinfo", f"nbd://127.0.0.1:{port2}/disk", check=False)
    assert refused.returncode != 0
    c = RawClient(port2)
    c.greet()
    c.option(p.OPT_GO, _string("disk") + p.U16.pack(0))
    _, rtype, message = c.option_reply()
    assert rtype == p.REP_ERR_POLICY and b"locked by stowkit nbd server" in message
    c.close()
    shown = backend.stowkit("blockstore", "show", "disk", "-f", "json").stdout
    assert "stowkit nbd server" in shown
    holder.request(p.CMD_DISC)
    assert holder.closed()
    for _ in range(50):  # the release is asynchronous to the client's hang-up
        if run("nbdinfo", f"nbd://127.0.0.1:{port2}/disk", check=False).returncode == 0:
            break
        time.sleep(0.2)
    else:
        raise AssertionError("the lock was not released on disconnect")
    assert backend.stop(first) == 0 and backend.stop(second) == 0


def test_read_only_export_takes_no_lock(backend):
    backend.setup("disk")
    writer, wport = backend.serve("disk")
    holder = RawClient(wport)
    holder.greet()
    holder.go("disk")
    reader, rport = backend.serve("--read-only", "disk")
    info = json.loads(run("nbdinfo", "--json", f"nbd://127.0.0.1:{rport}/disk").stdout)
    assert info["exports"][0]["is_read_only"] is True
    out = run("qemu-io", "-f", "raw", "-c", "write 0 512", f"nbd://127.0.0.1:{rport}/disk",
              check=False)  # fmt: skip
    assert out.returncode != 0 and "Permission denied" in out.stderr
    c = RawClient(rport)
    c.greet()
    c.go("disk")
    c.request(p.CMD_WRITE, 0, 3, data=b"abc")
    assert c.reply()[1] == p.EPERM
    c.request(p.CMD_READ, 0, 3)
    assert c.reply()[:3] == (1, 0, bytes(3))
    c.close()
    holder.close()
    assert backend.stop(reader) == 0 and backend.stop(writer) == 0


def test_malformed_clients_do_not_disturb_a_good_one(backend, tmp_path):
    backend.setup("disk")
    proc, port = backend.serve("disk")
    uri = f"nbd://127.0.0.1:{port}/disk"
    src = tmp_path / "src.raw"
    with open(src, "wb") as f:
        f.write(os.urandom(16 * MiB))
    good = subprocess.Popen(["timeout", "120", "nbdcopy", "--flush", str(src), uri])
    attacks = [
        lambda c: c.sock.sendall(b"\x00\x01"),  # truncated client flags, then gone
        lambda c: (c.greet(), c.sock.sendall(b"NOTMAGIC" + bytes(8))),  # wrong option magic
        lambda c: (c.greet(), c.option(p.OPT_GO, b"\xff" * 5)),  # malformed GO
        lambda c: (c.greet(), c.sock.sendall(p.OPTION_HEADER.pack(p.IHAVEOPT, 7, 2**32 - 1))),
        lambda c: (c.greet(), c.go("disk"), c.sock.sendall(b"\xba\xad" * 14)),  # bad request
        lambda c: (c.greet(), c.go("disk"), c.request(p.CMD_WRITE, 0, 2**32 - 1)),  # huge write
        lambda c: (c.greet(), c.go("disk"), c.request(77, 0, 10), c.reply()),  # unknown command
        lambda c: (c.greet(), c.option(p.OPT_EXPORT_NAME, b"no-such-export")),
    ]
    for attack in attacks:
        c = RawClient(port)
        try:
            attack(c)
        except (TimeoutError, ConnectionError, AssertionError):
            pass
        c.close()
    assert good.wait(120) == 0
    c = RawClient(port)
    c.greet()
    c.option(p.OPT_GO, _string("disk") + p.U16.pack(0))
    assert c.replies_until_final()[-1][0] == p.REP_ACK
    c.close()
    back = tmp_path / "back.raw"
    run("nbdcopy", uri, str(back))
    with open(back, "rb") as f:
        assert hashlib.sha256(f.read(16 * MiB)).hexdigest() == sha256(src)
    assert proc.poll() is None
    assert backend.stop(proc) == 0


class Filesystem:
    """nbdfuse -> losetup -> ext4 mount on an export; torn down in reverse, always."""

    def __init__(self, base) -> None:
        self.fuse_dir = base / "fuse"
        self.mnt = base / "mnt"
        self.fuse_dir.mkdir(exist_ok=True)
        self.mnt.mkdir(exist_ok=True)
        self.fuse: subprocess.Popen | None = None
        self.loop: str | None = None

    def attach(self, uri: str) -> str:
        self.fuse = subprocess.Popen(
            ["timeout", "600", "nbdfuse", str(self.fuse_dir / "disk"), uri]
        )
        for _ in range(100):
            if (self.fuse_dir / "disk").exists():
                break
            time.sleep(0.1)
        else:
            raise AssertionError("nbdfuse did not come up")
        self.loop = run("losetup", "-f", "--show", str(self.fuse_dir / "disk")).stdout.strip()
        return self.loop

    def mount(self) -> None:
        run("mount", self.loop, str(self.mnt))

    def detach(self) -> None:
        if os.path.ismount(self.mnt):
            run("umount", str(self.mnt), check=False)
        if self.loop:
            run("losetup", "-d", self.loop, check=False)
            self.loop = None
        if self.fuse is not None:
            run("fusermount3", "-u", str(self.fuse_dir), check=False)
            try:
                self.fuse.wait(30)
            except subprocess.TimeoutExpired:
                self.fuse.kill()
                self.fuse.wait(10)
            self.fuse = None


def test_ext4_on_an_export_survives_a_server_restart(backend, tmp_path):
    backend.setup("fs", size="128M", object_size="256K")
    proc, port = backend.serve("fs")
    fs = Filesystem(tmp_path)
    try:
        loop = fs.attach(f"nbd://127.0.0.1:{port}/fs")
        run("mkfs.ext4", "-q", "-F", loop)
        fs.mount()
        sums = {}
        for i in range(5):
            data = os.urandom((i + 1) * 1536 * 1024 + i)
            (fs.mnt / f"file{i}").write_bytes(data)
            sums[f"file{i}"] = hashlib.sha256(data).hexdigest()
        os.makedirs(fs.mnt / "dir" / "sub")
        (fs.mnt / "dir" / "sub" / "small").write_text("hello")
        fs.detach()
        assert backend.stop(proc) == 0
        proc, port = backend.serve("fs")
        loop = fs.attach(f"nbd://127.0.0.1:{port}/fs")
        fsck = run("e2fsck", "-fn", loop, check=False)
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr
        fs.mount()
        for name, digest in sums.items():
            assert sha256(fs.mnt / name) == digest
        assert (fs.mnt / "dir" / "sub" / "small").read_text() == "hello"
    finally:
        fs.detach()
    assert backend.stop(proc) == 0

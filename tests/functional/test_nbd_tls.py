"""NBD over TLS with real clients: libnbd's nbdinfo/nbdcopy (``nbds://``) and qemu.

Servers run as in test_nbd_clients.py (``stowkit blockstore serve --port 0``,
a subprocess of its own, stopped by its pid); the certificates are throwaway
ones made with ``openssl`` in the test's tmp dir, in the layout qemu, nbdkit
and libnbd share (ca-cert.pem, server-*.pem, client-*.pem).  Most tests run on
the local backend; one writes and reads back through TLS on the real Swift.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess

import pytest

from stowkit.corelib.nbd import protocol as p
from stowkit.corelib.nbd import tls as nbd_tls
from tests.fakes.nbd import RawClient, _string
from tests.fakes.nbd_clients import Backend, MiB, run, sha256
from tests.fakes.tls import make_cert_dir


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """(server and client dir, a client dir with the CA only)."""
    full = make_cert_dir(tmp_path_factory.mktemp("tls") / "pki")
    anonymous = full.parent / "anonymous"
    anonymous.mkdir()
    (anonymous / "ca-cert.pem").write_bytes((full / "ca-cert.pem").read_bytes())
    return full, anonymous


@pytest.fixture
def local(tmp_path):
    conf = tmp_path / "stowkit.conf"
    conf.write_text(f"[DEFAULT]\nstate_dir = {tmp_path}/state\n[blockstore]\nbackend = local\n")
    b = Backend(str(conf), "local")
    yield b
    b.cleanup()


@pytest.fixture
def swift(tmp_path, service):
    rec = service("swift")
    conf = tmp_path / "stowkit.conf"
    conf.write_text(
        "[blockstore]\nbackend = swift\n[blockstore_swift]\n"
        f"auth_url = {rec['auth_url']}\nuser = {rec['user']}\nkey = {rec['key']}\n"
        f"container_prefix = nbdtls{secrets.token_hex(3)}-\n"
    )
    b = Backend(str(conf), "swift")
    yield b
    b.cleanup()
    listing = b.stowkit("blockstore", "list", "-f", "value", "-c", "name", check=False)
    for name in listing.stdout.split():
        b.stowkit("blockstore", "delete", name, "--force", check=False)


def tls_uri(port: int, name: str, certs) -> str:
    return f"nbds://127.0.0.1:{port}/{name}?tls-certificates={certs}"


def random_image(path, size: int, data: int) -> None:
    with open(path, "wb") as f:
        f.write(os.urandom(data))
        f.truncate(size)


def copy_in_and_out(uri: str, tmp_path, size: int = 32 * MiB, data: int = 12 * MiB) -> str:
    src = tmp_path / "src.raw"
    random_image(src, size, data)
    run("nbdcopy", "--flush", str(src), uri)
    back = tmp_path / "back.raw"
    run("nbdcopy", uri, str(back))
    assert sha256(src) == sha256(back)
    return sha256(src)


def test_require_serves_libnbd_over_tls_and_refuses_plain_clients(local, pki, tmp_path):
    certs, _ = pki
    local.setup("disk", size="32M")
    proc, port = local.serve("--tls", "require", "--tls-certificates", str(certs), "disk")
    uri = tls_uri(port, "disk", certs)
    info = json.loads(run("nbdinfo", "--json", uri).stdout)
    assert info["TLS"] is True and info["exports"][0]["export-size"] == 32 * MiB
    copy_in_and_out(uri, tmp_path)
    plain = run("nbdinfo", f"nbd://127.0.0.1:{port}/disk", check=False)
    assert plain.returncode != 0
    listing = run("nbdinfo", "--list", f"nbd://127.0.0.1:{port}", check=False)
    assert listing.returncode != 0 and "disk" not in listing.stdout
    c = RawClient(port)  # what the plain clients got, on the wire
    c.greet()
    c.option(p.OPT_GO, _string("disk") + p.U16.pack(0))
    assert c.option_reply()[1] == p.REP_ERR_TLS_REQD
    c.option(p.OPT_EXPORT_NAME, b"disk")
    assert c.closed()
    assert local.stop(proc) == 0
    # after a restart, from the backend: the bytes written over TLS
    proc, port = local.serve("--tls", "require", "--tls-certificates", str(certs), "disk")
    back = tmp_path / "again.raw"
    run("nbdcopy", tls_uri(port, "disk", certs), str(back))
    assert sha256(back) == sha256(tmp_path / "src.raw")
    assert local.stop(proc) == 0


def test_on_serves_both_and_off_refuses_starttls(local, pki, tmp_path):
    certs, _ = pki
    local.setup("disk", size="4M")
    proc, port = local.serve("--tls", "on", "--tls-certificates", str(certs), "disk")
    secure = json.loads(run("nbdinfo", "--json", tls_uri(port, "disk", certs)).stdout)
    clear = json.loads(run("nbdinfo", "--json", f"nbd://127.0.0.1:{port}/disk").stdout)
    assert secure["TLS"] is True and clear["TLS"] is False
    assert local.stop(proc) == 0
    proc, port = local.serve("disk")  # default: off
    refused = run("nbdinfo", tls_uri(port, "disk", certs), check=False)
    assert refused.returncode != 0
    clear = json.loads(run("nbdinfo", "--json", f"nbd://127.0.0.1:{port}/disk").stdout)
    assert clear["TLS"] is False
    assert local.stop(proc) == 0


def test_verify_peer_takes_only_clients_with_a_certificate_of_the_ca(local, pki):
    certs, anonymous = pki
    local.setup("disk", size="4M")
    proc, port = local.serve("--tls", "require", "--tls-certificates", str(certs),
                             "--tls-verify-peer", "disk")  # fmt: skip
    assert run("nbdinfo", tls_uri(port, "disk", anonymous), check=False).returncode != 0
    assert "TLS" in run("nbdinfo", tls_uri(port, "disk", certs)).stdout
    assert proc.poll() is None  # the refused handshake disturbed nothing
    assert local.stop(proc) == 0


def test_a_bad_handshake_leaves_a_tls_copy_running(local, pki, tmp_path):
    certs, anonymous = pki
    local.setup("disk", size="32M")
    proc, port = local.serve("--tls", "require", "--tls-certificates", str(certs),
                             "--tls-verify-peer", "disk")  # fmt: skip
    uri = tls_uri(port, "disk", certs)
    src = tmp_path / "src.raw"
    random_image(src, 32 * MiB, 32 * MiB)
    good = subprocess.Popen(["timeout", "120", "nbdcopy", "--flush", str(src), uri])
    for _ in range(5):
        assert run("nbdinfo", tls_uri(port, "disk", anonymous), check=False).returncode != 0
        c = RawClient(port)
        c.greet()
        c.option(p.OPT_STARTTLS)
        assert c.option_reply()[1] == p.REP_ACK
        c.sock.sendall(b"\x16\x03\x01\x00\x05hello")  # a broken ClientHello
        assert c.closed()
        c.close()
    assert good.wait(120) == 0
    back = tmp_path / "back.raw"
    run("nbdcopy", uri, str(back))
    assert sha256(back) == sha256(src)
    assert local.stop(proc) == 0


def test_qemu_img_and_qemu_io_with_tls_creds_x509(local, pki, tmp_path):
    certs, _ = pki
    local.setup("disk", size="8M", object_size="256K")
    proc, port = local.serve("--tls", "require", "--tls-certificates", str(certs), "disk")
    creds = f"tls-creds-x509,id=tls0,dir={certs},endpoint=client"
    image = f"driver=nbd,host=127.0.0.1,port={port},export=disk,tls-creds=tls0"
    info = run("qemu-img", "info", "--object", creds, "--image-opts", image).stdout
    assert "virtual size: 8 MiB" in info
    out = run("qemu-io", "--object", creds, "--image-opts", image,
              "-c", "write -P 0x5a 262000 300001", "-c", "flush",
              "-c", "read -P 0x5a 262000 300001").stdout  # fmt: skip
    assert "Pattern verification failed" not in out and out.count("read ") == 1
    src = tmp_path / "src.raw"
    random_image(src, 8 * MiB, 8 * MiB)
    run("qemu-img", "convert", "-n", "--object", creds, "-f", "raw", "--target-image-opts",
        str(src), image)  # fmt: skip
    cmp = run("qemu-img", "compare", "--object", creds, "--image-opts",
              f"driver=raw,file.filename={src}", image)  # fmt: skip
    assert "Images are identical" in cmp.stdout
    assert local.stop(proc) == 0


def test_psk_is_a_declared_capability(local, tmp_path):
    local.setup("disk", size="4M")
    keys = tmp_path / "keys.psk"
    keys.write_text(f"alice:{os.urandom(32).hex()}\n")
    if not nbd_tls.PSK_SUPPORTED:
        out = local.stowkit("blockstore", "serve", "--port", "0", "--tls", "require",
                            "--tls-psk", str(keys), "disk", check=False)  # fmt: skip
        assert out.returncode == 10 and out.stdout == ""
        assert out.stderr.count("\n") == 1 and "needs Python >= 3.13's ssl module" in out.stderr
        return
    proc, port = local.serve("--tls", "require", "--tls-psk", str(keys), "disk")
    uri = f"nbds://alice@127.0.0.1:{port}/disk?tls-psk-file={keys}"
    copy_in_and_out(uri, tmp_path, size=4 * MiB, data=4 * MiB)
    wrong = tmp_path / "wrong.psk"
    wrong.write_text(f"alice:{os.urandom(32).hex()}\n")
    bad = f"nbds://alice@127.0.0.1:{port}/disk?tls-psk-file={wrong}"
    assert run("nbdinfo", bad, check=False).returncode != 0
    assert local.stop(proc) == 0


def test_nbdcopy_over_tls_on_swift(swift, pki, tmp_path):
    certs, _ = pki
    swift.setup("disk", size="32M", object_size="1M")
    proc, port = swift.serve("--tls", "require", "--tls-certificates", str(certs), "disk")
    digest = copy_in_and_out(tls_uri(port, "disk", certs), tmp_path)
    assert swift.stop(proc) == 0
    proc, port = swift.serve("--tls", "require", "--tls-certificates", str(certs), "disk")
    back = tmp_path / "from-swift.raw"
    run("nbdcopy", tls_uri(port, "disk", certs), str(back))
    assert sha256(back) == digest
    assert swift.stop(proc) == 0

"""NBD over TLS: the STARTTLS state machine, the modes, the credentials' errors.

The certificates are throwaway ones made with ``openssl`` in the test's tmp
dir (:func:`make_cert_dir`, also used by tests/functional/test_nbd_tls.py).
The handshake bound is short here (0.5 s) so stalled TLS handshakes are
closed quickly; socket timeouts (10 s) only stop a broken test from hanging.
"""

from __future__ import annotations

import logging
import pathlib
import socket
import ssl
import subprocess

import pytest

from stowkit.corelib.errors import ConfigError
from stowkit.corelib.nbd import protocol as p
from stowkit.corelib.nbd import tls as nbd_tls
from stowkit.corelib.nbd.tls import Mode, ServerTls, TlsConfig
from tests.fakes.nbd import MemoryBlockStore, RawClient, ServerThread, _string
from tests.fakes.tls import make_cert_dir, openssl

OSIZE = 64 << 10


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> pathlib.Path:
    return make_cert_dir(tmp_path_factory.mktemp("tls") / "pki")


def client_context(certs: pathlib.Path, with_cert: bool = False) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(certs / "ca-cert.pem"))
    if with_cert:
        ctx.load_cert_chain(str(certs / "client-cert.pem"), str(certs / "client-key.pem"))
    return ctx


# -- servers ---------------------------------------------------------------------------
def start(certs: pathlib.Path | None, mode: Mode, verify_peer: bool = False) -> ServerThread:
    store = MemoryBlockStore()
    store.create_device("one", 16 * OSIZE, OSIZE)
    store.create_device("two", 4 * OSIZE, OSIZE)
    t = ServerThread(store, ["one", "two"], cache_size=8 * OSIZE, lease=30,
                     handshake_timeout=0.5)  # fmt: skip
    if mode is not Mode.OFF:
        assert certs is not None
        wanted = TlsConfig(mode, certificates=str(certs), verify_peer=verify_peer)
        t.server.tls = wanted.server_tls()
    return t


@pytest.fixture(scope="module")
def require(certs):
    t = start(certs, Mode.REQUIRE)
    yield t
    t.stop()


@pytest.fixture(scope="module")
def optional(certs):
    t = start(certs, Mode.ON)
    yield t
    t.stop()


@pytest.fixture(scope="module")
def plain():
    t = start(None, Mode.OFF)
    yield t
    t.stop()


def starttls(c: RawClient, certs: pathlib.Path, with_cert: bool = False) -> None:
    c.option(p.OPT_STARTTLS)
    assert c.option_reply() == (p.OPT_STARTTLS, p.REP_ACK, b"")
    c.sock = client_context(certs, with_cert).wrap_socket(c.sock, server_hostname="127.0.0.1")


def roundtrip(c: RawClient, name: str = "one", size: int = 300_000) -> None:
    """GO, a WRITE larger than the staging buffer, FLUSH, READ it back."""
    c.go(name)
    data = bytes(range(256)) * (size // 256)
    c.request(p.CMD_WRITE, 1000, len(data), data=data, cookie=7)
    assert c.reply()[:2] == (7, 0)
    c.request(p.CMD_FLUSH, cookie=8)
    assert c.reply()[:2] == (8, 0)
    c.request(p.CMD_READ, 1000, len(data), cookie=9)
    assert c.reply(len(data))[:3] == (9, 0, data)


def test_pipelined_writes_over_tls_arrive_whole(require, certs):
    # Payloads decrypted straight into their buffers, the next header behind
    # each one into staging: a payload complete but not yet taken must not
    # look like the end of the TLS stream (asyncio reads a 0-byte buffer as EOF).
    c = RawClient(require.port)
    c.greet()
    starttls(c, certs)
    c.go("one")
    chunks = [bytes([i]) * (200_000 + i) for i in range(1, 5)]
    offsets = [i * 200_100 for i in range(4)]
    c.sock.sendall(b"".join(
        p.REQUEST.pack(p.REQUEST_MAGIC, 0, p.CMD_WRITE, 20 + i, off, len(data)) + data
        for i, (off, data) in enumerate(zip(offsets, chunks, strict=True))
    ))  # fmt: skip
    assert sorted(c.reply()[:2] for _ in chunks) == [(20 + i, 0) for i in range(4)]
    for i, (off, data) in enumerate(zip(offsets, chunks, strict=True)):
        c.request(p.CMD_READ, off, len(data), cookie=30 + i)
        assert c.reply(len(data))[:3] == (30 + i, 0, data)
    c.close()


def go_body(name: str) -> bytes:
    return _string(name) + p.U16.pack(0)


# -- require ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "option,data",
    [
        (p.OPT_GO, go_body("one")),
        (p.OPT_INFO, go_body("one")),
        (p.OPT_LIST, b""),
        (p.OPT_STRUCTURED_REPLY, b""),
        (p.OPT_LIST_META_CONTEXT, _string("one") + p.U32.pack(0)),
        (99, b""),  # even an unknown option: TLS first
    ],
)
def test_require_answers_tls_reqd_to_a_plain_client(require, option, data):
    c = RawClient(require.port)
    c.greet()
    c.option(option, data)
    reply_option, rtype, message = c.option_reply()
    assert (reply_option, rtype) == (option, p.REP_ERR_TLS_REQD)
    assert b"requires TLS" in message
    # the connection is kept: the client may still upgrade
    c.option(p.OPT_LIST)
    assert c.option_reply()[1] == p.REP_ERR_TLS_REQD
    c.close()


def test_require_closes_a_plain_export_name(require):
    c = RawClient(require.port)
    c.greet()
    c.option(p.OPT_EXPORT_NAME, b"one")  # no error reply exists for it
    assert c.closed()


def test_require_acks_a_plain_abort(require):
    c = RawClient(require.port)
    c.greet()
    c.option(p.OPT_ABORT)
    assert c.option_reply()[1] == p.REP_ACK
    assert c.closed()


def test_require_serves_after_starttls(require, certs):
    c = RawClient(require.port)
    c.greet()
    starttls(c, certs)
    assert c.sock.version() in ("TLSv1.2", "TLSv1.3")
    c.option(p.OPT_LIST)
    replies = c.replies_until_final()
    assert replies[-1][0] == p.REP_ACK
    assert sorted(d[4:] for t, d in replies if t == p.REP_SERVER) == [b"one", b"two"]
    roundtrip(c)
    c.request(p.CMD_DISC)
    c.close()
    d = RawClient(require.port)  # a new connection sees the data over TLS too
    d.greet()
    starttls(d, certs)
    d.go("one")
    d.request(p.CMD_READ, 1000, 256, cookie=3)
    assert d.reply(256)[:3] == (3, 0, bytes(range(256)))
    d.close()


def test_export_name_inside_tls_is_served(require, certs):
    c = RawClient(require.port)
    c.greet()
    starttls(c, certs)
    c.option(p.OPT_EXPORT_NAME, b"two")
    size, flags = p.EXPORT_NAME_REPLY.unpack(c.recv(p.EXPORT_NAME_REPLY.size))
    assert size == 4 * OSIZE and flags & p.TFLAG_HAS_FLAGS
    c.request(p.CMD_READ, 0, 16, cookie=5)
    assert c.reply(16)[:3] == (5, 0, bytes(16))
    c.close()


def test_a_second_starttls_is_invalid(require, certs):
    c = RawClient(require.port)
    c.greet()
    starttls(c, certs)
    c.option(p.OPT_STARTTLS)
    _, rtype, message = c.option_reply()
    assert rtype == p.REP_ERR_INVALID and b"already" in message
    roundtrip(c, "two", 1000)  # and the session goes on
    c.close()


def test_starttls_with_data_is_invalid(require, certs):
    c = RawClient(require.port)
    c.greet()
    c.option(p.OPT_STARTTLS, b"x")
    assert c.option_reply()[1] == p.REP_ERR_INVALID
    starttls(c, certs)  # still possible, done right
    roundtrip(c, "two", 1000)
    c.close()


def test_bytes_sent_behind_starttls_close_the_connection(require, certs, caplog):
    caplog.set_level(logging.DEBUG, logger="stowkit.corelib.nbd.server")
    c = RawClient(require.port)
    c.greet()
    # An injected GO riding behind STARTTLS, in clear: never taken as if protected.
    header = p.OPTION_HEADER.pack(p.IHAVEOPT, p.OPT_STARTTLS, 0)
    go = p.OPTION_HEADER.pack(p.IHAVEOPT, p.OPT_GO, 6) + go_body("")
    c.sock.sendall(header + go)
    assert c.closed()
    # refused on purpose (no STARTTLS reply at all), not by an internal error
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "data sent after NBD_OPT_STARTTLS" in caplog.text
    good = RawClient(require.port)
    good.greet()
    starttls(good, certs)
    roundtrip(good, "two", 1000)
    good.close()


def test_structured_replies_negotiated_in_clear_do_not_carry_into_tls(optional, certs):
    c = RawClient(optional.port)
    c.greet()
    c.option(p.OPT_STRUCTURED_REPLY)
    assert c.option_reply()[1] == p.REP_ACK
    starttls(c, certs)
    c.go("two", structured=False)
    c.request(p.CMD_READ, 0, 8, cookie=4)
    cookie, error, data, chunks = c.reply(8)
    assert (cookie, error, data, chunks) == (4, 0, bytes(8), [])  # a simple reply
    c.close()


# -- failed and stalled TLS handshakes ----------------------------------------------------
def test_a_failed_tls_handshake_closes_only_that_client(require, certs):
    during = RawClient(require.port)  # a client in the middle of its session
    during.greet()
    starttls(during, certs)
    during.go("one")
    bad = RawClient(require.port)
    bad.greet()
    bad.option(p.OPT_STARTTLS)
    assert bad.option_reply()[1] == p.REP_ACK
    bad.sock.sendall(b"GET / HTTP/1.0\r\n\r\n" * 20)  # not a ClientHello
    assert bad.closed()
    wrong_ca = ssl.create_default_context()  # the system CAs do not know ours
    refused = RawClient(require.port)
    refused.greet()
    refused.option(p.OPT_STARTTLS)
    assert refused.option_reply()[1] == p.REP_ACK
    with pytest.raises(ssl.SSLCertVerificationError):
        wrong_ca.wrap_socket(refused.sock, server_hostname="127.0.0.1")
    refused.close()
    during.request(p.CMD_READ, 0, 4, cookie=11)
    assert during.reply(4)[:2] == (11, 0)
    during.close()


def test_a_stalled_tls_handshake_is_closed_by_the_handshake_bound(require, certs):
    stuck = []
    for _ in range(20):
        c = RawClient(require.port)
        c.greet()
        c.option(p.OPT_STARTTLS)
        assert c.option_reply()[1] == p.REP_ACK
        stuck.append(c)  # and no ClientHello ever
    good = RawClient(require.port)
    good.greet()
    starttls(good, certs)
    roundtrip(good, "two", 1000)
    good.close()
    for c in stuck:
        assert c.closed()  # within 0.5 s; the 10 s socket timeout would raise
        c.close()


def test_a_client_silent_inside_tls_is_closed_by_the_handshake_bound(require, certs):
    c = RawClient(require.port)
    c.greet()
    starttls(c, certs)
    with pytest.raises((ConnectionError, ssl.SSLError)):
        if c.sock.recv(1) == b"":
            raise ConnectionError("closed")


# -- on and off ------------------------------------------------------------------------------
def test_on_serves_plain_and_tls_clients(optional, certs):
    clear = RawClient(optional.port)
    clear.greet()
    roundtrip(clear, "one", 5000)
    clear.close()
    secure = RawClient(optional.port)
    secure.greet()
    starttls(secure, certs)
    roundtrip(secure, "two", 70000)
    secure.close()


def test_off_refuses_starttls_with_policy_and_goes_on(plain):
    c = RawClient(plain.port)
    c.greet()
    c.option(p.OPT_STARTTLS)
    _, rtype, message = c.option_reply()
    assert rtype == p.REP_ERR_POLICY and b"not enabled" in message
    roundtrip(c, "two", 1000)
    c.close()


# -- client certificates -------------------------------------------------------------------
def test_verify_peer_wants_a_client_certificate_from_the_ca(certs):
    t = start(certs, Mode.REQUIRE, verify_peer=True)
    try:
        anonymous = RawClient(t.port)
        anonymous.greet()
        anonymous.option(p.OPT_STARTTLS)
        assert anonymous.option_reply()[1] == p.REP_ACK
        with pytest.raises((ssl.SSLError, ConnectionError)):
            # TLS 1.3: the refusal comes with the first read after the handshake
            anonymous.sock = client_context(certs).wrap_socket(
                anonymous.sock, server_hostname="127.0.0.1"
            )
            anonymous.option(p.OPT_LIST)
            anonymous.option_reply()
        anonymous.close()
        known = RawClient(t.port)
        known.greet()
        starttls(known, certs, with_cert=True)
        roundtrip(known, "two", 1000)
        known.close()
    finally:
        t.stop()


# -- credentials: one line naming the file ------------------------------------------------
def test_missing_and_unreadable_files_are_named(certs, tmp_path):
    with pytest.raises(ConfigError, match=r"certificate directory .*nowhere: not a directory"):
        TlsConfig(Mode.ON, certificates=str(tmp_path / "nowhere")).server_tls()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match=rf"certificate {empty}/server-cert.pem: No such file"):
        TlsConfig(Mode.ON, certificates=str(empty)).server_tls()
    key = tmp_path / "key.pem"
    key.write_text("not a key")
    with pytest.raises(ConfigError, match=rf"private key {key}: no PEM private key"):
        TlsConfig(Mode.ON, cert_file=str(certs / "server-cert.pem"), key_file=str(key)).server_tls()
    key.write_bytes((certs / "server-key.pem").read_bytes())
    key.chmod(0)
    if not _root_reads_anything(key):
        with pytest.raises(ConfigError, match=rf"private key {key}: Permission denied"):
            TlsConfig(Mode.ON, cert_file=str(certs / "server-cert.pem"),
                      key_file=str(key)).server_tls()  # fmt: skip


def _root_reads_anything(path: pathlib.Path) -> bool:
    try:
        path.read_bytes()
        return True
    except PermissionError:
        return False


def test_a_key_of_another_certificate_is_named(certs):
    with pytest.raises(ConfigError, match=r"client-key.pem does not match certificate"):
        TlsConfig(Mode.REQUIRE, cert_file=str(certs / "server-cert.pem"),
                  key_file=str(certs / "client-key.pem")).server_tls()  # fmt: skip


def test_an_encrypted_key_is_refused_without_a_prompt(certs, tmp_path):
    key = tmp_path / "locked.pem"
    openssl("pkey", "-in", str(certs / "server-key.pem"), "-aes256", "-passout", "pass:secret",
             "-out", str(key), cwd=tmp_path)  # fmt: skip
    with pytest.raises(ConfigError, match=r"locked.pem: it is encrypted"):
        TlsConfig(Mode.ON, cert_file=str(certs / "server-cert.pem"), key_file=str(key)).server_tls()


def test_modes_and_credentials_that_do_not_fit(certs, tmp_path):
    assert TlsConfig(Mode.OFF, certificates=str(certs)).server_tls() is None
    with pytest.raises(ConfigError, match=r"TLS require needs credentials"):
        TlsConfig(Mode.REQUIRE).server_tls()
    with pytest.raises(ConfigError, match=r"--tls-key is needed"):
        TlsConfig(Mode.ON, cert_file=str(certs / "server-cert.pem")).server_tls()
    no_ca = tmp_path / "no-ca"
    no_ca.mkdir()
    for name in ("server-cert.pem", "server-key.pem"):
        (no_ca / name).write_bytes((certs / name).read_bytes())
    assert TlsConfig(Mode.ON, certificates=str(no_ca)).server_tls() is not None  # CA optional
    with pytest.raises(ConfigError, match=rf"CA certificate {no_ca}/ca-cert.pem: No such file"):
        TlsConfig(Mode.ON, certificates=str(no_ca), verify_peer=True).server_tls()
    with pytest.raises(ConfigError, match=r"not both"):
        TlsConfig(Mode.ON, certificates=str(certs), psk_file=str(tmp_path / "k")).server_tls()


def test_psk_files_are_parsed_and_errors_name_the_line(tmp_path):
    keys = tmp_path / "keys.psk"
    keys.write_text("alice:00112233445566778899aabbccddeeff\n\nbob:0a0b\n")
    assert nbd_tls.load_psk_file(str(keys)) == {
        "alice": bytes.fromhex("00112233445566778899aabbccddeeff"),
        "bob": b"\x0a\x0b",
    }
    keys.write_text("alice:00112233\nbob:nothex-secret\n")
    with pytest.raises(ConfigError, match=r"keys.psk line 2: not username:hexkey") as err:
        nbd_tls.load_psk_file(str(keys))
    assert "secret" not in str(err.value)
    with pytest.raises(ConfigError, match=r"PSK file .*absent.psk: No such file"):
        nbd_tls.load_psk_file(str(tmp_path / "absent.psk"))


@pytest.mark.skipif(nbd_tls.PSK_SUPPORTED, reason="this ssl module has PSK: the other test runs")
def test_psk_without_support_in_ssl_is_one_line_naming_the_python_needed(tmp_path):
    keys = tmp_path / "keys.psk"
    keys.write_text("alice:00112233445566778899aabbccddeeff\n")
    with pytest.raises(ConfigError, match=r"needs Python >= 3.13's ssl module; this is Python 3"):
        TlsConfig(Mode.REQUIRE, psk_file=str(keys)).server_tls()


@pytest.mark.skipif(not nbd_tls.PSK_SUPPORTED, reason="needs Python >= 3.13's ssl module")
def test_psk_serves_a_client_with_the_key(tmp_path):  # pragma: no cover - Python >= 3.13
    key = bytes(range(16))
    keys = tmp_path / "keys.psk"
    keys.write_text(f"alice:{key.hex()}\n")
    store = MemoryBlockStore()
    store.create_device("two", 4 * OSIZE, OSIZE)
    t = ServerThread(store, ["two"], cache_size=8 * OSIZE, lease=30, handshake_timeout=0.5)
    t.server.tls = TlsConfig(Mode.REQUIRE, psk_file=str(keys)).server_tls()
    try:
        c = RawClient(t.port)
        c.greet()
        c.option(p.OPT_STARTTLS)
        assert c.option_reply()[1] == p.REP_ACK
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_ciphers("PSK")
        ctx.set_psk_client_callback(lambda hint: ("alice", key))
        c.sock = ctx.wrap_socket(c.sock)
        roundtrip(c, "two", 1000)
        c.close()
    finally:
        t.stop()


def test_config_options_and_command_line_overrides():
    from oslo_config import cfg

    conf = cfg.ConfigOpts()
    nbd_tls.register_opts(conf)
    conf([], default_config_files=[])
    base = TlsConfig.from_conf(conf)
    assert base == TlsConfig()
    conf.set_override("tls", "require", group="blockstore")
    conf.set_override("tls_certificates", "/etc/pki/qemu", group="blockstore")
    wanted = TlsConfig.from_conf(conf).override(mode="on", cert_file=None, verify_peer=True)
    assert wanted == TlsConfig(Mode.ON, certificates="/etc/pki/qemu", verify_peer=True)


def test_server_tls_is_offered_as_loaded(certs):
    loaded = TlsConfig(Mode.REQUIRE, certificates=str(certs)).server_tls()
    assert isinstance(loaded, ServerTls) and loaded.required and loaded.kind == "x509"
    assert loaded.context.minimum_version >= ssl.TLSVersion.TLSv1_2


# -- the command line --------------------------------------------------------------------
def _serve(tmp_path, *args: str) -> subprocess.CompletedProcess:
    from tests.commands import STOWKIT

    conf = tmp_path / "stowkit.conf"
    conf.write_text(f"[DEFAULT]\nstate_dir = {tmp_path}/state\n[blockstore]\nbackend = local\n")
    base = [*STOWKIT, "--config-file", str(conf)]
    setup = [*base, "blockstore", "setup", "d", "--size", "1M"]
    subprocess.run(setup, check=True, capture_output=True, timeout=60)
    return subprocess.run([*base, "blockstore", "serve", *args, "d"], capture_output=True,
                          text=True, timeout=60)  # fmt: skip


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--tls-certificates", "{tmp}/none"], "TLS certificate directory {tmp}/none: not a dir"),
        (
            ["--tls-cert", "{certs}/server-cert.pem", "--tls-key", "{tmp}/gone.pem"],
            "TLS private key {tmp}/gone.pem: No such file or directory",
        ),
        (
            ["--tls-cert", "{certs}/server-cert.pem", "--tls-key", "{certs}/ca-key.pem"],
            "TLS private key {certs}/ca-key.pem does not match certificate",
        ),
        ([], "TLS require needs credentials"),
    ],
)
def test_serve_with_bad_credentials_is_one_line_exit_10_before_listening(
    certs, tmp_path, flags, message
):
    flags = [f.format(tmp=tmp_path, certs=certs) for f in flags]
    with socket.socket() as busy:  # were the port opened first, this would say exit 9
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        out = _serve(tmp_path, "--port", port, "--tls", "require", *flags)
    assert out.returncode == 10, out.stderr
    assert out.stdout == "" and out.stderr.count("\n") == 1
    assert out.stderr.startswith("stowkit: " + message.format(tmp=tmp_path, certs=certs))


def test_serve_announces_nbds_when_tls_is_required(certs, tmp_path):
    from tests.commands import STOWKIT

    conf = tmp_path / "stowkit.conf"
    conf.write_text(
        f"[DEFAULT]\nstate_dir = {tmp_path}/state\n[blockstore]\nbackend = local\n"
        f"tls = require\ntls_certificates = {certs}\n"  # from the config file
    )
    base = [*STOWKIT, "--config-file", str(conf)]
    subprocess.run([*base, "blockstore", "setup", "d", "--size", "1M"], check=True,
                   capture_output=True, timeout=60)  # fmt: skip
    proc = subprocess.Popen([*base, "blockstore", "serve", "--port", "0", "d"],
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        line = proc.stdout.readline()
        assert line.startswith("serving nbds://127.0.0.1:") and line.rstrip().endswith("/d")
        port = int(line.split(":")[2].split("/")[0])
        c = RawClient(port)
        c.greet()
        c.option(p.OPT_LIST)
        assert c.option_reply()[1] == p.REP_ERR_TLS_REQD
        starttls(c, certs)
        roundtrip(c, "d", 1000)
        c.close()
        proc.terminate()
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_shutdown_does_not_wait_for_a_stalled_tls_handshake(certs):
    # The handshake bound (60 s) is beyond ServerThread's 30 s wait for the
    # shutdown: only closing the half-done TLS connection lets it finish.
    store = MemoryBlockStore()
    store.create_device("one", 4 * OSIZE, OSIZE)
    t = ServerThread(store, ["one"], cache_size=8 * OSIZE, lease=30, handshake_timeout=60)
    t.server.tls = TlsConfig(Mode.REQUIRE, certificates=str(certs)).server_tls()
    c = RawClient(t.port, timeout=60)
    c.greet()
    c.option(p.OPT_STARTTLS)
    assert c.option_reply()[1] == p.REP_ACK  # and no ClientHello
    t.stop()
    assert c.closed()
    c.close()

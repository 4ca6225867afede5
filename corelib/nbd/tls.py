"""TLS for the NBD server: its ``[blockstore] tls*`` options and the server's SSL context.

Clients upgrade with NBD_OPT_STARTTLS during option haggling (see
:mod:`stowkit.corelib.nbd.server`); this module only decides *whether* TLS is
offered or required and builds the :class:`ssl.SSLContext` that does it.  The
TLS itself is the standard library's (OpenSSL); nothing here speaks TLS.

Credentials, as nbdkit and qemu-nbd take them:

* X.509: a directory in qemu's and nbdkit's layout (``ca-cert.pem``,
  ``server-cert.pem``, ``server-key.pem``), so one directory serves all three
  servers, or the files one by one.  The CA is needed only to verify client
  certificates (``verify_peer``).
* PSK: a psktool file (``username:hexkey`` lines), as nbdkit's ``--tls-psk``.
  Python's ssl module has PSK callbacks only from Python 3.13
  (``SSLContext.set_psk_server_callback``); on older interpreters a PSK file
  is refused at start with one line (:data:`PSK_SUPPORTED`).

Every file is read, and every mistake reported naming it, when the context is
built: before the server opens its socket.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import platform
import ssl

from oslo_config import cfg

from stowkit.corelib.errors import ConfigError

#: Beside the NBD server's other options (corelib/nbd/export.py), prefixed tls.
GROUP = "blockstore"

#: File names inside a certificate directory: qemu's and nbdkit's layout.
CA_CERT = "ca-cert.pem"
SERVER_CERT = "server-cert.pem"
SERVER_KEY = "server-key.pem"

#: The running ssl module can serve TLS-PSK (Python >= 3.13 built with PSK).
PSK_SUPPORTED: bool = bool(getattr(ssl, "HAS_PSK", False)) and hasattr(
    ssl.SSLContext, "set_psk_server_callback"
)


class Mode(enum.StrEnum):
    OFF = "off"  # STARTTLS is refused (NBD_REP_ERR_POLICY)
    ON = "on"  # plain and TLS clients both served
    REQUIRE = "require"  # nothing but STARTTLS (and ABORT) before TLS


opts = [
    cfg.StrOpt(
        "tls",
        default=Mode.OFF.value,
        choices=[
            (Mode.OFF.value, "NBD_OPT_STARTTLS is refused (NBD_REP_ERR_POLICY)"),
            (Mode.ON.value, "plain and TLS clients are both served"),
            (Mode.REQUIRE.value, "only clients that upgrade to TLS are served"),
        ],
        help="TLS on NBD connections (NBD_OPT_STARTTLS): off refuses it, on offers "
        "it to clients that ask, require refuses clients that do not upgrade.  "
        "`stowkit blockstore serve --tls` overrides it.",
    ),
    cfg.StrOpt(
        "tls_certificates",
        help="Directory of X.509 credentials in qemu's and nbdkit's layout: "
        "server-cert.pem, server-key.pem and, to verify clients, ca-cert.pem.",
    ),
    cfg.StrOpt("tls_cert_file", help="Server certificate (PEM); overrides tls_certificates/."),
    cfg.StrOpt(
        "tls_key_file", help="Server private key (PEM, unencrypted); overrides tls_certificates/."
    ),
    cfg.StrOpt("tls_ca_file", help="CA certificates (PEM) client certificates must chain to."),
    cfg.BoolOpt(
        "tls_verify_peer",
        default=False,
        help="Require a client certificate signed by the CA (tls_ca_file or "
        "tls_certificates/ca-cert.pem).",
    ),
    cfg.StrOpt(
        "tls_psk_file",
        help="Pre-shared keys instead of certificates: psktool's format, one "
        "username:hexkey per line.  Needs Python >= 3.13's ssl module.",
    ),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(opts, group=GROUP)


@dataclasses.dataclass
class TlsConfig:
    """What the operator asked for; :meth:`server_tls` checks and loads it."""

    mode: Mode = Mode.OFF
    certificates: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    ca_file: str | None = None
    verify_peer: bool = False
    psk_file: str | None = None

    @classmethod
    def from_conf(cls, conf: cfg.ConfigOpts) -> TlsConfig:
        register_opts(conf)
        group = conf[GROUP]
        return cls(
            mode=Mode(group.tls),
            certificates=group.tls_certificates,
            cert_file=group.tls_cert_file,
            key_file=group.tls_key_file,
            ca_file=group.tls_ca_file,
            verify_peer=group.tls_verify_peer,
            psk_file=group.tls_psk_file,
        )

    def override(self, **values) -> TlsConfig:
        """A copy with the values that are not None (command-line flags) replacing ours."""
        given = {k: v for k, v in values.items() if v is not None}
        if "mode" in given:
            given["mode"] = Mode(given["mode"])
        return dataclasses.replace(self, **given)

    @property
    def has_credentials(self) -> bool:
        return any((self.certificates, self.cert_file, self.key_file, self.psk_file))

    def server_tls(self) -> ServerTls | None:
        """The loaded credentials, or None with TLS off; ConfigError naming the bad file."""
        if self.mode is Mode.OFF:
            return None
        if self.psk_file:
            if self.certificates or self.cert_file or self.key_file:
                raise ConfigError(
                    "TLS: give either certificates (--tls-certificates, --tls-cert/--tls-key) "
                    "or a PSK file (--tls-psk), not both"
                )
            return ServerTls(self.mode, psk_context(self.psk_file), "psk")
        if not self.has_credentials:
            raise ConfigError(
                f"TLS {self.mode.value} needs credentials: --tls-certificates DIR "
                "(or --tls-cert and --tls-key), or --tls-psk FILE"
            )
        return ServerTls(self.mode, self._x509_context(), "x509")

    def _x509_context(self) -> ssl.SSLContext:
        folder = self.certificates
        if folder is not None and not os.path.isdir(folder):
            raise ConfigError(f"TLS certificate directory {folder}: not a directory")
        cert = self.cert_file or (os.path.join(folder, SERVER_CERT) if folder else None)
        key = self.key_file or (os.path.join(folder, SERVER_KEY) if folder else None)
        if cert is None or key is None:
            missing = "--tls-cert" if cert is None else "--tls-key"
            raise ConfigError(f"TLS: {missing} is needed too (or --tls-certificates DIR)")
        ca = self.ca_file
        if ca is None and folder and self.verify_peer:
            ca = os.path.join(folder, CA_CERT)
        if self.verify_peer and ca is None:
            raise ConfigError("TLS: --tls-verify-peer needs a CA (--tls-ca, or ca-cert.pem in DIR)")
        return x509_context(cert, key, ca if self.verify_peer else None)


@dataclasses.dataclass(frozen=True)
class ServerTls:
    """TLS as one server offers it: its mode and its loaded context."""

    mode: Mode
    context: ssl.SSLContext
    kind: str  # "x509" or "psk", for messages

    @property
    def required(self) -> bool:
        return self.mode is Mode.REQUIRE


def _read_text(path: str, what: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read(1 << 20).decode("ascii", "replace")
    except OSError as err:
        raise ConfigError(f"TLS {what} {path}: {err.strerror or err}") from None


def _base_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # One message per connection is plenty; renegotiation and compression
    # are off in OpenSSL 3 already.
    context.options |= ssl.OP_NO_TICKET
    return context


def x509_context(cert: str, key: str, ca: str | None = None) -> ssl.SSLContext:
    """A server context with ``cert``/``key``; with ``ca``, clients must show a certificate."""
    cert_text = _read_text(cert, "certificate")
    key_text = _read_text(key, "private key")
    if "-----BEGIN CERTIFICATE-----" not in cert_text:
        raise ConfigError(f"TLS certificate {cert}: no PEM certificate in it")
    if "PRIVATE KEY-----" not in key_text:
        raise ConfigError(f"TLS private key {key}: no PEM private key in it")
    context = _base_context()

    def no_password() -> bytes:
        # Without this OpenSSL would prompt on the terminal of a daemon.
        raise ConfigError(f"TLS private key {key}: it is encrypted; give an unencrypted key")

    try:
        context.load_cert_chain(cert, key, password=no_password)
    except ssl.SSLError as err:
        reason = err.reason or str(err)
        if "MISMATCH" in reason.upper():
            raise ConfigError(f"TLS private key {key} does not match certificate {cert}") from None
        raise ConfigError(f"TLS certificate {cert} / key {key}: unusable ({reason})") from None
    except OSError as err:
        raise ConfigError(f"TLS certificate {cert} / key {key}: {err.strerror or err}") from None
    if ca is not None:
        ca_text = _read_text(ca, "CA certificate")
        if "-----BEGIN CERTIFICATE-----" not in ca_text:
            raise ConfigError(f"TLS CA certificate {ca}: no PEM certificate in it")
        try:
            context.load_verify_locations(cafile=ca)
        except (ssl.SSLError, OSError) as err:
            raise ConfigError(f"TLS CA certificate {ca}: unusable ({err})") from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def load_psk_file(path: str) -> dict[str, bytes]:
    """username -> key of a psktool file; ConfigError naming the file and line (never the key)."""
    keys: dict[str, bytes] = {}
    for number, line in enumerate(_read_text(path, "PSK file").splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        user, sep, hexkey = line.partition(":")
        try:
            if not sep or not user:
                raise ValueError
            key = bytes.fromhex(hexkey)
        except ValueError:
            raise ConfigError(f"TLS PSK file {path} line {number}: not username:hexkey") from None
        if not key:
            raise ConfigError(f"TLS PSK file {path} line {number}: empty key")
        keys[user] = key
    if not keys:
        raise ConfigError(f"TLS PSK file {path}: no username:hexkey line in it")
    return keys


def psk_context(path: str) -> ssl.SSLContext:
    """A server context taking the clients of the psktool file ``path``."""
    if not PSK_SUPPORTED:
        raise ConfigError(
            f"TLS PSK (--tls-psk {path}) needs Python >= 3.13's ssl module; this is "
            f"Python {platform.python_version()}: use X.509 certificates (--tls-certificates)"
        )
    keys = load_psk_file(path)
    context = _base_context()
    # TLS 1.2 PSK suites (TLS 1.3 suites are not chosen by this string).
    context.set_ciphers("PSK")

    def lookup(identity: str | None) -> bytes:
        return keys.get(identity or "", b"")  # empty: unknown user, handshake refused

    context.set_psk_server_callback(lookup)  # type: ignore[attr-defined]
    return context

"""``stowkit blockstore serve``: serve devices over NBD until SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import os
import socket
import sys

from stowkit.cli.common import Command, parse_size, port_type
from stowkit.corelib import names, notify
from stowkit.corelib.blocklock import DEFAULT_LEASE
from stowkit.corelib.errors import BackendUnavailable, InvalidArgument
from stowkit.corelib.nbd import protocol
from stowkit.corelib.nbd.export import ExportSettings
from stowkit.corelib.nbd.tls import Mode as TlsMode
from stowkit.corelib.nbd.tls import ServerTls, TlsConfig

LOG = logging.getLogger(__name__)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise InvalidArgument(f"invalid number {text!r}") from None
    if value <= 0:
        raise InvalidArgument(f"invalid number {text!r}: must be positive")
    return value


class ServeBlockDevices(Command):
    """Serve block devices over NBD (all devices when no NAME is given).

    Writes are cached (write-back, --cache-size per device) and stored in the
    backend on FLUSH, FUA, cache pressure, the last client's disconnect and
    on SIGTERM/SIGINT, which stop the server cleanly.
    """

    service = True  # logs through oslo.log

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument("names", nargs="*", metavar="NAME", help="Devices to serve.")
        parser.add_argument("--bind", default="127.0.0.1", help="Address to listen on.")
        parser.add_argument(
            "--port", type=port_type(0), default=10809, help="TCP port (0: any free one)."
        )
        parser.add_argument(
            "--cache-size",
            default="64M",
            help="Write-back cache of each served device (default 64M).",
        )
        parser.add_argument("--read-only", action="store_true", help="Refuse writes; take no lock.")
        parser.add_argument(
            "--workers",
            default="16",
            help="Parallel backend requests per server (default 16).",
        )
        parser.add_argument(
            "--readahead",
            default="4M",
            help="Objects prefetched ahead of sequential reads, in bytes (default 4M; 0: off).",
        )
        parser.add_argument(
            "--lease",
            type=float,
            default=DEFAULT_LEASE,
            help=f"Lease of the device lock in seconds, renewed in the background "
            f"(default {DEFAULT_LEASE:g}).",
        )
        parser.add_argument(
            "--lock-scope",
            choices=["server", "connection"],
            help="Hold each writable device's lock from the server's start to its stop "
            "(server), or only while clients are connected (connection) "
            "(default: [blockstore] lock_scope, server).",
        )
        tls = parser.add_argument_group("TLS (NBD_OPT_STARTTLS; defaults: [blockstore] tls*)")
        tls.add_argument(
            "--tls",
            choices=[m.value for m in TlsMode],
            default=None,
            help="off: refuse STARTTLS; on: plain and TLS clients; require: TLS clients only "
            "(default: [blockstore] tls, off).",
        )
        tls.add_argument(
            "--tls-certificates",
            metavar="DIR",
            help="X.509 directory as qemu and nbdkit use it: server-cert.pem, "
            "server-key.pem, ca-cert.pem (the CA only for --tls-verify-peer).",
        )
        tls.add_argument("--tls-cert", metavar="FILE", help="Server certificate (PEM).")
        tls.add_argument("--tls-key", metavar="FILE", help="Server private key (PEM).")
        tls.add_argument("--tls-ca", metavar="FILE", help="CA for client certificates (PEM).")
        tls.add_argument(
            "--tls-verify-peer",
            action="store_true",
            default=None,
            help="Require a client certificate signed by the CA.",
        )
        tls.add_argument(
            "--tls-psk",
            metavar="FILE",
            help="Pre-shared keys (psktool's username:hexkey lines) instead of certificates; "
            "needs Python >= 3.13.",
        )
        return parser

    def take_action(self, parsed_args):
        from stowkit.corelib.nbd.server import serve

        if not 0 <= parsed_args.port <= 65535:
            raise InvalidArgument(f"invalid port {parsed_args.port}")
        tls = self._tls(parsed_args)  # every credential read (ConfigError) before listening
        readahead = 0 if parsed_args.readahead == "0" else parse_size(parsed_args.readahead)
        settings = ExportSettings(
            cache_size=parse_size(parsed_args.cache_size),
            workers=_positive_int(parsed_args.workers),
            readahead=readahead,
            lease=parsed_args.lease,
            max_block=protocol.MAX_PAYLOAD,
        ).apply_conf(self.app.conf)
        if parsed_args.lock_scope:
            settings.lock_scope = parsed_args.lock_scope
        store = self.driver("blockstore")
        for name in parsed_args.names:
            names.check_name(name, "device name")
        devices = parsed_args.names or [d.name for d in store.list_devices()]
        if not devices:
            raise InvalidArgument("no device to serve: create one with `stowkit blockstore setup`")
        for name in devices:
            store.get_device(name)  # NotFound before listening

        listening = False

        def ready(server) -> None:
            nonlocal listening
            listening = True
            mode = " (read-only)" if parsed_args.read_only else ""
            # nbds:// is libnbd's "TLS required"; with TLS optional both work.
            scheme = "nbds" if tls is not None and tls.required else "nbd"
            if tls is not None and not tls.required:
                mode += " (TLS optional)"
            for name in server.exports:
                print(f"serving {scheme}://{server.bind}:{server.port}/{name}{mode}", flush=True)
            sys.stdout.flush()
            notify.ready()  # systemd (Type=notify): the port accepts connections now

        try:
            serve(
                store,
                devices,
                bind=parsed_args.bind,
                port=parsed_args.port,
                read_only=parsed_args.read_only,
                settings=settings,
                ready=ready,
                stopping=notify.stopping,
                tls=tls,
            )
        except OSError as exc:
            # asyncio says "[Errno 98] error while attempting to bind on address
            # ('127.0.0.1', 10809): address already in use": one line of ours.
            if listening or not (isinstance(exc, socket.gaierror) or "bind" in str(exc)):
                raise
            reason = os.strerror(exc.errno) if exc.errno and exc.errno > 0 else str(exc)
            if isinstance(exc, socket.gaierror):
                reason = exc.strerror or str(exc)
            raise BackendUnavailable(
                f"cannot listen on {parsed_args.bind}:{parsed_args.port}: {reason}"
            ) from None
        return 0

    def _tls(self, parsed_args) -> ServerTls | None:
        wanted = TlsConfig.from_conf(self.app.conf).override(
            mode=parsed_args.tls,
            certificates=parsed_args.tls_certificates,
            cert_file=parsed_args.tls_cert,
            key_file=parsed_args.tls_key,
            ca_file=parsed_args.tls_ca,
            verify_peer=parsed_args.tls_verify_peer,
            psk_file=parsed_args.tls_psk,
        )
        if wanted.mode is TlsMode.OFF and wanted.has_credentials:
            LOG.warning("TLS is off: the TLS credentials given are not used (--tls on|require)")
        return wanted.server_tls()


COMMANDS = {"blockstore serve": ServeBlockDevices}

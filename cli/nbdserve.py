"""``stowkit blockstore serve``: serve devices over NBD until SIGTERM/SIGINT."""

from __future__ import annotations

import os
import socket
import sys

from stowkit.cli.common import Command, parse_size, port_type
from stowkit.corelib import names, notify
from stowkit.corelib.blockstore import DEFAULT_LEASE
from stowkit.corelib.errors import BackendUnavailable, InvalidArgument
from stowkit.corelib.nbd import protocol
from stowkit.corelib.nbd.export import ExportSettings


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
        return parser

    def take_action(self, parsed_args):
        from stowkit.corelib.nbd.server import serve

        if not 0 <= parsed_args.port <= 65535:
            raise InvalidArgument(f"invalid port {parsed_args.port}")
        readahead = 0 if parsed_args.readahead == "0" else parse_size(parsed_args.readahead)
        settings = ExportSettings(
            cache_size=parse_size(parsed_args.cache_size),
            workers=_positive_int(parsed_args.workers),
            readahead=readahead,
            lease=parsed_args.lease,
            max_block=protocol.MAX_PAYLOAD,
        ).apply_conf(self.app.conf)
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
            for name in server.exports:
                print(f"serving nbd://{server.bind}:{server.port}/{name}{mode}", flush=True)
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


COMMANDS = {"blockstore serve": ServeBlockDevices}

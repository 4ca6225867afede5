"""``stowkit backends``: what is installed, per namespace, and whether it can work here."""

from __future__ import annotations

from stowkit.cli.common import Lister
from stowkit.corelib import registry


class ListBackends(Lister):
    """List installed backends of every namespace, with their capabilities.

    Status is ``ok``, or ``unavailable: REASON`` for a backend that cannot be
    loaded or whose client library cannot be imported (the only command that
    runs these checks: they import every backend's client library).
    """

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument("--namespace", choices=registry.NAMESPACES, help="Only this namespace.")
        return parser

    def take_action(self, parsed_args):
        namespaces = (parsed_args.namespace,) if parsed_args.namespace else registry.NAMESPACES
        configured = {ns: self.app.conf[ns].backend for ns in namespaces}
        columns = ("namespace", "name", "selected", "capabilities", "target", "status")
        data = [
            (
                info.namespace,
                info.name,
                configured[info.namespace] == info.name,
                " ".join(info.capabilities),
                info.target,
                info.status,
            )
            for info in registry.installed(namespaces, check=True, conf=self.app.conf)
        ]
        return columns, data


COMMANDS = {"backends": ListBackends}

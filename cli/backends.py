"""``stowkit backends``: what is installed, per namespace."""

from __future__ import annotations

from stowkit.cli.common import Lister
from stowkit.corelib import registry


class ListBackends(Lister):
    """List installed backends of every namespace, with their capabilities."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument("--namespace", choices=registry.NAMESPACES, help="Only this namespace.")
        return parser

    def take_action(self, parsed_args):
        namespaces = (parsed_args.namespace,) if parsed_args.namespace else registry.NAMESPACES
        configured = {ns: self.app.conf[ns].backend for ns in namespaces}
        columns = ("Namespace", "Name", "Selected", "Capabilities", "Target", "Status")
        data = [
            (
                info.namespace,
                info.name,
                configured[info.namespace] == info.name,
                " ".join(info.capabilities),
                info.target,
                info.error or "ok",
            )
            for info in registry.installed(namespaces)
        ]
        return columns, data


COMMANDS = {"backends": ListBackends}

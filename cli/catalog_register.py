"""``stowkit catalog register``: put the catalog in Keystone as the ``backup`` service.

python-freezerclient (the ``freezer`` CLI, the agent and the scheduler) finds
its API in the Keystone catalog under the service type ``backup``; once
registered, no ``OS_BACKUP_URL`` is needed.  Credentials are keystoneauth1's
own ``--os-*`` options and ``OS_*`` variables (an admin of the cloud); the
calls are Keystone v3's REST API, made by the one Keystone owner (reached
through :func:`stowkit.corelib.registry.keystone`), so python-keystoneclient
is not needed.  Running it again changes what differs and nothing else.
"""

from __future__ import annotations

import argparse
import sys

from stowkit.cli.common import Lister
from stowkit.corelib import registry
from stowkit.corelib.errors import StowkitError
from stowkit.corelib.keystone import IdentityAdmin

SERVICE_TYPE = "backup"
INTERFACES = ("public", "internal", "admin")


class RegisterError(StowkitError):
    """Keystone refused or could not be reached."""

    exit_code = 1


class Register(Lister):
    """Register the catalog API in Keystone: the ``backup`` service and its endpoints."""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("--url", required=True, help="public endpoint URL of the catalog")
        parser.add_argument("--internal-url", help="internal endpoint (default: --url)")
        parser.add_argument("--admin-url", help="admin endpoint (default: --url)")
        parser.add_argument(
            "--region", default="RegionOne", help="region of the endpoints (created if missing)"
        )
        parser.add_argument("--name", default="freezer", help="service name (default freezer)")
        parser.add_argument(
            "--description", default="Backup catalog (stowkit, freezer-api compatible)"
        )
        registry.keystone().add_admin_arguments(parser, sys.argv)
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> tuple:
        keystone = registry.keystone().admin_from_arguments(parsed_args, RegisterError)
        urls = {
            "public": parsed_args.url,
            "internal": parsed_args.internal_url or parsed_args.url,
            "admin": parsed_args.admin_url or parsed_args.url,
        }
        rows = register(
            keystone, parsed_args.name, parsed_args.description, parsed_args.region, urls
        )
        return ("service_id", "interface", "region", "url", "change"), rows


def register(
    keystone: IdentityAdmin, name: str, description: str, region: str, urls: dict[str, str]
) -> list[tuple[str, str, str, str, str]]:
    """Create or update the service and one endpoint per interface; the rows say what changed."""
    found = keystone.call("GET", f"/services?type={SERVICE_TYPE}")["services"]
    mine = [s for s in found if s.get("name") == name]
    if mine:
        service_id = mine[0]["id"]
    else:
        body = {"service": {"type": SERVICE_TYPE, "name": name, "description": description}}
        service_id = keystone.call("POST", "/services", body)["service"]["id"]
    regions = keystone.call("GET", "/regions")["regions"]
    if region not in {r["id"] for r in regions}:
        keystone.call("POST", "/regions", {"region": {"id": region}})
    endpoints = keystone.call("GET", f"/endpoints?service_id={service_id}")["endpoints"]
    rows = []
    for interface in INTERFACES:
        url = urls[interface]
        same = [
            e
            for e in endpoints
            if e["interface"] == interface and (e.get("region_id") or e.get("region")) == region
        ]
        if not same:
            body = {
                "endpoint": {
                    "service_id": service_id,
                    "interface": interface,
                    "region_id": region,
                    "url": url,
                    "enabled": True,
                }
            }
            keystone.call("POST", "/endpoints", body)
            change = "created"
        elif same[0]["url"] != url or not same[0].get("enabled", True):
            body = {"endpoint": {"url": url, "enabled": True}}
            keystone.call("PATCH", f"/endpoints/{same[0]['id']}", body)
            change = "updated"
        else:
            change = "unchanged"
        rows.append((service_id, interface, region, url, change))
    return rows


COMMANDS: dict[str, type] = {"catalog register": Register}

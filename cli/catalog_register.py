"""``stowkit catalog register``: put the catalog in Keystone as the ``backup`` service.

python-freezerclient (the ``freezer`` CLI, the agent and the scheduler) finds
its API in the Keystone catalog under the service type ``backup``; once
registered, no ``OS_BACKUP_URL`` is needed.  Credentials are keystoneauth1's
own ``--os-*`` options and ``OS_*`` variables (an admin of the cloud); the
calls are Keystone v3's REST API through a keystoneauth1 session, so
python-keystoneclient is not needed.  Running it again changes what differs
and nothing else.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from stowkit.cli.common import Lister
from stowkit.corelib.errors import ConfigError, StowkitError

SERVICE_TYPE = "backup"
INTERFACES = ("public", "internal", "admin")


class RegisterError(StowkitError):
    """Keystone refused or could not be reached."""

    exit_code = 1


class Register(Lister):
    """Register the catalog API in Keystone: the ``backup`` service and its endpoints."""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        from keystoneauth1 import loading

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
        loading.register_session_argparse_arguments(parser)
        loading.register_auth_argparse_arguments(parser, sys.argv, default="password")
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> tuple:
        from keystoneauth1 import exceptions, loading

        try:
            auth = loading.load_auth_from_argparse_arguments(parsed_args)
        except (exceptions.MissingRequiredOptions, exceptions.NoMatchingPlugin) as exc:
            raise ConfigError(
                f"Keystone credentials incomplete ({exc}): give --os-auth-url, "
                "--os-username... or the OS_* variables of a cloud admin"
            ) from None
        sess = loading.load_session_from_argparse_arguments(parsed_args, auth=auth)
        keystone = Keystone(sess)
        urls = {
            "public": parsed_args.url,
            "internal": parsed_args.internal_url or parsed_args.url,
            "admin": parsed_args.admin_url or parsed_args.url,
        }
        rows = register(
            keystone, parsed_args.name, parsed_args.description, parsed_args.region, urls
        )
        return ("service_id", "interface", "region", "url", "change"), rows


class Keystone:
    """The few Keystone v3 calls the command makes, raw REST on a keystoneauth1 session."""

    def __init__(self, session: Any) -> None:
        self.session = session

    def call(self, method: str, path: str, body: Any = None) -> Any:
        from keystoneauth1 import exceptions

        try:
            resp = self.session.request(
                path,
                method,
                json=body,
                endpoint_filter={
                    "service_type": "identity",
                    "interface": "public",
                    "version": (3, 0),
                },
                raise_exc=True,
            )
        except exceptions.MissingRequiredOptions as exc:
            raise ConfigError(f"Keystone credentials incomplete: {exc}") from None
        except exceptions.ClientException as exc:
            raise RegisterError(f"Keystone {method} {path}: {exc}") from None
        return resp.json() if resp.content else None


def register(
    keystone: Keystone, name: str, description: str, region: str, urls: dict[str, str]
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

"""The plugin protocol: one method per endpoint, JSON in, JSON out.

Docker's legacy volume plugin API (``/Plugin.Activate`` then
``/VolumeDriver.*``).  Every answer is HTTP 200 with ``{"Err": ""}`` on
success or ``{"Err": "one-line message"}`` on failure, which Docker shows to
the user as is.  buttervolume 3.13's extension routes (``/VolumeDriver.Snapshot``,
``.Schedule``, ``.Clone``, ... see :mod:`.buttervolume`) are served too, so
buttervolume's own CLI and scripts that post to its socket keep working.

Per-request work is kept to the one driver call the endpoint needs: no scans
for ``Get``/``Path``/``Mount``, no processes spawned here.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

from stowkit.corelib.dockerplugin.buttervolume import ButtervolumeRoutes, route_for
from stowkit.corelib.errors import AlreadyExists, InvalidArgument, NotFound, StowkitError
from stowkit.corelib.names import check_name
from stowkit.corelib.schedule.jobs import JobStore
from stowkit.corelib.volume import check_create_options

LOG = logging.getLogger(__name__)

CONTENT_TYPE = "application/vnd.docker.plugins.v1.2+json"

Handler = Callable[[Mapping[str, Any]], dict[str, Any]]


def _name(body: Mapping[str, Any]) -> str:
    return check_name(body.get("Name"), "volume name")


def _mount_id(body: Mapping[str, Any], what: str) -> str:
    value = body.get("ID")
    if not isinstance(value, str | int) or isinstance(value, bool) or value in ("", 0):
        raise InvalidArgument(f"{what} needs an ID (a string)")
    return str(value)


def rfc3339(when: dt.datetime) -> str:
    """UTC, as Docker's Go side parses ``CreatedAt`` (time.Time from RFC 3339)."""
    return when.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _entry(name: str, path: str, created: dt.datetime | None) -> dict[str, Any]:
    entry: dict[str, Any] = {"Name": name, "Mountpoint": path}
    # Left out when unknown: Docker cannot parse "" as a time and would fail the call.
    if created is not None:
        entry["CreatedAt"] = rfc3339(created)
    return entry


def status(st: Any) -> dict[str, Any]:
    """A VolumeStatus as ``docker volume inspect`` shows it under ``Status``."""
    return {
        "mounts": st.mount_count,
        "snapshots": st.snapshot_count,
        "newest_snapshot": st.newest_snapshot,
        "replication": {peer: dict(record) for peer, record in st.replication.items()},
    }


class PluginApp:
    """Maps plugin requests onto a VolumeDriver.

    Mount IDs are counted by the driver (``mount``/``unmount``/``mounts``), so
    ``stowkit volume show`` and ``snapshot restore`` see what Docker holds.
    ``schedule`` is the store buttervolume's schedule routes edit (without
    one they answer an error).
    """

    def __init__(self, driver: Any, schedule: JobStore | None = None) -> None:
        self.driver = driver
        self.routes: dict[str, Handler] = {
            "/Plugin.Activate": self.activate,
            "/VolumeDriver.Create": self.create,
            "/VolumeDriver.Remove": self.remove,
            "/VolumeDriver.Mount": self.mount,
            "/VolumeDriver.Unmount": self.unmount,
            "/VolumeDriver.Path": self.path,
            "/VolumeDriver.Get": self.get,
            "/VolumeDriver.List": self.list,
            "/VolumeDriver.Capabilities": self.capabilities,
            # buttervolume's extensions
            **ButtervolumeRoutes(driver, schedule).routes,
        }

    def handle(self, path: str, raw: bytes) -> tuple[int, dict[str, Any]]:
        """Answer one request: (HTTP status, JSON body)."""
        # buttervolume 3.13 clients GET /VolumeDriver.Snapshot.List/VOLUME
        handler, suffix = route_for(self.routes, path)
        if handler is None:
            return 404, {"Err": f"unknown endpoint {path[:200]!r}"}
        try:
            body = json.loads(raw) if raw and raw.strip() else {}
        except ValueError as exc:
            return 200, {"Err": f"invalid JSON request: {exc}"}
        except RecursionError:
            # json's decoder recurses per level: 100k '[' would end the thread.
            return 200, {"Err": "invalid JSON request: nested too deeply"}
        if not isinstance(body, dict):
            return 200, {"Err": "invalid request: the body must be a JSON object"}
        if suffix:
            body = {**body, "Name": urllib.parse.unquote(suffix)}
        try:
            return 200, handler(body)
        except StowkitError as err:
            # Docker asks Get for a name before creating it: a miss is routine.
            level = logging.DEBUG if isinstance(err, NotFound) else logging.INFO
            LOG.log(level, "%s %s: %s", path, body.get("Name", ""), err)
            return 200, {"Err": str(err)}
        except Exception as exc:  # a bug: say so, keep serving
            LOG.exception("%s failed", path)
            return 200, {"Err": f"internal error in {path}: {type(exc).__name__}: {exc}"}

    # -- protocol ---------------------------------------------------------------

    def activate(self, body: Mapping[str, Any]) -> dict[str, Any]:
        return {"Implements": ["VolumeDriver"]}

    def capabilities(self, body: Mapping[str, Any]) -> dict[str, Any]:
        return {"Capabilities": {"Scope": "local"}}

    def create(self, body: Mapping[str, Any]) -> dict[str, Any]:
        name = _name(body)
        opts = body.get("Opts")
        if opts is None:
            opts = {}
        if not isinstance(opts, dict):
            raise InvalidArgument("Opts must be a JSON object of strings")
        if not all(isinstance(v, str | int | float | bool) for v in opts.values()):
            raise InvalidArgument("Opts must be a JSON object of strings")
        options = {str(k): str(v) for k, v in opts.items()}
        check_create_options(self.driver, options)
        try:
            self.driver.create_volume(name, options)
        except AlreadyExists:
            # Idempotent, as Docker's local driver and buttervolume answer: the
            # volume is there (options were checked first; a non-volume at the
            # path is still an error).
            try:
                self.driver.volume_path(name)
            except NotFound:
                raise AlreadyExists(f"{name} exists and is not a volume") from None
        return {"Err": ""}

    def remove(self, body: Mapping[str, Any]) -> dict[str, Any]:
        # The driver refuses (Conflict) while any mount ID holds the volume.
        self.driver.delete_volume(_name(body))
        return {"Err": ""}

    def mount(self, body: Mapping[str, Any]) -> dict[str, Any]:
        name = _name(body)
        mount_id = _mount_id(body, "Mount")
        return {"Mountpoint": self.driver.mount(name, mount_id), "Err": ""}

    def unmount(self, body: Mapping[str, Any]) -> dict[str, Any]:
        name = _name(body)
        mount_id = _mount_id(body, "Unmount")
        self.driver.unmount(name, mount_id)
        return {"Err": ""}

    def path(self, body: Mapping[str, Any]) -> dict[str, Any]:
        return {"Mountpoint": self.driver.volume_path(_name(body)), "Err": ""}

    def get(self, body: Mapping[str, Any]) -> dict[str, Any]:
        # Docker asks Get before nearly every use: the path, the creation time
        # and the mount IDs are cheap lookups, where get_volume counts
        # snapshots and may measure sizes.
        name = _name(body)
        entry = _entry(name, self.driver.volume_path(name), self.driver.volume_created(name))
        entry["Status"] = status(self.driver.volume_status(name))
        return {"Volume": entry, "Err": ""}

    def list(self, body: Mapping[str, Any]) -> dict[str, Any]:
        # Docker reads CreatedAt from Get only; List carries it too for other clients.
        volumes = [_entry(n, path, created) for n, path, created in self.driver.volume_entries()]
        return {"Volumes": volumes, "Err": ""}

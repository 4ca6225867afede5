"""ImageStore on Glance v2: python-glanceclient over a keystoneauth1 session.

One store = one set of credentials = one Keystone; its regions are the
``image`` endpoints of the Keystone catalog (``[image_glance] interface``).
Credentials come from ``stowkit.plugins.openstack_auth``: keystoneauth1's
options in ``[image_glance]``, a clouds.yaml ``cloud``, OS_CLOUD / OS_*, or,
for another GlanceSync target, the Credentials given to :meth:`for_credentials`.

GlanceSync configurations carry Keystone v2.0 URLs; Keystone no longer
serves v2.0, so a URL ending in ``/v2.0`` is used as ``/v3``.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, BinaryIO

from oslo_config import cfg

from stowkit.corelib.errors import (
    BackendUnavailable,
    ConfigError,
    Conflict,
    InvalidArgument,
    NotFound,
    StowkitError,
)
from stowkit.corelib.image import (
    Credentials,
    Image,
    ImageCapability,
    ImageStore,
    Readable,
    check_visibility,
)
from stowkit.corelib.names import check_name
from stowkit.plugins import openstack_auth
from stowkit.plugins.openstack_auth import AuthOptions, LazyLogin, Login

#: fields of a Glance v2 image that are not user properties
CORE_FIELDS = frozenset(
    {
        "id",
        "name",
        "owner",
        "size",
        "checksum",
        "os_hash_algo",
        "os_hash_value",
        "status",
        "visibility",
        "kernel_id",
        "ramdisk_id",
        "disk_format",
        "container_format",
        "stores",
        "os_hidden",
        "file",
        "schema",
        "self",
        "locations",
        "direct_url",
        "tags",
        "created_at",
        "updated_at",
        "min_disk",
        "min_ram",
        "protected",
        "virtual_size",
    }
)


def _translate(exc: BaseException, what: str) -> StowkitError:
    """glanceclient / keystoneauth exception -> one stowkit error, one line."""
    from glanceclient import exc as gexc
    from keystoneauth1 import exceptions as kexc

    text = " ".join(str(exc).split())[:300] or type(exc).__name__
    if isinstance(exc, kexc.Unauthorized | gexc.HTTPUnauthorized):
        return ConfigError(f"{what}: authentication failed (wrong credentials?): {text}")
    if isinstance(exc, gexc.HTTPNotFound | kexc.NotFound):
        return NotFound(f"{what}: not found")
    if isinstance(exc, gexc.HTTPConflict):
        return Conflict(f"{what}: {text}")
    if isinstance(exc, gexc.HTTPForbidden | kexc.Forbidden):
        return InvalidArgument(f"{what}: forbidden: {text}")
    if isinstance(exc, gexc.HTTPBadRequest | kexc.BadRequest):
        return InvalidArgument(f"{what}: rejected: {text}")
    if isinstance(exc, kexc.EndpointNotFound | kexc.EmptyCatalog):
        return NotFound(f"{what}: no image endpoint: {text}")
    return BackendUnavailable(f"{what}: {text}")


def _client_errors() -> tuple[type[BaseException], ...]:
    from glanceclient import exc as gexc
    from keystoneauth1 import exceptions as kexc

    return (gexc.BaseException, gexc.HTTPException, kexc.ClientException, OSError)


class GlanceImageStore(ImageStore):
    # ``cloud``, keystoneauth1's auth options (auth_type, auth_url, the password
    # plugin's; another auth_type's own options are read when it is loaded),
    # then the session and catalog settings of this store.
    options = AuthOptions(
        [
            cfg.StrOpt(
                "interface",
                default="public",
                choices=["public", "internal", "admin"],
                help="Which catalog endpoint of each region to use (a clouds.yaml "
                "entry or OS_INTERFACE names its own).",
            ),
            cfg.FloatOpt("timeout", default=120.0, help="Seconds to wait for one HTTP answer."),
            cfg.BoolOpt("insecure", default=False, help="Skip TLS verification."),
            cfg.StrOpt("cacert", help="CA bundle for TLS verification."),
        ]
    )
    # Glance computes checksum (md5) and os_hash_value (sha512) over what it stored.
    capabilities = frozenset({ImageCapability.SET_OWNER, ImageCapability.REPORTS_HASHES})
    # Both are imported where first used, so loading this class needs neither.
    client_modules = ("glanceclient", "keystoneauth1")

    def __init__(
        self, conf: cfg.ConfigOpts, group: str, credentials: Credentials | None = None
    ) -> None:
        super().__init__(conf, group)
        self._credentials = credentials
        self._lock = threading.Lock()
        self._login = LazyLogin(
            functools.partial(
                openstack_auth.login,
                conf,
                group,
                credentials,
                service_type="image",
                timeout=self.opts.timeout,
                insecure=self.opts.insecure,
                cacert=self.opts.cacert,
            )
        )
        self._endpoints: dict[str, str] | None = None
        self._clients: dict[str, Any] = {}

    # -- connection --------------------------------------------------------------

    def login(self) -> Login:
        return self._login()

    @property
    def where(self) -> str:
        creds = self._credentials
        return self._login.where((creds.auth_url if creds else None) or self.opts.auth_url)

    @property
    def interface(self) -> str:
        made = self._login.made
        return (made and made.interface) or self.opts.interface

    def session(self) -> Any:
        return self.login().session

    def endpoints(self) -> dict[str, str]:
        if self._endpoints is None:
            try:
                sess = self.session()
                access = sess.auth.get_access(sess)
                found = access.service_catalog.get_endpoints(
                    service_type="image", interface=self.interface
                )
            except _client_errors() as exc:
                raise _translate(exc, f"keystone {self.where}") from None
            endpoints: dict[str, str] = {}
            for ep in found.get("image", []):
                region = ep.get("region_id") or ep.get("region")
                if region and ep.get("url"):
                    endpoints[region] = ep["url"]
            self._endpoints = endpoints
        return self._endpoints

    def client(self, region: str) -> Any:
        check_name(region, "region name")
        with self._lock:
            client = self._clients.get(region)
        if client is None:
            url = self.endpoints().get(region)
            if url is None:
                raise NotFound(f"unknown region {region!r} (no image endpoint in {self.where})")
            from glanceclient.v2 import client as gclient

            # With a session glanceclient ignores ``endpoint``: the region's URL
            # must go to the keystoneauth adapter as ``endpoint_override``.
            client = gclient.Client(
                session=self.session(),
                endpoint_override=url,
                service_type="image",
                region_name=region,
                interface=self.interface,
            )
            with self._lock:
                self._clients[region] = client
        return client

    # -- ImageStore ----------------------------------------------------------------

    def regions(self) -> Sequence[str]:
        return sorted(self.endpoints())

    def tenant_id(self) -> str | None:
        try:
            return self.session().get_project_id()
        except _client_errors() as exc:
            raise _translate(exc, f"keystone {self.where}") from None

    @staticmethod
    def _to_image(region: str, raw: Mapping[str, Any]) -> Image:
        props = {
            k: v
            for k, v in raw.items()
            if k not in CORE_FIELDS and not k.startswith("os_glance") and isinstance(v, str)
        }
        return Image(
            id=raw["id"],
            name=raw.get("name") or "",
            region=region,
            owner=raw.get("owner"),
            size=raw.get("size"),
            checksum=raw.get("checksum"),
            os_hash_value=raw.get("os_hash_value")
            if raw.get("os_hash_algo") in (None, "sha512")
            else None,
            status=raw.get("status") or "unknown",
            visibility=raw.get("visibility") or "shared",
            properties=props,
            kernel_id=raw.get("kernel_id"),
            ramdisk_id=raw.get("ramdisk_id"),
            disk_format=raw.get("disk_format"),
            container_format=raw.get("container_format"),
        )

    def list_images(self, region: str, timeout: float | None = None) -> Sequence[Image]:
        client = self.client(region)
        deadline = time.monotonic() + timeout if timeout else None
        images = []
        try:
            for raw in client.images.list(page_size=1000):
                images.append(self._to_image(region, raw))
                if deadline and time.monotonic() > deadline:
                    raise BackendUnavailable(
                        f"{region}: listing images took longer than {timeout:g}s "
                        "(list_images_timeout)"
                    )
        except _client_errors() as exc:
            raise _translate(exc, f"{region}: listing images") from None
        return images

    def get_image(self, region: str, image_id: str) -> Image:
        try:
            return self._to_image(region, self.client(region).images.get(image_id))
        except _client_errors() as exc:
            raise _translate(exc, f"{region}: image {image_id}") from None

    def create_image(
        self,
        region: str,
        name: str,
        data: BinaryIO | Readable | None,
        *,
        visibility: str = "private",
        properties: Mapping[str, str] | None = None,
        kernel_id: str | None = None,
        ramdisk_id: str | None = None,
        disk_format: str | None = None,
        container_format: str | None = None,
        owner: str | None = None,
        size: int | None = None,
    ) -> Image:
        check_visibility(visibility)
        client = self.client(region)
        fields: dict[str, Any] = dict(properties or {})
        clash = CORE_FIELDS.intersection(fields)
        if clash:
            raise InvalidArgument(
                f"property {sorted(clash)[0]!r} is a Glance field, not a property"
            )
        fields.update(
            name=name,
            visibility=visibility,
            disk_format=disk_format or "raw",
            container_format=container_format or "bare",
        )
        if kernel_id:
            fields["kernel_id"] = kernel_id
        if ramdisk_id:
            fields["ramdisk_id"] = ramdisk_id
        if owner:
            fields["owner"] = owner
        try:
            raw = client.images.create(**fields)
        except _client_errors() as exc:
            raise _translate(exc, f"{region}: creating image {name}") from None
        if data is None:
            return self._to_image(region, raw)
        try:
            client.images.upload(raw["id"], data, image_size=size)
            return self.get_image(region, raw["id"])
        except BaseException as exc:
            # No half-written image left behind: the queued record goes too.
            try:
                client.images.delete(raw["id"])
            except Exception:
                pass
            if isinstance(exc, StowkitError):
                raise
            if isinstance(exc, _client_errors()):
                raise _translate(exc, f"{region}: uploading image {name}") from None
            raise

    def update_image(
        self,
        region: str,
        image_id: str,
        *,
        name: str | None = None,
        visibility: str | None = None,
        set_properties: Mapping[str, str] | None = None,
        remove_properties: Iterable[str] = (),
        kernel_id: str | None = None,
        ramdisk_id: str | None = None,
        remove_kernel_id: bool = False,
        remove_ramdisk_id: bool = False,
    ) -> Image:
        check_visibility(visibility)
        changes: dict[str, Any] = dict(set_properties or {})
        if name is not None:
            changes["name"] = name
        if visibility is not None:
            changes["visibility"] = visibility
        if kernel_id:
            changes["kernel_id"] = kernel_id
        if ramdisk_id:
            changes["ramdisk_id"] = ramdisk_id
        remove = list(remove_properties)
        if remove_kernel_id and not kernel_id:
            remove.append("kernel_id")
        if remove_ramdisk_id and not ramdisk_id:
            remove.append("ramdisk_id")
        try:
            raw = self.client(region).images.update(
                image_id, remove_props=remove or None, **changes
            )
        except _client_errors() as exc:
            raise _translate(exc, f"{region}: updating image {image_id}") from None
        return self._to_image(region, raw)

    def read_image(self, region: str, image_id: str) -> Iterator[bytes]:
        client = self.client(region)
        try:
            body = client.images.data(image_id, do_checksum=False)
        except _client_errors() as exc:
            raise _translate(exc, f"{region}: reading image {image_id}") from None
        if body is None or getattr(body, "wrapped", True) is None:
            raise NotFound(f"{region}: image {image_id} has no data")
        return self._guard(body, region, image_id)

    @staticmethod
    def _guard(body: Iterable[bytes], region: str, image_id: str) -> Iterator[bytes]:
        try:
            yield from body
        except _client_errors() as exc:
            raise _translate(exc, f"{region}: reading image {image_id}") from None

    def delete_image(self, region: str, image_id: str) -> None:
        try:
            self.client(region).images.delete(image_id)
        except _client_errors() as exc:
            raise _translate(exc, f"{region}: deleting image {image_id}") from None

    def for_credentials(self, credentials: Credentials | None) -> ImageStore:
        if credentials is None:
            return self
        return type(self)(self.conf, self.group, credentials)

    def close(self) -> None:
        with self._lock:
            made = self._login.forget()
            if made is not None:
                made.session.session.close()
            self._clients, self._endpoints = {}, None

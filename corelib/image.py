"""Images of a region: the Image data class and the ImageStore interface.

An :class:`ImageStore` holds the images of one or more *regions* reachable
with one set of credentials (a Keystone with several Glance endpoints, or a
directory per region on the embedded ``local`` backend).  The GlanceSync
engine (:mod:`stowkit.corelib.imagesync`) works only through this interface, so the
same rules run against Glance and against local directories.

Every method that takes a region checks it with :func:`stowkit.corelib.names.check_name`
first and raises :mod:`stowkit.corelib.errors` classes only: ``NotFound`` for an
unknown region or image, ``InvalidArgument`` for bad metadata,
``BackendUnavailable`` when the service cannot be reached or refuses.
"""

from __future__ import annotations

import abc
import dataclasses
import enum
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, BinaryIO, Protocol

from stowkit.corelib.driver import Driver
from stowkit.corelib.errors import Conflict, InvalidArgument, NotFound

#: Glance v2 visibilities; GlanceSync's ``is_public`` is ``visibility == "public"``.
VISIBILITIES = ("public", "private", "shared", "community")


def check_visibility(visibility: str | None) -> None:
    """InvalidArgument unless ``visibility`` is None (unchanged) or a Glance v2 one."""
    if visibility is not None and visibility not in VISIBILITIES:
        raise InvalidArgument(
            f"invalid visibility {visibility!r}: use one of {', '.join(VISIBILITIES)}"
        )


@dataclasses.dataclass(frozen=True)
class Image:
    """One image in one region, as the sync engine sees it.

    ``properties`` holds the *user* properties only (Glance's own bookkeeping
    fields such as ``stores`` or ``os_hidden`` are left out by the backends);
    ``kernel_id``/``ramdisk_id`` are kept apart because their values are
    region-specific image ids that the engine rewrites.
    """

    id: str
    name: str
    region: str
    owner: str | None = None
    size: int | None = None
    checksum: str | None = None  # md5 hex, as Glance reports it
    os_hash_value: str | None = None  # sha512 hex (Glance's multihash)
    status: str = "active"
    visibility: str = "private"
    properties: Mapping[str, str] = dataclasses.field(default_factory=dict)
    kernel_id: str | None = None
    ramdisk_id: str | None = None
    disk_format: str | None = None
    container_format: str | None = None

    @property
    def is_public(self) -> bool:
        return self.visibility == "public"

    def user_properties(self) -> dict[str, str]:
        """Properties as GlanceSync saw them: user properties plus kernel/ramdisk ids."""
        props = dict(self.properties)
        if self.kernel_id:
            props["kernel_id"] = self.kernel_id
        if self.ramdisk_id:
            props["ramdisk_id"] = self.ramdisk_id
        return props

    def replace(self, **changes: Any) -> Image:
        return dataclasses.replace(self, **changes)


class Readable(Protocol):
    def read(self, size: int = -1) -> bytes: ...


class ImageCapability(enum.StrEnum):
    """Optional features an ImageStore may declare in ``capabilities``."""

    #: create_image(owner=...) is honoured (``image create --owner``)
    SET_OWNER = "set_owner"
    #: load_backups(directory, replace) loads GlanceSync metadata backups as a
    #: scenario (``image load-backups``)
    LOAD_BACKUP = "load_backup"
    #: create_image() returns the size, md5 and sha512 the store computed over the
    #: bytes it stored, so a copy can be verified without hashing it client-side
    REPORTS_HASHES = "reports_hashes"


@dataclasses.dataclass(frozen=True)
class Credentials:
    """How to reach another target's regions (GlanceSync's ``credential``).

    A password (the four fields), a clouds.yaml entry (``cloud``), or
    ``environment``: OS_CLOUD or the OS_* variables.  The OpenStack backends
    turn it into a Keystone login (``stowkit.plugins.openstack_auth``).
    """

    user: str | None = None
    password: str | None = None
    auth_url: str | None = None
    project: str | None = None
    cloud: str | None = None  # a clouds.yaml entry instead of the four above
    environment: bool = False  # OS_CLOUD / OS_* instead of the above
    user_domain: str = "Default"
    project_domain: str = "Default"

    def __repr__(self) -> str:  # never print a password in a log or traceback
        return (
            f"Credentials(user={self.user!r}, auth_url={self.auth_url!r}, "
            f"project={self.project!r}, cloud={self.cloud!r}, environment={self.environment!r})"
        )


class ImageStore(Driver):
    """Images in one or more regions reached with one set of credentials.

    Lifecycle: the registry builds one store per configuration
    (``ImageStore(conf, group)``, :func:`stowkit.corelib.registry.load`);
    building it reaches no service (a remote backend logs in on first use).
    Every method may be called from several threads at once (image sync
    copies regions in parallel).  :meth:`for_credentials` gives a store for
    another target's regions; :meth:`Driver.close` releases sessions when the
    front end is done.  Region names are checked with
    :func:`stowkit.corelib.names.check_name`.  Every method may also raise
    :class:`~stowkit.corelib.errors.BackendUnavailable` when the service
    cannot be reached or refuses.
    """

    @abc.abstractmethod
    def regions(self) -> Sequence[str]:
        """The regions this store reaches.

        :returns: region names, sorted (empty when there are none yet).
        :raises BackendUnavailable: the catalog of endpoints cannot be read.
        """

    @abc.abstractmethod
    def tenant_id(self) -> str | None:
        """The project the credentials act for.

        :returns: the project id that owns the images this store creates, or
            None when the backend has no notion of it.
        :raises BackendUnavailable: the login failed.
        """

    @abc.abstractmethod
    def list_images(self, region: str, timeout: float | None = None) -> Sequence[Image]:
        """Every image visible in ``region``.

        :param region: a region of :meth:`regions`.
        :param timeout: seconds the whole listing may take (None: no bound).
        :returns: the images, in no particular order.
        :raises NotFound: unknown region.
        :raises InvalidName: ``region`` is not a valid name.
        :raises BackendUnavailable: the listing failed or took longer than ``timeout``.
        """

    @abc.abstractmethod
    def get_image(self, region: str, image_id: str) -> Image:
        """One image by id.

        :param region: a region of :meth:`regions`.
        :param image_id: the image's id in that region.
        :returns: the image, metadata only.
        :raises NotFound: unknown region or image.
        :raises InvalidName: ``region`` is not a valid name.
        """

    @abc.abstractmethod
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
        """Create an image and upload ``data`` to it.

        :param region: the region to create it in.
        :param name: the image's name (names need not be unique).
        :param data: a ``.read()`` object giving the bytes, or None to create
            metadata only (the image stays ``queued``).
        :param visibility: one of :data:`VISIBILITIES`.
        :param properties: user properties.
        :param kernel_id: the region's kernel image, for AMI images.
        :param ramdisk_id: the region's ramdisk image, for AMI images.
        :param disk_format: Glance's disk format (a backend default when None).
        :param container_format: Glance's container format (a backend default when None).
        :param owner: the owning project; honoured only with
            :attr:`ImageCapability.SET_OWNER`.
        :param size: the number of bytes ``data`` will give, when known.
        :returns: the image as stored, with the size and checksums the store
            computed over the bytes, so the caller can verify the copy.
        :raises InvalidArgument: bad visibility, format or metadata.
        :raises NotFound: unknown region.
        :raises BackendUnavailable: the upload failed; no half image is left active.
        """

    @abc.abstractmethod
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
        """Change an image's metadata; its bytes are never touched.

        Each keyword left at its default leaves that field as it is.

        :param set_properties: user properties to add or change.
        :param remove_properties: user properties to remove.
        :param remove_kernel_id: drop the kernel id (``kernel_id`` sets one).
        :param remove_ramdisk_id: drop the ramdisk id (``ramdisk_id`` sets one).
        :returns: the image after the change.
        :raises NotFound: unknown region or image.
        :raises InvalidArgument: bad visibility or metadata.
        """

    @abc.abstractmethod
    def read_image(self, region: str, image_id: str) -> Iterator[bytes]:
        """The image's bytes.

        :returns: an iterator of chunks, read as the caller consumes it.
        :raises NotFound: unknown region or image, or an image without data.
        :raises BackendUnavailable: the download failed (also while iterating).
        """

    @abc.abstractmethod
    def delete_image(self, region: str, image_id: str) -> None:
        """Delete an image and its bytes.

        :raises NotFound: unknown region or image.
        :raises Conflict: the service refuses in the image's current state.
        """

    def for_credentials(self, credentials: Credentials | None) -> ImageStore:
        """A store reaching the regions of another target.

        :param credentials: the target's login, or None for this store's own.
        :returns: the embedded store, which has no credentials, returns
            itself; a remote backend returns a store logged in with
            ``credentials`` on first use (where credentials that cannot make
            a login are a :class:`~stowkit.corelib.errors.ConfigError`).
        """
        return self


class ChunkReader:
    """Wrap an iterator of byte chunks as a file-like ``.read()`` object.

    ``glanceclient``'s ``images.upload()`` wants something with ``read()``;
    ``images.data()`` gives an iterator.  This joins the two without holding
    more than one chunk, and feeds every byte to ``observers`` (hashers) on
    the way through, so a copy is verified without reading it twice.
    """

    def __init__(self, chunks: Iterable[bytes], observers: Sequence[Any] = ()) -> None:
        self._it = iter(chunks)
        self._buf = b""
        self._observers = observers
        self.bytes_read = 0

    def _feed(self, data: bytes) -> bytes:
        if data:
            self.bytes_read += len(data)
            for obs in self._observers:
                obs.update(data)
        return data

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            parts = [self._buf, *self._it]
            self._buf = b""
            return self._feed(b"".join(parts))
        while not self._buf:
            try:
                self._buf = next(self._it)
            except StopIteration:
                return b""
        # Hand out whole chunks when they fit: no copying on the common path.
        if len(self._buf) <= size:
            out, self._buf = self._buf, b""
        else:
            out, self._buf = self._buf[:size], self._buf[size:]
        return self._feed(out)

    def __iter__(self) -> Iterator[bytes]:
        if self._buf:
            out, self._buf = self._buf, b""
            yield self._feed(out)
        for chunk in self._it:
            yield self._feed(chunk)


def find_image(store: ImageStore, region: str, name_or_id: str) -> Image:
    """The image ``name_or_id`` names in ``region``: its id, else its only image of that name.

    As ``openstack image show`` finds one: an id wins; a name several images
    carry is a ``Conflict`` that lists their ids; neither is ``NotFound``.
    """
    try:
        return store.get_image(region, name_or_id)
    except NotFound:
        named = [i for i in store.list_images(region) if i.name == name_or_id]
    if len(named) == 1:
        return named[0]
    if named:
        ids = ", ".join(sorted(i.id for i in named))
        raise Conflict(f"{len(named)} images in region {region} are named {name_or_id}: {ids}")
    raise NotFound(f"no image {name_or_id} (id or name) in region {region}")

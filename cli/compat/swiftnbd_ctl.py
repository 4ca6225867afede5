"""``stowkit-swiftnbd-ctl``: swiftnbd-ctl's verbs and secrets file, on stowkit's Swift backend.

Same command line as swiftnbd 0.11's control tool::

    stowkit-swiftnbd-ctl [--secrets FILE] [-a AUTH_URL] [-k ...] [-v] VERB ...
    VERB: list [-s] | setup CONTAINER OBJECTS [--object-size N] [-f]
          | lock CONTAINER | unlock CONTAINER | download CONTAINER IMAGE [-q]
          | delete CONTAINER

and the same secrets file: an INI file with one section per container
holding ``username`` and ``password`` (``authurl`` is ignored, as in 0.11;
``read-only`` is read by the server).  With ``-k`` the user name is
``PROJECT.USER`` (the ``--keystone-separator``) and Keystone v3 is used
where swiftnbd used v2.0, so ``-a`` must then be a v3 URL.

Differences, on purpose: the lock is stowkit's lock object (so a lock taken
here stops ``stowkit blockstore serve`` and the other way round), devices
are stowkit devices (a swiftnbd container is still readable), and errors
exit with stowkit's exit codes rather than always 1.
"""

from __future__ import annotations

import argparse
import configparser
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from stowkit.cli.common import one_line_errors
from stowkit.corelib import blockcopy, blocklease, blocklock, config, names
from stowkit.corelib.blockstore import BlockStore
from stowkit.corelib.errors import AlreadyExists, InvalidArgument, NotFound, StowkitError

PROG = "stowkit-swiftnbd-ctl"
VERSION = "0.11 (stowkit)"
DEFAULT_SECRETS = "/etc/swiftnbd/secrets.conf"
DEFAULT_AUTH_URL = "https://auth.storage.memset.com/v1.0"
DEFAULT_OBJECT_SIZE = 64 * 1024  # swiftnbd's
LOCK_OWNER = "swiftnbd-ctl"
LOG = logging.getLogger("swiftnbd")
_INTERFACES = {"publicURL": "public", "internalURL": "internal", "adminURL": "admin"}


class Secrets:
    """The swiftnbd secrets file: ``[container]`` sections with username/password."""

    def __init__(self, path: str) -> None:
        st = os.stat(path)  # OSError: reported by the caller, as swiftnbd did
        if st.st_mode & 0o004:
            LOG.warning(
                "%s is world readable, please consider changing its permissions to 0600", path
            )
        self.path = path
        self.parser = configparser.RawConfigParser(
            {"username": None, "password": None, "authurl": None, "read-only": "0"}
        )
        try:
            self.parser.read(path)
        except configparser.Error as exc:
            raise InvalidArgument(f"cannot parse {path}: {exc.message.splitlines()[0]}") from None

    def containers(self) -> list[str]:
        return self.parser.sections()

    def get(self, container: str) -> dict[str, Any]:
        if not self.parser.has_section(container):
            raise NotFound(f"{container} not found in {self.path}")
        values = dict(self.parser.items(container))
        if values.pop("authurl", None):
            LOG.warning(
                "in container %r: 'authurl' config token is no longer in use and it'll be ignored",
                container,
            )
        if not values.get("username") or not values.get("password"):
            raise InvalidArgument(f"{container}: username and password are required in {self.path}")
        return values


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags swiftnbd's control tool and server share: version, secrets, auth."""
    parser.add_argument("--version", action="version", version=f"%(prog)s {VERSION}")
    secrets_help = f"filename containing user/password (default: {DEFAULT_SECRETS})"
    parser.add_argument("--secrets", dest="secrets_file", default=DEFAULT_SECRETS,
                        help=secrets_help)  # fmt: skip
    auth_help = f"default authentication URL (default: {DEFAULT_AUTH_URL})"
    parser.add_argument("-a", "--auth-url", dest="authurl", default=DEFAULT_AUTH_URL,
                        help=auth_help)  # fmt: skip
    parser.add_argument("-k", "--keystone-auth", dest="keystone", action="store_true",
                        help="use Keystone (v3 here; swiftnbd used 2.0)")  # fmt: skip
    parser.add_argument("--keystone-separator", default=".",
                        help="project separator in the user name (default: .)")  # fmt: skip
    parser.add_argument("--keystone-service", default="object-store",
                        help="service type (default: object-store)")  # fmt: skip
    parser.add_argument("--keystone-endpoint", default="publicURL",
                        help="endpoint type (default: publicURL)")  # fmt: skip
    parser.add_argument("--keystone-region", default=None, help="region (optional)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="swiftnbd control tool (stowkit).",
        epilog="stowkit's own tool is `stowkit blockstore`.",
    )
    subp = parser.add_subparsers(title="commands", dest="command", required=True)

    p = subp.add_parser("list", help="list all containers and their information")
    p.add_argument("-s", "--simple-output", dest="simple", action="store_true",
                   help="write simplified output to stdout")  # fmt: skip

    p = subp.add_parser("setup", help="setup a container to be used by the server")
    p.add_argument("container", help="container to setup")
    p.add_argument("objects", help="number of objects")
    p.add_argument("--object-size", dest="object_size", default=str(DEFAULT_OBJECT_SIZE),
                   help=f"object size (default: {DEFAULT_OBJECT_SIZE})")  # fmt: skip
    p.add_argument("-f", "--force", action="store_true", help="force operation")

    for verb, text in (("unlock", "unlock a container"), ("lock", "lock a container")):
        p = subp.add_parser(verb, help=text)
        p.add_argument("container", help=f"container to {verb}")

    p = subp.add_parser("download", help="download a container as a raw image")
    p.add_argument("container", help="container to download")
    p.add_argument("image", help="local file to store the image")
    p.add_argument("-q", "--quiet", action="store_true", help="don't show the process bar")

    p = subp.add_parser("delete", help="delete a container")
    p.add_argument("container", help="container to delete")

    add_common_arguments(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="enable verbose logging")
    for sub in subp.choices.values():
        one_line_errors(sub, PROG)
    one_line_errors(parser, PROG)
    return parser


class Ctl:
    def __init__(self, args: argparse.Namespace, secrets: Secrets) -> None:
        self.args = args
        self.secrets = secrets

    def store(self, container: str) -> BlockStore:
        """A Swift BlockStore logged in with ``container``'s credentials."""
        from stowkit.corelib import registry

        values = self.secrets.get(container)
        overrides: dict[str, Any] = {"auth_url": self.args.authurl, "container_prefix": ""}
        if self.args.keystone:
            sep = self.args.keystone_separator
            if sep not in values["username"]:
                raise InvalidArgument(f"{container}: separator not found in {values['username']!r}")
            project, user = values["username"].split(sep, 1)
            overrides.update(
                auth_version="3",
                username=user,
                password=values["password"],
                project_name=project,
                region_name=self.args.keystone_region,
                interface=_INTERFACES.get(self.args.keystone_endpoint, "public"),
            )
        else:
            overrides.update(auth_version="1", user=values["username"], key=values["password"])
        # No stowkit config file: everything this tool needs is on its command line.
        conf = config.load_conf([])
        store = registry.load("blockstore", conf, "swift", **overrides)
        return store  # type: ignore[return-value]

    # -- verbs (return the exit status) --------------------------------------

    def do_list(self) -> int:
        status = 0
        for container in self.secrets.containers():
            try:
                store = self.store(container)
                try:
                    dev = store.get_device(names.check_name(container, "container name"))
                finally:
                    store.close()
            except NotFound as err:
                if "not a stowkit device" in str(err):
                    self._out(f"{container} is not a swiftnbd container")
                else:
                    LOG.error("%s doesn't exist (auth-url: %s)", container, self.args.authurl)
                    status = err.exit_code
                continue
            except StowkitError as err:
                LOG.error("%s: %s", container, err)
                status = err.exit_code
                continue
            lock = "unlocked" if dev.lock is None else f"locked by {dev.lock.describe()}"
            self._out(
                f"{container} objects={dev.object_count} size={dev.object_size} "
                f"(version={dev.format_version}, {lock})"
            )
        return status

    def _out(self, line: str) -> None:
        if self.args.simple:
            print(line)
        else:
            LOG.info(line)

    def do_setup(self) -> int:
        name = self.args.container
        try:
            objects = int(self.args.objects)
            object_size = int(self.args.object_size)
        except ValueError:
            raise InvalidArgument("objects and --object-size must be whole numbers") from None
        if objects <= 0:
            raise InvalidArgument("the number of objects must be positive")
        store = self.store(name)
        try:
            store.create_device(name, objects * object_size, object_size)
        except AlreadyExists:
            dev = store.get_device(name)
            if not self.args.force:
                raise AlreadyExists(f"{name} has already been setup") from None
            if (dev.object_count, dev.object_size) != (objects, object_size):
                raise InvalidArgument(
                    f"{name} has {dev.object_count} objects of {dev.object_size} bytes; "
                    "stowkit cannot resize it in place"
                ) from None
        LOG.info("Done, %s", name)
        return 0

    def do_unlock(self) -> int:
        name = self.args.container
        store = self.store(name)
        # Only the lock just shown: one taken meanwhile is left alone (DeviceLocked).
        broken = blocklock.break_lock_read(
            store,
            names.check_name(name, "container name"),
            lambda holder: LOG.info("%s lock is: %s", name, holder.describe()),
        )
        if broken is None:
            LOG.warning("%s is not locked, nothing to do", name)
            return 1
        LOG.info("Done, %s is unlocked", name)
        return 0

    def do_lock(self) -> int:
        name = self.args.container
        store = self.store(name)
        # By hand, as swiftnbd did: no lease, held until `unlock`.
        blocklock.take(store, name, LOCK_OWNER, lease_seconds=None)
        LOG.info("Done, %s is locked", name)
        return 0

    def do_download(self) -> int:
        name = self.args.container
        store = self.store(name)
        holder = blocklock.lock_refusing_copy(store.get_device(name))
        if holder is not None:
            LOG.error(
                "%s is locked, downloading a container in use is unreliable (%s)",
                name,
                holder.describe(),
            )
            return 1
        show = not self.args.quiet and sys.stdout.isatty()

        def progress(done: int, total: int) -> None:
            if show:
                sys.stdout.write(f"\rDownloading {name} [{100 * done // max(total, 1):02d}%]")
                sys.stdout.flush()

        # Held for the copy, as swiftnbd did, so no server writes meanwhile.
        with blocklease.held(store, name, f"{LOCK_OWNER} download"):
            stats = blockcopy.download(store, name, self.args.image, progress=progress)
        if show:
            sys.stdout.write("\r")
            sys.stdout.flush()
        LOG.info("Done, %s bytes written", stats.bytes)
        return 0

    def do_delete(self) -> int:
        name = self.args.container
        store = self.store(name)
        store.delete_device(name)  # refused while locked, as in swiftnbd
        LOG.info("Done, %s has been deleted", name)
        return 0


def _setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s: %(name)s: %(levelname)s: %(message)s"))
    LOG.handlers[:] = [handler]
    LOG.propagate = False
    LOG.setLevel(logging.DEBUG if verbose else logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    try:
        secrets = Secrets(args.secrets_file)
    except OSError as exc:
        parser.error(f"Failed to load secrets: {exc.strerror}: {args.secrets_file}")
    try:
        return getattr(Ctl(args, secrets), f"do_{args.command}")()
    except StowkitError as err:
        LOG.error("%s", err)
        return err.exit_code
    except KeyboardInterrupt:
        LOG.warning("user interrupt")
        return 130


if __name__ == "__main__":
    sys.exit(main())

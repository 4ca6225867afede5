"""GlanceSync's configuration file, read as it is, plus the ``[image_sync]`` options.

The file is an INI file: ``[main]`` holds ``master_region``,
``preferable_order``, ``max_children`` and ``images_dir``; ``[DEFAULT]`` gives
defaults to every other section; every other section is a *target* (a set of
regions behind one Keystone and one credential).  ``[master]`` is the target
holding the master region.

A target's credential is either GlanceSync's ``credential = user,base64(password),
auth_url,tenant`` or the four options ``user``, ``password``, ``keystone_url``,
``tenant``, or (stowkit) ``cloud = NAME`` from clouds.yaml.  The master target
may instead take them from ``OS_USERNAME``/``OS_PASSWORD``/``OS_AUTH_URL``/
``OS_TENANT_NAME``/``OS_PROJECT_NAME``, or from the image backend's own
configuration when none is given at all.

stowkit adds two target options: ``regions`` (the regions of the target when
the backend cannot tell, e.g. the local store) and ``user_domain``/``project_domain``.
"""

from __future__ import annotations

import base64
import binascii
import configparser
import dataclasses
import io
import logging
import os
from collections.abc import Iterable, Mapping, Sequence

from oslo_config import cfg

from stowkit.corelib.errors import ConfigError, InvalidArgument
from stowkit.corelib.image import Credentials
from stowkit.corelib.imagesync.condition import Condition, compile_condition
from stowkit.corelib.names import check_name

LOG = logging.getLogger("stowkit.imagesync")

GROUP = "image_sync"
MASTER = "master"

image_sync_opts = [
    cfg.StrOpt(
        "config_file",
        default="/etc/stowkit/glancesync.conf",
        help="GlanceSync configuration file used by `stowkit image sync|status|backup|regions` "
        "when --sync-config is not given.",
    ),
    cfg.StrOpt(
        "master_region",
        help="Master region when no sync configuration file exists (then every other "
        "region of the image backend is synchronised from it with GlanceSync's defaults).",
    ),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(image_sync_opts, group=GROUP)


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    return [(GROUP, list(image_sync_opts))]


_BOOL = {"1": True, "yes": True, "true": True, "on": True}
_BOOL.update({"0": False, "no": False, "false": False, "off": False})

#: options with GlanceSync's defaults (given to every section)
DEFAULTS = {
    "use_keystone_v3": "False",
    "support_obsolete_images": "True",
    "only_tenant_images": "True",
    "list_images_timeout": "30",
}

KNOWN_TARGET_OPTIONS = frozenset(
    {
        "credential",
        "user",
        "password",
        "keystone_url",
        "tenant",
        "cloud",
        "user_domain",
        "project_domain",
        "forcesyncs",
        "replace",
        "rename",
        "dontupdate",
        "ignore_regions",
        "metadata_condition",
        "metadata_set",
        "only_tenant_images",
        "tenant_id",
        "obsolete_syncprops",
        "support_obsolete_images",
        "list_images_timeout",
        "use_keystone_v3",
        "regions",
    }
)
KNOWN_MAIN_OPTIONS = frozenset({"master_region", "preferable_order", "max_children", "images_dir"})


@dataclasses.dataclass
class Target:
    """One target: its credential and its synchronisation rules."""

    name: str
    credentials: Credentials | None = None
    forcesyncs: frozenset[str] = frozenset()
    replace: frozenset[str] = frozenset()
    rename: frozenset[str] = frozenset()
    dontupdate: frozenset[str] = frozenset()
    ignore_regions: frozenset[str] = frozenset()
    metadata_condition: Condition | None = None
    metadata_set: frozenset[str] = frozenset()
    only_tenant_images: bool = True
    tenant_id: str | None = None
    obsolete_syncprops: frozenset[str] = frozenset()
    support_obsolete_images: bool = True
    list_images_timeout: float = 30.0
    regions: tuple[str, ...] | None = None  # stowkit: explicit region list


@dataclasses.dataclass
class SyncConfig:
    master_region: str
    targets: dict[str, Target]
    preferable_order: tuple[str, ...] = ()
    max_children: int = 1
    images_dir: str | None = None
    source: str = "<defaults>"
    #: one line per unknown option of the file (each also logged once)
    warnings: tuple[str, ...] = ()

    @property
    def master(self) -> Target:
        return self.targets[MASTER]

    def target(self, name: str) -> Target:
        try:
            return self.targets[name]
        except KeyError:
            known = ", ".join(sorted(self.targets))
            raise InvalidArgument(f"unknown target {name!r} (known: {known})") from None


def _split(value: str) -> list[str]:
    return [p.strip() for p in value.replace("\\\n", " ").split(",") if p.strip()]


def _bool(section: str, key: str, value: str) -> bool:
    try:
        return _BOOL[value.strip().lower()]
    except KeyError:
        raise ConfigError(f"[{section}] {key}: {value!r} is not a boolean") from None


def _number(section: str, key: str, value: str, kind: type = int) -> float | int:
    try:
        result = kind(value.strip())
    except ValueError:
        raise ConfigError(f"[{section}] {key}: {value!r} is not a number") from None
    if result < 0:
        raise ConfigError(f"[{section}] {key}: must not be negative")
    return result


def parse_credential(section: str, value: str) -> Credentials:
    """``user,base64(password),auth_url,tenant`` -> Credentials."""
    parts = [p.strip() for p in value.replace("\\\n", "").replace("\n", "").split(",")]
    if len(parts) != 4 or not all(parts):
        raise ConfigError(
            f"[{section}] credential must be user,base64(password),auth_url,tenant "
            f"(got {len(parts)} fields)"
        )
    user, encoded, url, tenant = parts
    try:
        password = base64.b64decode(encoded, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise ConfigError(f"[{section}] credential: the password is not valid base64") from None
    return Credentials(user=user, password=password, auth_url=url, project=tenant)


def _env_credentials() -> dict[str, str]:
    env = {
        "user": os.environ.get("OS_USERNAME"),
        "password": os.environ.get("OS_PASSWORD"),
        "keystone_url": os.environ.get("OS_AUTH_URL"),
        "tenant": os.environ.get("OS_TENANT_NAME") or os.environ.get("OS_PROJECT_NAME"),
    }
    return {k: v for k, v in env.items() if v}


def _target(name: str, section: Mapping[str, str]) -> Target:
    creds: Credentials | None = None
    domains = {
        "user_domain": section.get("user_domain", "Default").strip() or "Default",
        "project_domain": section.get("project_domain", "Default").strip() or "Default",
    }
    four = ("user", "password", "keystone_url", "tenant")
    values = {k: section[k].strip() for k in four if section.get(k, "").strip()}
    from_env = False
    if name == MASTER and "credential" not in section and not section.get("cloud", "").strip():
        # Nothing in the section: OS_CLOUD or the OS_* variables, read whole by the
        # backend (any auth type, domains, region, cacert); the four GlanceSync
        # reads are still filled in when present.
        from_env = not values and bool(os.environ.get("OS_CLOUD") or os.environ.get("OS_AUTH_URL"))
        values = {**_env_credentials(), **values}
    if section.get("cloud", "").strip():
        creds = Credentials(cloud=section["cloud"].strip(), **domains)
    elif len(values) == 4:
        creds = Credentials(
            user=values["user"],
            password=values["password"],
            auth_url=values["keystone_url"],
            project=values["tenant"],
            environment=from_env,
            **domains,
        )
    elif section.get("credential", "").strip():
        creds = dataclasses.replace(parse_credential(name, section["credential"]), **domains)
    elif from_env:
        creds = Credentials(environment=True)
    elif name != MASTER:
        raise ConfigError(
            f"[{name}] a target needs credential = user,base64(password),auth_url,tenant "
            "(or user, password, keystone_url and tenant, or cloud)"
        )
    regions = None
    if section.get("regions", "").strip():
        regions = tuple(check_name(r, "region name") for r in _split(section["regions"]))
    return Target(
        name=name,
        credentials=creds,
        forcesyncs=frozenset(_split(section.get("forcesyncs", ""))),
        replace=frozenset(_split(section.get("replace", ""))),
        rename=frozenset(_split(section.get("rename", ""))),
        dontupdate=frozenset(_split(section.get("dontupdate", ""))),
        ignore_regions=frozenset(_split(section.get("ignore_regions", ""))),
        metadata_condition=compile_condition(section.get("metadata_condition")),
        metadata_set=frozenset(_split(section.get("metadata_set", ""))),
        only_tenant_images=_bool(name, "only_tenant_images", section["only_tenant_images"]),
        tenant_id=section.get("tenant_id", "").strip() or None,
        obsolete_syncprops=frozenset(_split(section.get("obsolete_syncprops", ""))),
        support_obsolete_images=_bool(
            name, "support_obsolete_images", section["support_obsolete_images"]
        ),
        list_images_timeout=float(
            _number(name, "list_images_timeout", section["list_images_timeout"], float)
        ),
        regions=regions,
    )


def parse_overrides(pairs: Iterable[str]) -> dict[str, str]:
    """``section.key=value`` (or ``key=value`` for [DEFAULT]) -> {"section.key": value}."""
    result: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        parts = key.split(".")
        if not sep or not key or len(parts) > 2 or not all(p.strip() for p in parts):
            raise InvalidArgument(
                f"invalid --config {pair!r}: use section.key=value (or key=value for [DEFAULT])"
            )
        result[key] = value
    return result


def parse(
    text: str | None,
    overrides: Mapping[str, str] | None = None,
    *,
    source: str = "<string>",
    master_region: str | None = None,
) -> SyncConfig:
    """Parse GlanceSync configuration ``text`` (None: GlanceSync's defaults only)."""
    parser = configparser.ConfigParser(
        defaults=DEFAULTS, interpolation=None, strict=False, empty_lines_in_values=False
    )
    parser.optionxform = str.lower  # type: ignore[assignment,method-assign]
    try:
        parser.read_file(io.StringIO(text or ""), source=source)
    except configparser.Error as exc:
        raise ConfigError(f"cannot parse {source}: {' '.join(str(exc).split())}") from None
    for key, value in (overrides or {}).items():
        section, _, option = key.rpartition(".")
        section = section or "DEFAULT"
        if section != "DEFAULT" and not parser.has_section(section):
            parser.add_section(section)
        parser.set(section, option.lower(), value)
    main = dict(parser["main"]) if parser.has_section("main") else {}
    warnings = _unknown_options(parser, overrides or {}, source)
    master_region = (
        main.get("master_region", "").strip()
        or master_region
        or os.environ.get("OS_REGION_NAME", "").strip()
    )
    if not master_region:
        raise ConfigError(
            f"{source}: no master region (set [main] master_region, "
            "[image_sync] master_region or OS_REGION_NAME)"
        )
    check_name(master_region, "master region")
    targets: dict[str, Target] = {}
    for name in parser.sections():
        if name in ("main", "DEFAULTS"):
            continue
        check_name(name, "target name")
        targets[name] = _target(name, parser[name])
    if MASTER not in targets:
        targets[MASTER] = _target(MASTER, parser[parser.default_section])
    max_children = int(_number("main", "max_children", main.get("max_children", "1")))
    return SyncConfig(
        master_region=master_region,
        targets=targets,
        preferable_order=tuple(_split(main.get("preferable_order", ""))),
        max_children=max(1, max_children),
        images_dir=main.get("images_dir", "").strip() or None,
        source=source,
        warnings=tuple(warnings),
    )


def _unknown_options(
    parser: configparser.ConfigParser, overrides: Mapping[str, str], source: str
) -> list[str]:
    """Warn once per option GlanceSync would ignore; an unknown ``--config`` is an error.

    GlanceSync's reader ignores keys it does not know, so its files load here
    too.  An option of ``[DEFAULT]`` is reported once, not once per section.
    Overrides are typed on stowkit's command line: a typo there is refused.
    """
    from_overrides = set()
    for key in overrides:
        section, _, option = key.rpartition(".")
        from_overrides.add((section or "DEFAULT", option.lower()))
    defaults = set(parser.defaults())
    sections = [("DEFAULT", defaults, KNOWN_TARGET_OPTIONS | KNOWN_MAIN_OPTIONS)]
    for name in parser.sections():
        known = KNOWN_MAIN_OPTIONS if name == "main" else KNOWN_TARGET_OPTIONS
        sections.append((name, set(parser[name]) - defaults, known))
    warnings = []
    for name, keys, known in sections:
        for key in sorted(keys - known - set(DEFAULTS)):
            if (name, key) in from_overrides:
                raise ConfigError(f"--config {name}.{key}: unknown option {key!r}")
            warnings.append(f"{source}: [{name}] unknown option {key!r} ignored")
            LOG.warning("%s", warnings[-1])
    return warnings


def load(
    path: str | None,
    overrides: Mapping[str, str] | None = None,
    *,
    master_region: str | None = None,
    must_exist: bool = True,
) -> SyncConfig:
    """Read ``path`` (a missing default file falls back to GlanceSync's defaults)."""
    text = None
    if path:
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except FileNotFoundError:
            if must_exist:
                raise ConfigError(f"sync config file not found: {path}") from None
        except OSError as exc:
            raise ConfigError(f"cannot read sync config {path}: {exc.strerror}") from None
    return parse(text, overrides, source=path or "<defaults>", master_region=master_region)


def region_parts(fullname: str) -> tuple[str, str]:
    """``target:region`` -> (target, region); a bare name is in ``master``."""
    target, sep, region = fullname.partition(":")
    if not sep:
        target, region = MASTER, fullname
    return target, region


def full_region_name(target: str, region: str) -> str:
    return region if target == MASTER else f"{target}:{region}"


def order_regions(regions: Sequence[str], preferable: Sequence[str]) -> list[str]:
    """Regions named in ``preferable_order`` first, in that order, then the rest sorted."""
    first = [r for r in preferable if r in regions]
    return first + sorted(r for r in regions if r not in first)

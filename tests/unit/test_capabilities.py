"""Capabilities: one enum per namespace, declared with its members, each one consulted."""

from __future__ import annotations

import enum
import json
import pathlib
import re

import pytest
from oslo_config import cfg

from stowkit.cli.app import main
from stowkit.corelib import registry
from stowkit.corelib.blockstore import BlockStoreCapability
from stowkit.corelib.catalog import CatalogCapability
from stowkit.corelib.driver import Driver
from stowkit.corelib.errors import InvalidArgument
from stowkit.corelib.image import ImageCapability
from stowkit.corelib.imagesync.tasks import TaskStoreCapability
from stowkit.corelib.volume import VolumeCapability, check_create_options

REPO = pathlib.Path(__file__).resolve().parents[2]

ENUMS: dict[str, type[enum.StrEnum]] = {
    "volume": VolumeCapability,
    "image": ImageCapability,
    "blockstore": BlockStoreCapability,
    "catalog": CatalogCapability,
    "imagetask": TaskStoreCapability,
}


def test_every_namespace_has_its_enum():
    assert set(ENUMS) == set(registry.NAMESPACES)


def shipped() -> list[registry.BackendInfo]:
    # Only stowkit's own: a third-party backend may declare names of its own.
    return [i for i in registry.installed() if i.target.startswith("stowkit.plugins.")]


def test_the_shipped_backends_are_all_found():
    found = {(i.namespace, i.name) for i in shipped()}
    assert {("volume", "btrfs"), ("blockstore", "local"), ("catalog", "sql")} <= found


@pytest.mark.parametrize("info", shipped(), ids=lambda i: f"{i.namespace}-{i.name}")
def test_every_declared_capability_is_a_member_of_its_namespace_enum(info):
    cls = registry.driver_class(info.namespace, info.name)
    members = ENUMS[info.namespace]
    strays = [c for c in cls.capabilities if not isinstance(c, members)]
    assert not strays, f"{info.target} declares {strays}, not {members.__name__} members"


def test_every_capability_is_consulted_outside_the_backends():
    """A member nobody checks is a promise nobody keeps: check it, or remove it."""
    sources = "\n".join(
        path.read_text() for top in ("corelib", "cli") for path in (REPO / top).rglob("*.py")
    )
    for members in ENUMS.values():
        for member in members:
            uses = re.findall(rf"\b{members.__name__}\.{member.name}\b", sources)
            assert uses, f"{members.__name__}.{member.name} is declared and never consulted"


def test_backends_shows_capabilities_as_plain_names(capsys):
    assert main(["backends", "--namespace", "blockstore", "-f", "json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["local"]["capabilities"] == "ranged_read"


class _Compressing(Driver):
    capabilities = frozenset({VolumeCapability.COMPRESSION})


def test_create_options_need_their_capability():
    drv = _Compressing(cfg.ConfigOpts(), "volume_fake")
    check_create_options(drv, {"compression": "zstd", "size": "1G"})  # size: the backend's call
    check_create_options(drv, None)
    with pytest.raises(InvalidArgument, match="volume_fake backend does not support nocow"):
        check_create_options(drv, {"copyonwrite": "false"})

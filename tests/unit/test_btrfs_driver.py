"""BtrfsVolumeDriver logic that needs no btrfs: options, name checks first, errors."""

from __future__ import annotations

import inspect

import pytest

from stowkit.corelib import config, registry
from stowkit.corelib.errors import BackendUnavailable, InvalidArgument, InvalidName
from stowkit.corelib.volume import VolumeCapability, VolumeDriver
from stowkit.plugins.btrfs.driver import BtrfsVolumeDriver

HOSTILE = ["", "..", "../x", "a/b", "x;touch /tmp/p", "a b", "-rf", ".x", "x" * 300]


@pytest.fixture
def driver(tmp_path):
    # tmp_path is not btrfs: anything that gets past the name check fails
    # loudly with BackendUnavailable, and the root is never created.
    conf = config.load_conf()
    return registry.load("volume", conf, "btrfs", root=str(tmp_path / "root"))


def test_loaded_through_the_registry(driver):
    assert isinstance(driver, BtrfsVolumeDriver)
    assert driver.root.endswith("/root")
    assert driver.capabilities == {VolumeCapability.COMPRESSION, VolumeCapability.NOCOW}
    assert driver.supports("compression") and driver.supports("nocow")


def test_default_root_is_under_state_dir(tmp_path):
    conf = config.load_conf(overrides=[(None, "state_dir", str(tmp_path))])
    drv = registry.load("volume", conf, "btrfs")
    assert drv.root == str(tmp_path / "btrfs")


def test_every_abstract_method_is_implemented():
    assert not inspect.isabstract(BtrfsVolumeDriver)
    assert issubclass(BtrfsVolumeDriver, VolumeDriver)


CALLS = {
    "create_volume": lambda d, n: d.create_volume(n),
    "get_volume": lambda d, n: d.get_volume(n),
    "volume_path": lambda d, n: d.volume_path(n),
    "delete_volume": lambda d, n: d.delete_volume(n, force=True),
    "clone_source": lambda d, n: d.clone_volume(n, "ok"),
    "clone_target": lambda d, n: d.clone_volume("ok", n),
    "mount": lambda d, n: d.mount(n, "m1"),
    "unmount": lambda d, n: d.unmount(n, "m1"),
    "mounts": lambda d, n: d.mounts(n),
    "clear_mounts": lambda d, n: d.clear_mounts(n),
    "volume_created": lambda d, n: d.volume_created(n),
    "create_snapshot": lambda d, n: d.create_snapshot(n),
    "get_snapshot": lambda d, n: d.get_snapshot(n + "@2026-11-22T03-40-05.123456"),
    "list_snapshots": lambda d, n: d.list_snapshots(n),
    "delete_snapshot": lambda d, n: d.delete_snapshot(n + "@2026-11-22T03-40-05.123456"),
    "restore": lambda d, n: d.restore(n),
    "restore_target": lambda d, n: d.restore("ok@2026-11-22T03-40-05.123456", n),
    "send_snapshot": lambda d, n: d.send_snapshot(n + "@2026-11-22T03-40-05.123456", "h"),
    "replicate": lambda d, n: d.replicate(n, "h"),
    "sync_volume": lambda d, n: d.sync_volume(n, ["h"]),
    "purge": lambda d, n: d.purge(n, "2h:2h"),
    "sent": lambda d, n: d.sent(n),
}


@pytest.mark.parametrize("call", sorted(CALLS))
@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_names_refused_before_anything_is_touched(driver, tmp_path, call, name):
    with pytest.raises(InvalidName):
        CALLS[call](driver, name)
    assert not (tmp_path / "root").exists()


@pytest.mark.parametrize("host", ["-oProxyCommand=id", "h;id", "a b", ""])
def test_hostile_hosts_refused_before_anything_is_touched(driver, tmp_path, host):
    with pytest.raises(InvalidArgument):
        driver.send_snapshot("ok@2026-11-22T03-40-05.123456", host)
    with pytest.raises(InvalidArgument):
        driver.sync_volume("ok", [host])
    assert not (tmp_path / "root").exists()


def test_not_btrfs_is_backend_unavailable(driver):
    with pytest.raises(BackendUnavailable, match="not on a btrfs filesystem"):
        driver.list_volumes()
    with pytest.raises(BackendUnavailable, match="not on a btrfs filesystem"):
        driver.cleanup()


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        # copy-on-write by default, as btrfs, Docker's local driver and buttervolume 3.13
        (None, (True, "none")),
        ({}, (True, "none")),
        ({"copyonwrite": "true"}, (True, "none")),
        ({"copyonwrite": "False"}, (False, "none")),
        ({"compression": "zstd"}, (True, "zstd")),  # compression implies copy-on-write
        ({"compression": "LZO", "copyonwrite": "yes"}, (True, "lzo")),
        ({"compression": "none", "copyonwrite": "0"}, (False, "none")),
        # buttervolume's compression=true|false
        ({"compression": "true"}, (True, "zstd")),
        ({"compression": "True"}, (True, "zstd")),
        ({"compression": "false"}, (True, "none")),
        ({"compression": "false", "copyonwrite": "false"}, (False, "none")),
    ],
)
def test_options(driver, options, expected):
    assert driver._parse_options(options) == expected


@pytest.mark.parametrize(
    "options",
    [
        {"size": "10G"},
        {"copyonwrite": "maybe"},
        {"compression": "brotli"},
        {"compression": "zstd", "copyonwrite": "false"},
    ],
)
def test_bad_options(driver, options):
    with pytest.raises(InvalidArgument):
        driver._parse_options(options)


def test_compression_true_uses_the_configured_algorithm(tmp_path):
    conf = config.load_conf()
    drv = registry.load("volume", conf, "btrfs", root=str(tmp_path), compression="lzo")
    assert drv._parse_options({"compression": "true"}) == (True, "lzo")
    with pytest.raises(InvalidArgument, match="copy-on-write"):
        drv._parse_options({"compression": "true", "copyonwrite": "false"})


def test_copyonwrite_false_by_configuration(tmp_path):
    conf = config.load_conf()
    drv = registry.load("volume", conf, "btrfs", root=str(tmp_path), copyonwrite=False)
    assert drv._parse_options({}) == (False, "none")


def test_config_defaults_apply(tmp_path):
    conf = config.load_conf()
    drv = registry.load(
        "volume", conf, "btrfs", root=str(tmp_path), copyonwrite=True, compression="zlib"
    )
    assert drv._parse_options({}) == (True, "zlib")


@pytest.mark.parametrize("mount_id", ["", None, "x" * 257])
def test_bad_mount_ids(driver, mount_id):
    with pytest.raises(InvalidArgument):
        driver.mount("ok", mount_id)


def test_bad_pattern_refused_before_anything(driver, tmp_path):
    with pytest.raises(InvalidArgument):
        driver.purge("ok", "4h")
    assert not (tmp_path / "root").exists()

import sys
import textwrap

import pytest
from oslo_config import cfg
from stevedore import extension

from stowkit.corelib import config, registry
from stowkit.corelib.driver import Driver
from stowkit.corelib.errors import BackendUnavailable, ConfigError, InvalidArgument


@pytest.fixture
def fake_distribution(tmp_path, monkeypatch):
    """A distribution on sys.path declaring stowkit backends, as pip would leave it."""
    (tmp_path / "fakebackend.py").write_text(
        textwrap.dedent(
            """
            from oslo_config import cfg
            from stowkit.corelib.driver import Driver

            class FakeVolumes(Driver):
                options = [cfg.StrOpt("where", default="$state_dir/fake")]
                capabilities = frozenset({"snapshot"})

            class NotADriver:
                pass
            """
        )
    )
    dist = tmp_path / "fakebackend-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fakebackend\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[stowkit.volume]\n"
        "fake = fakebackend:FakeVolumes\n"
        "notadriver = fakebackend:NotADriver\n"
        "broken = fakebackend_missing:Nothing\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    # stevedore memoises entry points per namespace for the life of the process.
    monkeypatch.setattr(extension.ExtensionManager, "ENTRY_POINT_CACHE", {})
    yield
    sys.modules.pop("fakebackend", None)


def test_load_by_name_registers_the_backend_group(fake_distribution):
    conf = config.load_conf(overrides=[(None, "state_dir", "/srv/st")])
    drv = registry.load("volume", conf, name="fake")
    assert type(drv).__name__ == "FakeVolumes"
    assert drv.group == "volume_fake"
    assert conf.volume_fake.where == "/srv/st/fake"
    assert drv.opts.where == "/srv/st/fake"


def test_load_uses_the_backend_the_config_names(fake_distribution):
    conf = config.load_conf(overrides=[("volume", "backend", "fake")])
    drv = registry.load("volume", conf, where="/elsewhere")
    assert drv.opts.where == "/elsewhere"


def test_unknown_backend_names_the_installed_ones(fake_distribution):
    with pytest.raises(ConfigError, match=r"unknown volume backend 'nope' \(installed: .*fake"):
        registry.load("volume", config.load_conf(), name="nope")


def test_unknown_namespace():
    with pytest.raises(ConfigError, match="unknown backend namespace"):
        registry.load("toaster", config.load_conf())


def test_a_backend_that_fails_to_import_is_unavailable(fake_distribution):
    with pytest.raises(BackendUnavailable, match="'broken'.*cannot be loaded"):
        registry.load("volume", config.load_conf(), name="broken")


def test_an_entry_point_that_is_not_a_driver_is_refused(fake_distribution):
    with pytest.raises(BackendUnavailable, match="not a stowkit Driver"):
        registry.load("volume", config.load_conf(), name="notadriver")


def test_installed_lists_loaded_and_broken_backends(fake_distribution):
    infos = {i.name: i for i in registry.installed(["volume"])}
    assert infos["fake"].capabilities == ("snapshot",)
    assert infos["fake"].error is None
    assert infos["fake"].group == "volume_fake"
    assert infos["broken"].error and "fakebackend_missing" in infos["broken"].error


def test_driver_capabilities():
    class Plain(Driver):
        options = [cfg.IntOpt("n", default=3)]
        capabilities = frozenset({"clone"})

    drv = Plain(config.load_conf(), "volume_plain")
    assert drv.supports("clone") and not drv.supports("send")
    drv.require("clone")
    with pytest.raises(InvalidArgument, match="volume_plain backend does not support send"):
        drv.require("send")
    assert drv.opts.n == 3

import importlib.util
import json
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

            class Unready(Driver):
                client_modules = ("fakebackend_client_missing",)

            class Fussy(Driver):
                options = [cfg.StrOpt("url", default="good")]

                @classmethod
                def unavailable(cls, opts=None):
                    if opts is None:
                        return None
                    if opts.url == "boom":
                        raise RuntimeError("the check itself broke")
                    return None if opts.url == "good" else f"cannot reach {opts.url}"
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
        "unready = fakebackend:Unready\n"
        "fussy = fakebackend:Fussy\n"
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


def test_installed_checks_availability_only_when_asked(fake_distribution):
    quick = {i.name: i for i in registry.installed(["volume"])}
    assert quick["unready"].unavailable is None and quick["unready"].status == "ok"
    checked = {i.name: i for i in registry.installed(["volume"], check=True)}
    unready = checked["unready"]
    assert not unready.available
    assert unready.unavailable == (
        "cannot import fakebackend_client_missing: No module named 'fakebackend_client_missing'"
    )
    assert unready.status == f"unavailable: {unready.unavailable}"
    assert checked["fake"].available and checked["fake"].status == "ok"
    assert checked["broken"].status.startswith("unavailable: ModuleNotFoundError")
    assert checked["notadriver"].status == "unavailable: not a stowkit Driver class"


def test_the_availability_check_sees_the_configured_options(fake_distribution, tmp_path):
    def status(url):
        conf_file = tmp_path / "s.conf"
        conf_file.write_text(f"[volume_fussy]\nurl = {url}\n" if url else "")
        conf = config.load_conf([str(conf_file)])
        return {i.name: i for i in registry.installed(["volume"], check=True, conf=conf)}

    assert status(None)["fussy"].status == "ok"
    assert status("nowhere")["fussy"].status == "unavailable: cannot reach nowhere"
    broken = status("boom")["fussy"]  # reported, not raised: the other rows still show
    assert broken.status == (
        "unavailable: availability check failed: RuntimeError: the check itself broke"
    )


def test_loading_does_not_run_the_availability_check(fake_distribution, monkeypatch):
    def refuse(cls, opts=None):
        raise AssertionError("a command paid for the availability check")

    monkeypatch.setattr(Driver, "unavailable", classmethod(refuse))
    drv = registry.load("volume", config.load_conf(), name="unready")
    assert type(drv).__name__ == "Unready"


def test_stowkit_backends_shows_an_unavailable_backend_and_why(fake_distribution, capsys):
    from stowkit.cli.app import main

    assert main(["backends", "--namespace", "volume", "-f", "json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["unready"]["status"] == (
        "unavailable: cannot import fakebackend_client_missing: "
        "No module named 'fakebackend_client_missing'"
    )
    assert rows["fake"]["status"] == "ok"


def test_btrfs_without_its_bindings_is_unavailable(monkeypatch, capsys):
    from stowkit.cli.app import main
    from stowkit.plugins.btrfs import subvol

    monkeypatch.setattr(subvol, "btrfsutil", None)
    monkeypatch.setattr(subvol, "_IMPORT_ERROR", "No module named 'btrfsutil'")
    assert main(["backends", "--namespace", "volume", "-f", "json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    status = rows["btrfs"]["status"]
    assert status.startswith("unavailable: the btrfs backend needs libbtrfsutil")
    assert "No module named 'btrfsutil'" in status and "pip install btrfsutil" in status
    with pytest.raises(BackendUnavailable, match="needs libbtrfsutil"):
        subvol.require_bindings()  # what the first volume command says, the same reason


def test_the_shipped_backends_are_available_here():
    # Their client libraries are install requirements; btrfsutil is an extra
    # (the dev venv and tox have it).
    has_btrfsutil = importlib.util.find_spec("btrfsutil") is not None
    checked = registry.installed(check=True, conf=config.load_conf())
    for info in checked:
        if info.target.startswith("stowkit.plugins."):
            expect_ok = has_btrfsutil or info.name != "btrfs"
            assert (info.status == "ok") == expect_ok, (info.name, info.status)


def test_sql_needs_the_database_driver_of_its_url(tmp_path):
    from stowkit.plugins.sql.catalog import SqlCatalog

    def reason(url):
        conf = config.load_conf()
        conf.register_opts(SqlCatalog.options, group="catalog_sql")
        conf.set_override("connection", url, "catalog_sql")
        return SqlCatalog.unavailable(conf.catalog_sql)

    assert SqlCatalog.unavailable() is None
    assert reason(f"sqlite:///{tmp_path}/c.sqlite") is None
    assert reason("postgresql://u:p@db/catalog") is None  # psycopg, from the test extra
    missing = reason("mysql+pymysql://u@db/catalog")
    assert missing.startswith("connection needs the pymysql database driver")
    assert "pymysql" in missing
    assert reason("not a url").startswith("connection: ")

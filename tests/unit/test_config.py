import pytest

from stowkit.corelib import config
from stowkit.corelib.errors import ConfigError


def test_defaults_are_the_embedded_backends(tmp_path):
    conf = config.load_conf([str(_write(tmp_path, ""))])
    assert conf.volume.backend == "btrfs"
    assert conf.image.backend == "local"
    assert conf.blockstore.backend == "local"
    assert conf.catalog.backend == "sql"
    assert conf.state_dir == "/var/lib/stowkit"


def test_file_values_and_overrides(tmp_path):
    path = _write(tmp_path, "[DEFAULT]\nstate_dir = /srv/s\n[image]\nbackend = glance\n")
    conf = config.load_conf([str(path)], overrides=[("blockstore", "backend", "swift")])
    assert conf.state_dir == "/srv/s"
    assert conf.image.backend == "glance"
    assert conf.blockstore.backend == "swift"


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.conf"):
        config.load_conf([str(tmp_path / "nope.conf")])


def test_unparsable_file_is_a_config_error(tmp_path):
    path = _write(tmp_path, "this is not ini\n[unterminated\n")
    with pytest.raises(ConfigError, match="cannot parse config file"):
        config.load_conf([str(path)])


def test_list_opts_has_core_groups_and_installed_backend_groups():
    groups = {group for group, _ in config.list_opts()}
    core = {None, "volume", "image", "blockstore", "catalog", "imagetask"}
    engines = {"scheduler", "docker_plugin", "image_sync", "catalog_api", "image_sync_api", "agent"}
    engines |= {"centralized_scheduler"}
    assert core | engines <= groups
    assert {"volume_btrfs", "image_local", "blockstore_local", "catalog_sql"} <= groups
    # Every backend group follows NAMESPACE_BACKEND.
    for group in groups - core - engines:
        namespace, _, backend = group.partition("_")
        assert namespace in config.DEFAULT_BACKENDS and backend


def _write(tmp_path, text):
    path = tmp_path / "stowkit.conf"
    path.write_text(text)
    return path


def test_config_dir_files_in_name_order_after_the_config_files(tmp_path):
    path = _write(tmp_path, "[DEFAULT]\nstate_dir = /from/file\n[image]\nbackend = glance\n")
    conf_d = tmp_path / "stowkit.conf.d"
    conf_d.mkdir()
    (conf_d / "20-late.conf").write_text("[DEFAULT]\nstate_dir = /from/20\n")
    (conf_d / "10-early.conf").write_text("[DEFAULT]\nstate_dir = /from/10\n")
    (conf_d / "99-ignored.conf.orig").write_text("[DEFAULT]\nstate_dir = /not/a/conf\n")
    conf = config.load_conf([str(path)], config_dirs=[str(conf_d)])
    assert conf.state_dir == "/from/20"
    assert conf.image.backend == "glance"  # the file still counts


def test_missing_config_dir_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="config directory not found: .*nope.d"):
        config.load_conf(config_dirs=[str(tmp_path / "nope.d")])


def test_default_config_dir_is_read_when_it_exists(tmp_path, monkeypatch):
    conf_d = tmp_path / "stowkit.conf.d"
    monkeypatch.setattr(config, "DEFAULT_CONFIG_DIR", str(conf_d))
    assert config.load_conf().state_dir == "/var/lib/stowkit"  # absent: no error
    conf_d.mkdir()
    (conf_d / "state.conf").write_text("[DEFAULT]\nstate_dir = /srv/d\n")
    assert config.load_conf().state_dir == "/srv/d"
    # as oslo.config does: the default directory goes with named files too ...
    assert config.load_conf([str(_write(tmp_path, ""))]).state_dir == "/srv/d"
    # ... and a named directory replaces it
    other = tmp_path / "other.d"
    other.mkdir()
    assert config.load_conf(config_dirs=[str(other)]).state_dir == "/var/lib/stowkit"


def test_default_config_dir_is_etc_stowkit_conf_d():
    assert config.DEFAULT_CONFIG_DIR == "/etc/stowkit/stowkit.conf.d"

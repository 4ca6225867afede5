"""Configurations of ``stowkit agent`` written to a test's directory."""

from __future__ import annotations

from stowkit.corelib import config
from stowkit.corelib.agent import options
from tests.fakes.keystone import FakeKeystone


def conf_with(tmp_path, text: str = ""):
    path = tmp_path / "stowkit.conf"
    path.write_text(f"[DEFAULT]\nstate_dir = {tmp_path}\n[agent]\n{text}")
    conf = config.load_conf([str(path)])
    options.register_opts(conf)
    return conf


def password_conf(tmp_path, keystone: FakeKeystone, extra: str = ""):
    return conf_with(
        tmp_path,
        f"auth_type = password\nauth_url = {keystone.url}\nusername = alice\n"
        f"password = secret\nproject_name = p\n{extra}",
    )

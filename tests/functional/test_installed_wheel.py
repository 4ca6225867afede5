"""stowkit as a user gets it: sdist -> wheel -> a fresh venv outside the source tree.

Nothing here runs from the checkout: the sdist is built from the repository,
the wheel from the unpacked sdist (so the sdist alone must be enough, version
included), and every command runs from the new venv with the current directory
outside the tree, so an import that only works from the checkout fails here.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import tarfile
import uuid
import zipfile

import pytest

from tests.fakes.btrfs_hosts import wipe

REPO = pathlib.Path(__file__).resolve().parents[2]

#: What an sdist must carry besides the packages (release basics).
SDIST_MUST_HOLD = (
    "LICENSE",
    "README.md",
    "tox.ini",
    "setup.py",
    "tests",
    "doc",
    "contrib",
    "tools",
)


def run(argv: list[str], cwd: pathlib.Path, **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    out = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=900, check=False, **kw
    )
    return out


def ok(out: subprocess.CompletedProcess) -> str:
    assert out.returncode == 0, f"{out.args}: exit {out.returncode}\n{out.stdout}\n{out.stderr}"
    return out.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, pathlib.Path]:
    """Build sdist and wheel, install the wheel (btrfs extra) into a fresh venv."""
    top = tmp_path_factory.mktemp("wheel")
    dist = top / "dist"
    ok(run([sys.executable, "-m", "build", "--sdist", "--outdir", str(dist), str(REPO)], top))
    (sdist,) = dist.glob("stowkit-*.tar.gz")
    with tarfile.open(sdist) as tar:
        tar.extractall(top / "src")  # our own archive, just built
    (unpacked,) = (top / "src").iterdir()
    ok(run([sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(unpacked)], top))
    (wheel,) = dist.glob("stowkit-*.whl")
    venv = top / "venv"
    ok(run([sys.executable, "-m", "venv", str(venv)], top))
    pip = [
        str(venv / "bin" / "python"),
        "-m",
        "pip",
        "install",
        "-q",
        "--disable-pip-version-check",
    ]
    ok(run([*pip, f"{wheel}[btrfs]"], top))
    work = top / "work"
    work.mkdir()
    return {
        "sdist": sdist,
        "wheel": wheel,
        "venv": venv,
        "work": work,
        "top": top,
        "unpacked": unpacked,
    }


def test_sdist_carries_tests_docs_and_tools(installed):
    with tarfile.open(installed["sdist"]) as tar:
        names = {name.split("/", 2)[1] for name in tar.getnames() if name.count("/")}
    missing = [name for name in SDIST_MUST_HOLD if name not in names]
    assert not missing, f"sdist lacks {missing}"


def test_wheel_installs_only_the_stowkit_namespace(installed):
    with zipfile.ZipFile(installed["wheel"]) as whl:
        tops = {name.split("/", 1)[0] for name in whl.namelist()}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"stowkit"}
    py = str(installed["venv"] / "bin" / "python")
    for stray in ("cli", "corelib", "plugins"):
        out = run([py, "-c", f"import {stray}"], installed["work"])
        assert out.returncode != 0 and "ModuleNotFoundError" in out.stderr, stray
    where = ok(run([py, "-c", "import stowkit.corelib as m; print(m.__file__)"], installed["work"]))
    assert str(installed["venv"]) in where and str(REPO) not in where


def test_version_comes_from_git(installed):
    out = ok(run([str(installed["venv"] / "bin" / "stowkit"), "--version"], installed["work"]))
    version = out.split()[-1]
    assert version not in ("0.0.0", "0+unknown"), out
    described = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short=7", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    tagged = subprocess.run(
        ["git", "-C", str(REPO), "describe", "--tags", "--exact-match"],
        capture_output=True,
        text=True,
    )
    # An untagged commit's version names the commit (0.1.devN+gHASH); a tagged one is the tag.
    if tagged.returncode == 0:
        assert version == tagged.stdout.strip().lstrip("v")
    else:
        assert f"g{described}" in version, (version, described)


def test_backends_all_available_from_the_wheel(installed):
    out = ok(
        run(
            [str(installed["venv"] / "bin" / "stowkit"), "backends", "-f", "json"],
            installed["work"],
        )
    )
    rows = json.loads(out)
    names = {(r["namespace"], r["name"]) for r in rows}
    assert {
        ("volume", "btrfs"),
        ("image", "local"),
        ("image", "glance"),
        ("blockstore", "local"),
        ("blockstore", "swift"),
        ("catalog", "sql"),
    } <= names
    broken = [r for r in rows if r["status"] != "ok"]
    assert not broken, broken


def test_one_real_command_of_each_job(installed, service):
    """Volume on the harness btrfs, image and block device locally, catalog on SQLite."""
    mount = pathlib.Path(service("btrfs")["mounts"][0])
    work = installed["work"]
    root = mount / f"stowkit-wheel-{uuid.uuid4().hex[:8]}"
    conf = work / "stowkit.conf"
    conf.write_text(
        f"[DEFAULT]\nstate_dir = {work / 'state'}\n"
        f"[volume_btrfs]\nroot = {root}\n"
        f"[image]\nbackend = local\n[image_local]\npath = {work / 'images'}\n"
        "[blockstore]\nbackend = local\n"
    )
    stowkit = [str(installed["venv"] / "bin" / "stowkit"), "--config-file", str(conf)]

    def sk(*args: str):
        return json.loads(ok(run([*stowkit, *args, "-f", "json"], work)))

    try:
        assert sk("volume", "create", "wheelvol")["name"] == "wheelvol"
        assert [v["name"] for v in sk("volume", "list")] == ["wheelvol"]
    finally:
        wipe(root)

    data = work / "image.bin"
    data.write_bytes(os.urandom(4096))
    made = sk("image", "create", str(data), "--name", "wheelimg", "--region", "One")
    listed = sk("image", "list", "--region", "One")
    assert [i["id"] for i in listed] == [made["id"]]

    assert sk("blockstore", "setup", "wheeldev", "--size", "1M")["size"] == 1 << 20
    disk = work / "disk.bin"
    disk.write_bytes(os.urandom(1 << 20))
    ok(run([*stowkit, "blockstore", "upload", str(disk), "wheeldev"], work))
    ok(run([*stowkit, "blockstore", "download", "wheeldev", str(work / "back.bin")], work))
    assert (work / "back.bin").read_bytes() == disk.read_bytes()

    ok(run([*stowkit, "catalog", "db-sync"], work))
    assert sk("catalog", "backup", "list", "--project", "demo") == []


def test_wheel_ships_the_public_package_typed(installed):
    with zipfile.ZipFile(installed["wheel"]) as whl:
        names = set(whl.namelist())
    assert {"stowkit/__init__.py", "stowkit/py.typed"} <= names
    assert not [n for n in names if "_stowkit" in n], "the facade is installed twice"


def test_help_of_the_installed_package_shows_the_api(installed):
    py = str(installed["venv"] / "bin" / "python")
    shown = ok(run([py, "-c", "import stowkit; help(stowkit)"], installed["work"]))
    for name in ("open", "Backends", "VolumeDriver", "image_sync", "upload_device", "Catalog"):
        assert name in shown, name
    where = ok(run([py, "-c", "import stowkit; print(stowkit.__file__)"], installed["work"]))
    assert str(installed["venv"]) in where and str(REPO) not in where


def test_example_pages_pass_against_the_installed_wheel(installed, service):
    """Every doc/examples page of the sdist, run by the venv's Python outside the tree."""
    mount = pathlib.Path(service("btrfs")["mounts"][0])
    root = mount / f"stowkit-wheel-example-{uuid.uuid4().hex[:8]}"
    pages = sorted((installed["unpacked"] / "doc" / "examples").glob("*.md"))
    assert {p.name for p in pages} >= {"blocks.md", "images.md", "catalog.md", "volumes.md"}
    script = (
        "import doctest, sys\n"
        "failed = 0\n"
        "for page in sys.argv[2:]:\n"
        "    failed += doctest.testfile(page, module_relative=False,\n"
        "        globs={'root': sys.argv[1]}, optionflags=doctest.ELLIPSIS).failed\n"
        "sys.exit(1 if failed else 0)\n"
    )
    py = str(installed["venv"] / "bin" / "python")
    try:
        ok(run([py, "-c", script, str(root), *map(str, pages)], installed["work"]))
    finally:
        wipe(root)

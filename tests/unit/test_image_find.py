"""`image show` and `image delete` take an id or a name only one image has (as openstack)."""

from __future__ import annotations

import logging

import pytest

from stowkit.cli.app import main
from stowkit.corelib.errors import Conflict, NotFound
from stowkit.corelib.image import find_image
from tests.fakes.imagesync import make_store, put


def test_an_id_then_a_unique_name_finds_the_image(tmp_path):
    store = make_store(str(tmp_path))
    one = put(store, "Alpha", "cirros", b"one")
    assert find_image(store, "Alpha", one.id) == one
    assert find_image(store, "Alpha", "cirros") == one


def test_a_name_two_images_carry_is_a_conflict_that_lists_them(tmp_path):
    store = make_store(str(tmp_path))
    ids = sorted(put(store, "Alpha", "cirros", data).id for data in (b"a", b"b"))
    with pytest.raises(Conflict, match=f"2 images in region Alpha are named cirros: {ids[0]}, "):
        find_image(store, "Alpha", "cirros")
    with pytest.raises(NotFound, match="no image nothing .id or name. in region Alpha"):
        find_image(store, "Alpha", "nothing")


def test_the_commands_resolve_every_name_before_deleting_any(tmp_path, capsys):
    conf = tmp_path / "stowkit.conf"
    conf.write_text(f"[DEFAULT]\nstate_dir = {tmp_path}\n")
    store = make_store(str(tmp_path / "images"))
    kept = put(store, "Alpha", "kept", b"k")
    put(store, "Alpha", "gone", b"g")

    def run(*args: str) -> tuple[int, str, str]:
        root = logging.getLogger()
        handlers = list(root.handlers)
        try:
            code = main(["--config-file", str(conf), "image", *args, "--region", "Alpha"])
        finally:
            root.handlers[:] = handlers
        out, err = capsys.readouterr()
        return code, out, err

    code, out, _ = run("show", "kept", "-f", "value", "-c", "id")
    assert (code, out) == (0, f"{kept.id}\n")
    code, _, err = run("delete", "gone", "nothing")
    assert code == NotFound.exit_code and "no image nothing" in err and err.count("\n") == 1
    assert sorted(i.name for i in store.list_images("Alpha")) == ["gone", "kept"]
    assert run("delete", "gone")[0] == 0
    assert [i.name for i in store.list_images("Alpha")] == ["kept"]

"""Image ids become file names in the embedded store: a hostile one never reaches the disk."""

from __future__ import annotations

import json

import pytest

from stowkit.corelib.errors import InvalidName
from tests.fakes.imagesync import make_store, put

# "ABS" stands for an absolute path to the test's own victim file: a regression
# must only ever be able to delete a file the test made.
HOSTILE = ["../../../victim.txt", "ABS", ".hidden", "a/b", ".."]


def hostile(image_id: str, tmp_path) -> str:
    return str(tmp_path / "victim.txt") if image_id == "ABS" else image_id


def backup_line(region: str, image_id: str) -> str:
    return f"{region},img,{image_id},active,4,ch,local,True,\n"


@pytest.mark.parametrize("image_id", HOSTILE)
def test_backup_with_a_path_for_an_id_is_refused_at_load_time(tmp_path, image_id):
    store = make_store(str(tmp_path / "store"))
    backups = tmp_path / "backups"
    backups.mkdir()
    # A good file first: nothing of it may be loaded when a later file is bad.
    (backups / "backup_Alpha.csv").write_text(backup_line("Alpha", "0001"))
    (backups / "backup_Beta.csv").write_text(backup_line("Beta", hostile(image_id, tmp_path)))
    with pytest.raises(InvalidName, match=r"image id at .*backup_Beta.csv:1"):
        store.load_backups(str(backups))
    assert store.regions() == []


@pytest.mark.parametrize("image_id", HOSTILE)
def test_delete_and_read_refuse_an_indexed_path_id(tmp_path, image_id):
    """An index written by an older version, holding such an id, is not followed."""
    image_id = hostile(image_id, tmp_path)
    root = tmp_path / "store"
    store = make_store(str(root))
    put(store, "Alpha", "one", b"data")
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    index_path = root / "Alpha" / "images.json"
    index = json.loads(index_path.read_text())
    index[image_id] = dict(next(iter(index.values())), id=image_id, name="evil")
    index_path.write_text(json.dumps(index))
    with pytest.raises(InvalidName):
        store.delete_image("Alpha", image_id)
    with pytest.raises(InvalidName):
        store.read_image("Alpha", image_id)
    assert victim.read_text() == "keep me"
    assert image_id in json.loads(index_path.read_text())  # refused, not half-deleted

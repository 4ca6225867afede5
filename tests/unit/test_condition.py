"""The safe metadata_condition evaluator: GlanceSync's documented forms, and nothing more."""

from __future__ import annotations

import types

import pytest

from stowkit.corelib.imagesync.condition import Condition, ConditionError, compile_condition


def image(**kw):
    base = dict(
        name="img",
        id="1",
        is_public=True,
        user_properties={},
        size=10,
        owner="t",
        checksum="c",
        status="active",
        region="R",
        visibility="public",
        os_hash_value=None,
        disk_format="raw",
        container_format="bare",
    )
    base.update(kw)
    return types.SimpleNamespace(**base)


@pytest.mark.parametrize(
    ("source", "img", "mset", "expected"),
    [
        ("image.is_public", image(), set(), True),
        ("image.is_public", image(is_public=False), set(), False),
        # GlanceSync's documented default condition
        (
            "image.is_public and (not metadata_set or metadata_set.intersection("
            "image.user_properties))",
            image(user_properties={"nid": "1"}),
            {"nid"},
            True,
        ),
        (
            "image.is_public and (not metadata_set or metadata_set.intersection("
            "image.user_properties))",
            image(user_properties={"x": "1"}),
            {"nid"},
            False,
        ),
        (
            "image.is_public and (not metadata_set or metadata_set.intersection("
            "image.user_properties))",
            image(),
            set(),
            True,
        ),
        # the sample configuration's forms, with a continuation line
        (
            "image.is_public and\\\n  ('nid' in image.user_properties or 'type' in "
            "image.user_properties)",
            image(user_properties={"type": "x"}),
            set(),
            True,
        ),
        (
            "image.is_public and image.user_properties.get('type', None) == 'baseimages'",
            image(user_properties={"type": "baseimages"}),
            set(),
            True,
        ),
        ("image.user_properties.get('type') == 'baseimages'", image(), set(), False),
        ("image.user_properties['nid'] == '3'", image(user_properties={"nid": "3"}), set(), True),
        ("image.user_properties['nid'] == '3'", image(), set(), False),
        ("image.name.startswith('base') or image.size > 5", image(), set(), True),
        ("not image.is_public", image(), set(), False),
        ("image.name in ('a', 'img')", image(), set(), True),
        ("image.name not in ['a', 'img']", image(), set(), False),
        ("1 < image.size <= 10", image(), set(), True),
        ("image.owner is None", image(), set(), False),
        ("len(image.user_properties) == 0", image(), set(), True),
        (
            "int(image.user_properties.get('nid', '0')) + 1 >= 2",
            image(user_properties={"nid": "1"}),
            set(),
            True,
        ),
        ("'yes' if image.is_public else ''", image(), set(), True),
        ("False", image(), set(), False),
    ],
)
def test_documented_forms(source, img, mset, expected):
    assert Condition(source).evaluate(img, mset) is expected


@pytest.mark.parametrize(
    "source",
    [
        "__import__('os').system('true')",
        "image.__class__",
        "image.__dict__",
        "open('/etc/passwd')",
        "(lambda: 1)()",
        "[x for x in metadata_set]",
        "image.user_properties.pop('nid')",
        "image.name.format(image)",
        "os",
        "image.is_public and",
        "image.is_public = True",
        "image.name[0:2]",
        "metadata_set.get(1, key=2)",
        "b'x'",
        "image.size * 2",
        "getattr(image, 'name')",
    ],
)
def test_rejected_at_load(source):
    with pytest.raises(ConditionError):
        Condition(source)


def test_runtime_type_error_is_a_condition_error():
    cond = Condition("image.size.startswith('x')")
    with pytest.raises(ConditionError, match="failed on image"):
        cond.evaluate(image(), set())


def test_empty_condition_means_none():
    assert compile_condition("") is None
    assert compile_condition("   ") is None
    assert compile_condition(None) is None


def test_error_is_one_line_config_error():
    from stowkit.corelib.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        Condition("image.is_public and (")
    assert "\n" not in str(err.value)


def test_string_literals_keep_their_whitespace():
    cond = Condition("image.name == 'a  b'")
    assert cond.evaluate(image(name="a  b"), set()) is True
    assert cond.evaluate(image(name="a b"), set()) is False
    tab = Condition("image.user_properties.get('t') == 'x\\ty'")
    assert tab.evaluate(image(user_properties={"t": "x\ty"}), set()) is True


def test_line_continuations_are_joined():
    # ConfigParser hands multi-line values over joined by newlines; GlanceSync's
    # backslash continuations are Python's own.
    cond = Condition("image.is_public and \\\nimage.name == 'a  b'")
    assert cond.evaluate(image(name="a  b"), set()) is True
    split = Condition("image.is_public\nand image.name == 'a  b'")
    assert split.evaluate(image(name="a  b"), set()) is True
    assert split.evaluate(image(name="a b"), set()) is False


@pytest.mark.parametrize(
    "source",
    [
        "not " * 2000 + "True",
        "-" * 2000 + "1",
        "not " * 100_000 + "True",
        " + ".join(["1"] * 5000),
        "image.user_properties" + "[0]" * 2000,
        "(" * 2000 + "1" + ")" * 2000,
    ],
)
def test_deep_nesting_is_a_one_line_config_error(source):
    with pytest.raises(ConditionError) as err:
        Condition(source)
    message = str(err.value)
    assert "\n" not in message and len(message) < 300
    assert "recursion" not in message


def test_nesting_within_the_bound_still_works():
    assert Condition("not " * 50 + "True").evaluate(image(), set()) is True
    assert Condition(" or ".join(["False"] * 2000) + " or True").evaluate(image(), set())


def test_deep_condition_exits_10_from_the_cli(tmp_path, monkeypatch, capsys):
    from stowkit.cli.app import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GLANCESYNC_CONFIG", raising=False)
    conf = tmp_path / "stowkit.conf"
    conf.write_text(
        f"[DEFAULT]\nstate_dir = {tmp_path / 'state'}\n"
        f"[image_sync]\nconfig_file = {tmp_path / 'glancesync.conf'}\n"
    )
    (tmp_path / "glancesync.conf").write_text("[main]\nmaster_region = One\n")
    (tmp_path / "state" / "images" / "One").mkdir(parents=True)
    deep = "master.metadata_condition=" + "not " * 3000 + "True"
    assert main(["--config-file", str(conf), "image", "status", "--config", deep]) == 10
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nested deeper" in err


@pytest.mark.parametrize("source", ["\x00", "image.name == 'a\x00'", "True\x00"])
def test_nul_bytes_are_a_config_error(source):
    with pytest.raises(ConditionError, match="malformed"):
        Condition(source)

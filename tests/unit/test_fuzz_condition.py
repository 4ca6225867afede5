"""Property-based fuzzing of the metadata_condition evaluator and the backup CSV loader.

Budget: ``STOWKIT_FUZZ_EXAMPLES`` examples per property (default 150).  A
failure prints the smallest condition or file hypothesis found.
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
import types

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stowkit.corelib.errors import InvalidArgument
from stowkit.corelib.imagesync.condition import Condition, ConditionError
from stowkit.corelib.imagesync.report import read_backup
from stowkit.corelib.names import check_name

EXAMPLES = int(os.environ.get("STOWKIT_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)

atoms = st.sampled_from(
    [
        "True",
        "None",
        "1",
        "'x'",
        "image.name",
        "image.is_public",
        "image.user_properties",
        "image.size",
        "metadata_set",
        "image.__class__",
        "__import__('os')",
        "open",
        "image.user_properties.get('type')",
    ]
)
unary = st.sampled_from(["not ", "-", "~", "(", "[", "lambda: "])
binary = st.sampled_from([" and ", " or ", " + ", " - ", " * ", " == ", " in ", " if 1 else ", "."])


def _combine(children):
    return st.one_of(
        st.tuples(unary, children).map(lambda t: t[0] + t[1] + {"(": ")", "[": "]"}.get(t[0], "")),
        st.tuples(children, binary, children).map("".join),
        st.tuples(children, st.sampled_from(["[0]", "['k']", ".lower()", ".keys()", "()"])).map(
            "".join
        ),
        st.tuples(st.sampled_from(["len(", "str(", "set(", "int("]), children).map(
            lambda t: t[0] + t[1] + ")"
        ),
    )


expressions = st.recursive(atoms, _combine, max_leaves=40) | st.text(max_size=60)
deep = st.builds(
    lambda op, n, leaf: op * n + leaf,
    st.sampled_from(["not ", "-", "+", "~"]),
    st.integers(50, 5000),
    st.sampled_from(["True", "1"]),
)


def _image(**kw):
    base = dict(
        id="i1",
        name="n",
        region="R",
        owner="o",
        size=1,
        checksum=None,
        status="active",
        is_public=True,
        visibility="public",
        user_properties={"type": "base"},
        os_hash_value=None,
        disk_format="qcow2",
        container_format="bare",
    )
    base.update(kw)
    return types.SimpleNamespace(**base)


@FUZZ
@given(source=expressions | deep)
def test_conditions_compile_or_fail_as_config_errors(source):
    try:
        cond = Condition(source)
    except ConditionError as err:
        assert "\n" not in str(err) and len(str(err)) < 400
        return
    try:
        result = cond.evaluate(_image(), {"a"})
    except ConditionError as err:
        assert "\n" not in str(err)
        return
    assert isinstance(result, bool)


fields = st.text(st.sampled_from("ab1_.-/ '\"{}:,=\\\x00\n") | st.characters(), max_size=20)
rows = st.lists(
    st.lists(fields, min_size=0, max_size=11)
    | st.tuples(
        st.just("R"),
        st.just("n"),
        fields | st.sampled_from(["../../x", "/etc/passwd", ".h", "id1"]),
        st.just("active"),
        st.sampled_from(["1", "-1", "x", "9" * 5000]),
        st.just(""),
        st.just(""),
        st.just("True"),
        fields | st.sampled_from(["{}", "{'a': 1}", "a='1'", "[" * 3000, "**{}", "{'a': [1]}"]),
    ).map(list),
    max_size=4,
)


@FUZZ
@given(rows=rows, raw=st.none() | st.binary(max_size=200))
def test_backup_files_load_checked_or_fail_in_one_line(rows, raw):
    if raw is None:
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerows(rows)
        data = out.getvalue().encode("utf-8", "surrogatepass")
    else:
        data = raw
    with tempfile.NamedTemporaryFile(suffix=".csv") as fh:
        fh.write(data)
        fh.flush()
        try:
            images = read_backup(fh.name)
        except InvalidArgument as err:
            assert "\n" not in str(err), str(err)
            return
    for image in images:
        assert check_name(image.id) == image.id
        assert image.size >= 0
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in image.properties.items())

"""bench/run.py's aggregation, fed with made-up result documents (no services, no benches)."""

from __future__ import annotations

import importlib.util
import json
import pathlib
import sys

import pytest

BENCH = pathlib.Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture
def run(monkeypatch):
    """bench/run.py as a module (bench/ is not a package; run.py imports figures from it)."""
    monkeypatch.syspath_prepend(str(BENCH))
    monkeypatch.delitem(sys.modules, "figures", raising=False)
    spec = importlib.util.spec_from_file_location("stowkit_bench_run", BENCH / "run.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look the module up
    spec.loader.exec_module(module)
    return module


def fig(name, value, target=None, direction=None, unit="x", skipped=False, note=""):
    return {"figure": name, "value": value, "unit": unit, "target": target,
            "direction": direction, "skipped": skipped, "note": note}  # fmt: skip


def doc(name, *figs, errors=()):
    return {"format": 1, "benchmark": name, "errors": list(errors), "figures": list(figs)}


def result_column(lines, figure):
    """The result cell of a figure's row in the table."""
    row = next(line for line in lines if f"| {figure} " in line)
    return row.rsplit("|", 1)[1].strip()


@pytest.mark.parametrize(
    ("value", "direction", "target", "expected"),
    [
        (0.6, ">=", 0.5, "PASS"),
        (0.5, ">=", 0.5, "PASS"),
        (0.4, ">=", 0.5, "FAIL"),
        (49.9, "<", 50.0, "PASS"),
        (50.0, "<", 50.0, "FAIL"),
        (1.2, "<=", 1.2, "PASS"),
        (1.21, "<=", 1.2, "FAIL"),
        (5.0, ">", 5.0, "FAIL"),
        (5.1, ">", 5.0, "PASS"),
    ],
)
def test_pass_fail_by_direction(run, value, direction, target, expected):
    lines, code = run.aggregate([run.Run("b", 0, doc("b", fig("f", value, target, direction)))])
    assert result_column(lines, "f") == expected
    assert code == 0  # a FAIL is reported, not an error, unless --strict


def test_strict_makes_a_fail_exit_1(run):
    runs = [run.Run("b", 0, doc("b", fig("f", 0.4, 0.5, ">=")))]
    assert run.aggregate(runs, strict=True)[1] == 1
    runs = [run.Run("b", 0, doc("b", fig("f", 0.6, 0.5, ">=")))]
    assert run.aggregate(runs, strict=True)[1] == 0


def test_missing_figure_is_missing_and_exits_1(run):
    d = doc(
        "nbd",
        fig("write: stowkit / raw", 0.7, 0.5, ">="),
        fig("4K reads: stowkit / nbdkit", None, 5.0, ">=", note="qemu-img not found"),
    )
    lines, code = run.aggregate([run.Run("nbd", 1, d)])
    assert result_column(lines, "write: stowkit / raw") == "PASS"
    assert result_column(lines, "4K reads: stowkit / nbdkit") == "MISSING"
    assert any("qemu-img not found" in line for line in lines)
    assert code == 1


def test_figure_without_target_is_shown_and_can_be_missing(run):
    lines, code = run.aggregate([run.Run("b", 0, doc("b", fig("info", 3.0)))])
    assert result_column(lines, "info") == "-"
    assert code == 0
    assert run.aggregate([run.Run("b", 0, doc("b", fig("info", None)))])[1] == 1


def test_skipped_figure_exits_0_unless_strict(run):
    runs = [run.Run("b", 0, doc("b", fig("peer", None, 5.0, ">=", skipped=True, note="--x")))]
    lines, code = run.aggregate(runs)
    assert result_column(lines, "peer") == "SKIPPED"
    assert code == 0
    assert run.aggregate(runs, strict=True)[1] == 1


def test_a_part_that_could_not_run_exits_1_even_with_every_figure(run):
    d = doc("b", fig("f", 0.6, 0.5, ">="), errors=["peer: did not start"])
    lines, code = run.aggregate([run.Run("b", 1, d)])
    assert code == 1
    assert any("peer: did not start" in line for line in lines)


def test_non_zero_exit_alone_exits_1(run):
    lines, code = run.aggregate([run.Run("b", 3, doc("b", fig("f", 0.6, 0.5, ">=")))])
    assert code == 1
    assert any("exited with status 3" in line for line in lines)


def test_no_results_is_missing(run, tmp_path):
    r = run.load("btrfs_plugin", tmp_path / "btrfs_plugin.json", 1)
    lines, code = run.aggregate([r])
    assert code == 1
    assert any("btrfs_plugin" in line and "MISSING" in line for line in lines)


def test_unreadable_results_are_missing(run, tmp_path):
    (tmp_path / "b.json").write_text("{not json")
    assert run.aggregate([run.load("b", tmp_path / "b.json", 0)])[1] == 1
    (tmp_path / "c.json").write_text(json.dumps(doc("c", fig("f", 1.0, 1.0, "=="))))
    lines, code = run.aggregate([run.load("c", tmp_path / "c.json", 0)])
    assert code == 1
    assert any("unknown direction" in line for line in lines)


def test_one_table_for_several_benchmarks(run):
    runs = [
        run.Run("a", 0, doc("a", fig("fa", 2.0, 1.3, "<="))),
        run.Run("b", 0, doc("b", fig("fb", 10.0, 50.0, "<", unit="ms"))),
    ]
    lines, code = run.aggregate(runs)
    assert [c.strip() for c in lines[0].split("|")] == [
        "benchmark",
        "figure",
        "value",
        "target",
        "result",
    ]
    assert result_column(lines, "fa") == "FAIL"
    assert result_column(lines, "fb") == "PASS"
    assert any("| fb " in line and "10.0 ms" in line and "< 50 ms" in line for line in lines)
    assert code == 0


def test_report_only_reads_the_results_dir(run, tmp_path, capsys):
    for name in run.BENCHMARKS:
        (tmp_path / f"{name}.json").write_text(json.dumps(doc(name, fig(f"{name}-f", 1.0))))
    assert run.main(["--report-only", "--results-dir", str(tmp_path)]) == 0
    (tmp_path / "imagesync.json").unlink()
    assert run.main(["--report-only", "--results-dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "imagesync" in out and "no results written" in out


def test_results_written_by_a_benchmark_are_read_back(run, tmp_path, capsys):
    figures = sys.modules["figures"]
    res = figures.Results("catalog_api")
    res.declare("POST: req/s stowkit / freezer-api", "x", 5.0, ">=")
    res.declare("GET: req/s stowkit / freezer-api", "x", 5.0, ">=")
    res.set("POST: req/s stowkit / freezer-api", 7.0)
    with res.part("freezer-api server", ["GET: req/s stowkit / freezer-api"]):
        raise figures.NotRun("freezer-api did not start")
    args = type("Args", (), {"results": tmp_path / "catalog_api.json", "strict": False})
    assert res.finish(args) == 1
    lines, code = run.aggregate([run.load("catalog_api", args.results, 1)])
    assert result_column(lines, "POST: req/s stowkit / freezer-api") == "PASS"
    assert result_column(lines, "GET: req/s stowkit / freezer-api") == "MISSING"
    assert any("freezer-api did not start" in line for line in lines)
    assert code == 1


def test_unknown_benchmark_is_a_usage_error(run):
    assert run.main(["--report-only", "nope"]) == 2

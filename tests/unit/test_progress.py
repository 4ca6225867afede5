"""Byte progress: one transfer (ByteMeter) and one image fanned out to regions (SyncProgress)."""

from __future__ import annotations

import io
import itertools
import threading

from stowkit.cli.progress import ByteMeter, SyncProgress
from stowkit.corelib.image import Image

MiB = 1 << 20


def lines(text: str) -> list[str]:
    """What a terminal would show at each redraw: every ``\\r``/newline-separated frame."""
    return [f.strip() for f in text.replace("\n", "\r").split("\r") if f.strip()]


def test_byte_meter_shows_bytes_rate_eta_and_ends_the_line():
    ticks = iter([0.0, 1.0, 2.0])
    out = io.StringIO()
    meter = ByteMeter("R: img", 4 * MiB, out, True, clock=lambda: next(ticks))
    meter.update(b"x" * MiB)
    assert "1.0 MiB of 4.0 MiB (25%), 1.0 MiB/s, ETA 3s" in out.getvalue()
    meter.update(b"x" * (3 * MiB))
    assert out.getvalue().endswith("\n") and "(100%)" in out.getvalue()
    quiet = io.StringIO()
    ByteMeter("R: img", 10, quiet, False).update(b"x" * 10)
    assert quiet.getvalue() == ""


def _image(name: str, size: int) -> Image:
    return Image(id=f"id-{name}", name=name, region="M", size=size)


def test_regions_copied_at_once_share_one_line_per_image():
    clock = itertools.count(0.0, 0.5)  # every update may redraw
    out = io.StringIO()
    board = SyncProgress(out, True, clock=lambda: next(clock))
    image = _image("big", 8 * MiB)
    slots = [board.observer(r, image) for r in ("Two", "Three", "Other")]
    # the fan-out's writer threads, one per region, feeding chunks at once
    threads = [
        threading.Thread(target=lambda s=s: [s.update(b"x" * MiB) for _ in range(8)]) for s in slots
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    board.close()
    frames = lines(out.getvalue())
    assert frames, "nothing drawn"
    for frame in frames:  # never one region's line drawn over another's
        assert frame.startswith("big: Two ")
        assert " Three " in frame and " Other " in frame
    assert frames[-1].startswith("big: Two 100% Three 100% Other 100%; 8.0 MiB of 8.0")
    assert out.getvalue().count("\n") == 1  # one finished line for the image


def test_a_region_dropped_halfway_ends_its_line_when_the_next_image_starts():
    clock = itertools.count(0.0, 0.5)
    out = io.StringIO()
    board = SyncProgress(out, True, clock=lambda: next(clock))
    first = _image("a", 4 * MiB)
    two, three = board.observer("Two", first), board.observer("Three", first)
    two.update(b"x" * (4 * MiB))
    three.update(b"x" * MiB)  # Three fails here: never completes
    second = _image("b", MiB)
    late = three
    b_two = board.observer("Two", second)
    late.update(b"x" * MiB)  # a straggler of the old image draws nothing
    b_two.update(b"x" * MiB)
    board.close()
    text = out.getvalue()
    assert text.count("\n") == 2
    first_line, second_line = text.split("\n")[:2]
    assert lines(first_line)[-1].startswith("a: Two 100% Three 25%")
    assert all(f.startswith("b: Two") for f in lines(second_line))
    assert lines(second_line)[-1].startswith("b: Two 100%;")


def test_disabled_board_draws_nothing_and_costs_no_slot():
    out = io.StringIO()
    board = SyncProgress(out, False)
    assert board.observer("Two", _image("a", 10)) is None
    board.close()
    assert out.getvalue() == ""


def test_sync_to_two_regions_draws_both_on_each_line(env, capsys, tmp_path):
    (tmp_path / "big.img").write_bytes(b"z" * (3 * MiB))
    assert (
        env(
            "image",
            "create",
            str(tmp_path / "big.img"),
            "--name",
            "big",
            "--region",
            "One",
            "--public",
            "--no-progress",
        )
        == 0
    )
    capsys.readouterr()
    assert env("image", "sync", "Two", "Three", "--progress") == 0
    frames = lines(capsys.readouterr().err)
    drawn = [f for f in frames if f.startswith("big: ")]
    assert drawn and all(" Two " in f and " Three " in f for f in drawn), frames
    assert "Two 100% Three 100%; 3.0 MiB of 3.0 MiB (100%)" in drawn[-1]

"""Docker volume plugin latency: stowkit against buttervolume 3.13, same btrfs, same client.

    python3 bench/btrfs_plugin.py [--btrfs DIR] [--levels 10,100,1000] [--samples 10]
                                  [--only stowkit|buttervolume] [--bv-max-api 100]
                                  [--bv-venv DIR] [--json FILE] [--results FILE] [--strict]

Both plugins are started on unix sockets of their own, on the same btrfs
filesystem (``--btrfs``; default: the first mount of the harness's btrfs
service) in separate scratch directories, and asked the same
requests by the same client over one kept-alive connection, as dockerd does:

* Create    ``/VolumeDriver.Create`` of the last ``--samples`` volumes that
            reach N (median)
* Get       ``/VolumeDriver.Get`` of random existing volumes (median of 2 x samples)
* List      ``/VolumeDriver.List`` (median of samples)
* List+     ``/VolumeDriver.List`` right after a Create (and before its Remove):
            stowkit reuses its scan of volumes/ while that directory is
            unchanged, which List+ never lets it do (median of samples)
* Snapshot  ``/VolumeDriver.Snapshot`` (buttervolume's endpoint; stowkit serves
            it too) of random existing volumes (median of samples), beside
            the snapshot ioctl alone (libbtrfsutil, same volumes, same
            filesystem): the limit

at 10, 100 and 1,000 volumes, after one warm-up request of each kind, and

* List*     ``/VolumeDriver.List`` right after 100 volumes were removed at the
            largest level (``--busy-removes``), while the btrfs cleaner is
            still dropping their subvolumes (median of samples)

stowkit creates every volume through its API. buttervolume's Create and List run
``btrfs subvolume show`` once per volume (about 9 ms each here), so growing it
to 1,000 volumes through its API would take hours: past ``--bv-max-api``
volumes its remaining volumes are made directly with libbtrfsutil (what its
Create would have made) and its requests at that level are sampled fewer
times. The output says so.

The figures (bench/figures.py): stowkit's List at the largest level (target
< 5 ms), its Create at the largest level over Create at the smallest (target
<= 1.2x), its Snapshot over the raw ioctl (target <= 1.2x) and, without a
target, List+ and buttervolume / stowkit for each request at the largest
level.  stowkit runs from the interpreter running this file
(``python -m stowkit.cli.app``); ``btrfs subvolume sync`` (Debian
btrfs-progs) waits for the cleaner.  buttervolume is installed with ``pip
install buttervolume==3.13`` into ``.stack/venvs/buttervolume`` when that
venv is missing.  Needs root.  A server that does not start, a failed
request: its figures are MISSING, the reason printed, and the exit status 1.
"""

from __future__ import annotations

import argparse
import http.client
import importlib.util
import json
import os
import pathlib
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

import figures

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from bench/: the harness's helpers
from tools.stack.buttervolume_venv import ensure_buttervolume  # noqa: E402

TARGET_LIST_MS = 5.0
TARGET_SNAPSHOT_RATIO = 1.2
TARGET_CREATE_RATIO = 1.2


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=600)
        self.unix_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(600)
        self.sock.connect(self.unix_path)


class Client:
    """One kept-alive connection; reconnects if the server closed it."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.conn = UnixHTTPConnection(path)

    def call(self, endpoint: str, body: dict | None = None) -> tuple[float, dict]:
        data = json.dumps(body or {})
        for attempt in (1, 2):
            try:
                start = time.perf_counter()
                self.conn.request("POST", endpoint, body=data)
                resp = self.conn.getresponse()
                payload = json.loads(resp.read())
                elapsed = (time.perf_counter() - start) * 1000.0
                break
            except (http.client.HTTPException, ConnectionError):
                self.conn.close()
                self.conn = UnixHTTPConnection(self.path)
                if attempt == 2:
                    raise
        if payload.get("Err"):
            raise RuntimeError(f"{endpoint} {body}: {payload['Err']}")
        return elapsed, payload

    def close(self) -> None:
        self.conn.close()


def wait_socket(path: str, proc: subprocess.Popen, log: pathlib.Path) -> None:
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise figures.NotRun(f"server exited with {proc.returncode}: {tail(log)}")
            try:
                c = Client(path)
                c.call("/Plugin.Activate")
                c.close()
                return
            except OSError:
                time.sleep(0.1)
        raise figures.NotRun(f"no answer on {path} within 60 s: {tail(log)}")
    except BaseException:
        stop(proc)
        raise


def tail(log: pathlib.Path) -> str:
    """The end of a server's log, on one line (the full log is printed to stderr)."""
    text = log.read_text(errors="replace") if log.exists() else ""
    if text.strip():
        print(f"---- {log}\n{text[-3000:]}", file=sys.stderr)
    return " ".join(text.split())[-300:]


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def default_btrfs() -> str:
    mounts = figures.service("btrfs").get("mounts") or []
    if not mounts:
        raise figures.NotRun("the harness's btrfs record has no mounts")
    return mounts[0]


def delete_subvolumes(root: pathlib.Path) -> None:
    """Remove a scratch root: every subvolume below it, then the directories."""
    if not root.exists():
        return
    import btrfsutil

    for dirpath, dirnames, _ in os.walk(root, topdown=True):
        for d in list(dirnames):
            path = os.path.join(dirpath, d)
            try:
                is_subvol = btrfsutil.is_subvolume(path)
            except OSError:
                is_subvol = False
            if is_subvol:
                try:
                    btrfsutil.set_subvolume_read_only(path, False)
                    btrfsutil.delete_subvolume(path, recursive=True)
                except OSError as exc:
                    print(f"  warning: cannot delete {path}: {exc}", file=sys.stderr)
                dirnames.remove(d)
    shutil.rmtree(root, ignore_errors=True)


def settle(base: pathlib.Path) -> None:
    """Wait until btrfs has cleaned up subvolumes deleted earlier (a previous run's).

    The cleaner thread holds the tree locks every subvolume ioctl needs: measuring
    while it works measures it.
    """
    print(f"  waiting for btrfs to clean deleted subvolumes on {base} ...", file=sys.stderr)
    subprocess.run(
        [figures.need("btrfs"), "subvolume", "sync", str(base)],
        stdout=subprocess.DEVNULL,
        timeout=1800,
        check=False,
    )


# -- the two servers -----------------------------------------------------------------------


class Stowkit:
    label = "stowkit"

    def __init__(self, base: pathlib.Path, scratch: pathlib.Path) -> None:
        self.root = base / f"bench-stowkit-{uuid.uuid4().hex[:6]}"
        self.volumes_dir = self.root / "volumes"  # for the raw snapshot baseline
        self.socket = str(scratch / "stowkit.sock")
        conf = scratch / "stowkit.conf"
        conf.write_text(
            f"[DEFAULT]\nstate_dir = {scratch}/stowkit-state\n[volume_btrfs]\nroot = {self.root}\n"
        )
        self.log = scratch / "stowkit.log"
        self.proc = subprocess.Popen(
            [*figures.stowkit_command(), "--config-file", str(conf),
             "plugin", "serve", "--no-scheduler", "--socket", self.socket],
            cwd=REPO, stdout=self.log.open("w"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            wait_socket(self.socket, self.proc, self.log)
        except BaseException:
            delete_subvolumes(self.root)
            raise

    def close(self) -> None:
        stop(self.proc)
        delete_subvolumes(self.root)


class Buttervolume:
    label = "buttervolume"

    def __init__(self, base: pathlib.Path, scratch: pathlib.Path, venv: pathlib.Path) -> None:
        ensure_buttervolume(venv)
        self.root = base / f"bench-buttervolume-{uuid.uuid4().hex[:6]}"
        self.volumes = self.root / "volumes"
        for d in ("volumes", "snapshots", "received"):
            (self.root / d).mkdir(parents=True)
        self.socket = str(scratch / "buttervolume.sock")
        env = {
            **os.environ,
            "BUTTERVOLUME_VOLUMES_PATH": f"{self.root}/volumes/",
            "BUTTERVOLUME_SNAPSHOTS_PATH": f"{self.root}/snapshots/",
            "BUTTERVOLUME_TEST_REMOTE_PATH": f"{self.root}/received/",
            "BUTTERVOLUME_SOCKET": self.socket,
            "BUTTERVOLUME_SCHEDULE": str(scratch / "schedule.csv"),
            "BUTTERVOLUME_TIMER": "3600",
            "BUTTERVOLUME_LOGLEVEL": "WARNING",
        }
        env.pop("DOCKER_HOST", None)
        self.log = scratch / "buttervolume.log"
        self.proc = subprocess.Popen(
            [str(venv / "bin" / "buttervolume"), "run"],
            cwd=scratch, env=env, stdout=self.log.open("w"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            wait_socket(self.socket, self.proc, self.log)
        except BaseException:
            delete_subvolumes(self.root)
            raise

    def prefill(self, names: list[str]) -> None:
        """Make volumes the way its Create would (a subvolume), without its API."""
        import btrfsutil

        for name in names:
            btrfsutil.create_subvolume(str(self.volumes / name))

    def close(self) -> None:
        stop(self.proc)
        delete_subvolumes(self.root)


# -- measuring ------------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def run_levels(
    server, levels: list[int], api_max: int | None, samples: int, busy_removes: int = 0
) -> dict[int, dict[str, object]]:
    client = Client(server.socket)
    # one request of each kind first, so no figure carries a cold start
    client.call("/VolumeDriver.Create", {"Name": "warmup"})
    client.call("/VolumeDriver.Get", {"Name": "warmup"})
    client.call("/VolumeDriver.List")
    client.call("/VolumeDriver.Remove", {"Name": "warmup"})
    results: dict[int, dict[str, object]] = {}
    count = 0
    rng = random.Random(42)
    for level in levels:
        note = ""
        n = min(samples, level)
        if api_max is not None and level - n > api_max:
            # past the cap: fill directly, time two requests of each kind
            n = 2
            note = f"volumes {max(count, api_max) + 1}-{level - n} made directly; {n} samples"
            server.prefill([f"bench{i:05d}" for i in range(count, level - n)])
            count = level - n
        while count < level - n:  # grow through the API, untimed
            client.call("/VolumeDriver.Create", {"Name": f"bench{count:05d}"})
            count += 1
        creates = []
        while count < level:  # the creates that reach the level are timed
            creates.append(client.call("/VolumeDriver.Create", {"Name": f"bench{count:05d}"})[0])
            count += 1
        names = [f"bench{i:05d}" for i in range(count)]
        gets = [client.call("/VolumeDriver.Get", {"Name": rng.choice(names)})[0]
                for _ in range(2 * n)]  # fmt: skip
        lists = []
        for _ in range(n):
            elapsed, payload = client.call("/VolumeDriver.List")
            check_count(server, payload, level)
            lists.append(elapsed)
        # List right after a change of volumes/ (what a cached scan cannot serve)
        fresh = []
        for i in range(n):
            client.call("/VolumeDriver.Create", {"Name": f"fresh{i:05d}"})
            elapsed, payload = client.call("/VolumeDriver.List")
            check_count(server, payload, level + 1)
            fresh.append(elapsed)
            client.call("/VolumeDriver.Remove", {"Name": f"fresh{i:05d}"})
        snaps = [client.call("/VolumeDriver.Snapshot", {"Name": rng.choice(names)})[0]
                 for _ in range(n)]  # fmt: skip
        results[level] = {
            "Create": median(creates),
            "Get": median(gets),
            "List": median(lists),
            "List+": median(fresh),
            "Snapshot": median(snaps),
            "note": note,
        }
        raw_dir = getattr(server, "volumes_dir", None)
        if raw_dir is not None:
            results[level]["raw snapshot"] = raw_snapshots(raw_dir, rng.sample(names, n))
        print(
            f"  {server.label:12} {level:5} volumes: "
            + "  ".join(f"{op} {results[level][op]:8.2f} ms" for op in OPS)
            + (f"  ({note})" if note else ""),
            file=sys.stderr,
            flush=True,
        )
    if busy_removes and levels:
        # Deleted subvolumes are dropped by the btrfs cleaner in the background;
        # List is timed while it works (what the settle() above avoids elsewhere).
        top = max(levels)
        gone = min(busy_removes, top)
        for i in range(top - gone, top):
            client.call("/VolumeDriver.Remove", {"Name": f"bench{i:05d}"})
        lists = []
        for _ in range(min(samples, top)):
            elapsed, payload = client.call("/VolumeDriver.List")
            check_count(server, payload, top - gone)
            lists.append(elapsed)
        results[top]["List*"] = median(lists)
        results[top]["List* volumes"] = top - gone
        print(
            f"  {server.label:12} List just after {gone} removes at {top}: "
            f"{results[top]['List*']:8.2f} ms",
            file=sys.stderr,
            flush=True,
        )
    client.close()
    return results


def raw_snapshots(volumes_dir: pathlib.Path, names: list[str]) -> float:
    """The limit of Snapshot: the snapshot ioctl alone (libbtrfsutil), median ms.

    Read-only snapshots of the same volumes, on the same filesystem, into a
    directory beside volumes/; deleted again afterwards.
    """
    import btrfsutil

    out = volumes_dir.parent / f"raw-snapshots-{uuid.uuid4().hex[:6]}"
    out.mkdir()
    times = []
    try:
        for i, name in enumerate(names):
            t0 = time.perf_counter()
            btrfsutil.create_snapshot(str(volumes_dir / name), str(out / f"{i}"), read_only=True)
            times.append((time.perf_counter() - t0) * 1000)
    finally:
        delete_subvolumes(out)
        shutil.rmtree(out, ignore_errors=True)
    return median(times)


def check_count(server, payload: dict, expected: int) -> None:
    if len(payload.get("Volumes", [])) != expected:
        raise RuntimeError(
            f"{server.label}: List gave {len(payload.get('Volumes', []))} volumes, not {expected}"
        )


OPS = ("Create", "Get", "List", "List+", "Snapshot")


def fmt(value: float, width: int, spec: str) -> str:
    return f"{value:{width}{spec}}" if value == value else f"{'-':>{width}}"


def report(levels: list[int], ours: dict | None, theirs: dict | None) -> list[str]:
    lines = []
    head = f"{'op':9} {'volumes':>7} {'stowkit ms':>11} {'buttervolume ms':>16} {'ratio bv/sk':>12}"
    lines += [head, "-" * len(head)]
    notes = set()
    for op in OPS:
        for level in levels:
            a = ours[level][op] if ours else float("nan")
            b = theirs[level][op] if theirs else float("nan")
            ratio = b / a if ours and theirs and a > 0 else float("nan")
            mark = "*" if theirs and theirs[level]["note"] else ""
            if mark:
                notes.add(f"* buttervolume at {level}: {theirs[level]['note']}")
            lines.append(
                f"{op:9} {level:7} {fmt(a, 11, '.2f')} {fmt(b, 15, '.2f')}{mark:1} "
                f"{fmt(ratio, 11, '.1f')}{'x' if ratio == ratio else ' '}"
            )
    top = max(levels) if levels else None
    if top is not None and (ours or theirs):
        a = ours[top].get("List*", float("nan")) if ours else float("nan")
        b = theirs[top].get("List*", float("nan")) if theirs else float("nan")
        if a == a or b == b:
            ratio = b / a if a == a and b == b and a > 0 else float("nan")
            count = (ours or theirs)[top]["List* volumes"]
            lines.append(
                f"{'List*':9} {count:7} {fmt(a, 11, '.2f')} "
                f"{fmt(b, 15, '.2f')}  {fmt(ratio, 11, '.1f')}{'x' if ratio == ratio else ' '}"
            )
            lines.append(
                f"List*: right after removing {top - count} volumes, while btrfs drops them"
            )
    lines += sorted(notes)
    return lines


def declare(res: figures.Results, levels: list[int], busy_removes: int) -> dict[str, str]:
    """Every figure, before anything runs; returns the keys of the targets' figures."""
    top, low = max(levels), min(levels)
    keys = {
        "list": res.declare(f"List at {top} volumes (stowkit)", "ms", TARGET_LIST_MS, "<"),
        "create": res.declare(
            f"Create at {top} / at {low} volumes (stowkit)", "x", TARGET_CREATE_RATIO, "<="
        ),
        "snapshot": res.declare(
            f"Snapshot at {top} volumes: stowkit / raw snapshot ioctl",
            "x",
            TARGET_SNAPSHOT_RATIO,
            "<=",
        ),
        "list+": res.declare(f"List right after a Create at {top} volumes (stowkit)", "ms"),
    }
    for op in OPS:
        keys[op] = res.declare(f"{op} at {top} volumes: buttervolume / stowkit")
    if busy_removes:
        gone = min(busy_removes, top)
        keys["List*"] = res.declare(f"List* after {gone} removes at {top}: buttervolume / stowkit")
    return keys


def ratios(res, keys, levels, ours, theirs) -> None:
    top, low = max(levels), min(levels)
    if ours:
        res.set(keys["list"], ours[top]["List"])
        res.set(keys["list+"], ours[top]["List+"])
        res.ratio(keys["create"], ours[top]["Create"], ours[low]["Create"])
        res.ratio(keys["snapshot"], ours[top]["Snapshot"], ours[top].get("raw snapshot"))
    for op in (*OPS, "List*"):
        if op in keys:
            a = ours[top].get(op) if ours else None
            b = theirs[top].get(op) if theirs else None
            res.ratio(keys[op], b, a, f"{'buttervolume' if ours else 'stowkit'} not measured")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--btrfs", help="A directory on btrfs (default: the harness's).")
    parser.add_argument("--levels", default="10,100,1000", help="Volume counts to measure at.")
    parser.add_argument("--only", choices=("stowkit", "buttervolume"))
    parser.add_argument(
        "--bv-max-api", type=int, default=100, help="Grow buttervolume by its API up to this."
    )
    parser.add_argument("--bv-venv", default=str(REPO / ".stack" / "venvs" / "buttervolume"))
    parser.add_argument(
        "--samples", type=int, default=10, help="Timed requests of each kind per level (median)."
    )
    parser.add_argument(
        "--busy-removes",
        type=int,
        default=100,
        help="Volumes removed before timing List* at the largest level (0: skip).",
    )
    parser.add_argument("--json", help="Also write the figures to this file.")
    figures.add_arguments(parser, "btrfs_plugin")
    args = parser.parse_args()
    levels = sorted(int(x) for x in args.levels.split(","))
    res = figures.Results("btrfs_plugin")
    keys = declare(res, levels, args.busy_removes)
    ours = theirs = None
    base = None
    with res.part("btrfs", list(res.figures)):
        if os.geteuid() != 0:
            raise figures.NotRun("needs root (btrfs subvolumes)")
        base = pathlib.Path(args.btrfs or default_btrfs())
        if importlib.util.find_spec("btrfsutil") is None:  # fail here, not midway
            raise figures.NotRun(
                f"btrfsutil is not importable by {sys.executable} (stowkit's btrfs extra)"
            )
    if args.only:
        other = "buttervolume" if args.only == "stowkit" else "stowkit"
        for op in (*OPS, "List*"):
            if op in keys:
                res.skip(keys[op], f"--only {args.only}")
        if other == "stowkit":
            for key in ("list", "list+", "create", "snapshot"):
                res.skip(keys[key], f"--only {args.only}")
    scratch = pathlib.Path(tempfile.mkdtemp(prefix="stowkit-bench-"))
    try:
        if base is not None and args.only in (None, "stowkit"):
            with res.part("stowkit plugin", list(res.figures)):
                settle(base)
                server = Stowkit(base, scratch)
                try:
                    ours = run_levels(server, levels, None, args.samples, args.busy_removes)
                finally:
                    server.close()
        if base is not None and args.only in (None, "buttervolume"):
            ops = [keys[op] for op in (*OPS, "List*") if op in keys]
            with res.part("buttervolume 3.13", ops):
                settle(base)
                server = Buttervolume(base, scratch, pathlib.Path(args.bv_venv))
                try:
                    theirs = run_levels(
                        server, levels, args.bv_max_api, args.samples, args.busy_removes
                    )
                finally:
                    server.close()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print("\n".join(report(levels, ours, theirs)))
    ratios(res, keys, levels, ours, theirs)
    if args.json:
        pathlib.Path(args.json).write_text(
            json.dumps({"levels": levels, "stowkit": ours, "buttervolume": theirs}, indent=1)
        )
    return res.finish(args)


if __name__ == "__main__":
    sys.exit(main())

"""Replication speed: stowkit's send against the raw pipeline and buttervolume 3.13.

    .venv/bin/python bench/replication.py [--size-mib 1024] [--change 1] [--repeat 3]
                                          [--skip-peers] [--bv-venv DIR]
                                          [--results FILE] [--strict]

Between the harness's two btrfs filesystems (host a sends, host b receives)
over the harness's sshd, for two kinds of data (``random``: os.urandom;
``compressible``: text-like lines zstd shrinks about tenfold), each of
``--size-mib`` MiB in one volume: a **full** send of snapshot s1, then an
**incremental** send of s2 (``--change`` percent of the file rewritten in
64 KiB pieces spread over it) on top of s1.  Three senders, in the same run,
in turn (their order rotates each round), each timed from the start to the
end of the send:

* ``raw``: ``btrfs send [-p s1] S | ssh ... btrfs receive DIR``, two processes
  joined by a kernel pipe, with exactly the ssh arguments stowkit uses;
* ``stowkit``: ``BtrfsVolumeDriver.send_snapshot`` in this process, as the
  scheduler's ``replicate:HOST`` calls it (no process start of its own);
  parent discovery, receive and checks over one ssh connection;
* ``buttervolume``: its ``send`` verb (its ``cli.send``, in test mode so
  that the peer directory is TEST_REMOTE_PATH on host b), in a fresh
  interpreter as ``buttervolume send`` runs, through a ``ssh`` on PATH that
  adds the same ssh arguments.  Installed with ``pip install
  buttervolume==3.13`` into ``.stack/venvs/buttervolume`` when missing, as
  bench/btrfs_plugin.py does.

The receiving side is cleaned (subvolumes deleted, ``btrfs subvolume sync``)
after every sender's pair of sends, so each full send lands on an empty
directory and each incremental one on exactly its parent.  Figures: the
median time of each, and ``stowkit / raw`` with the target ``<= 1.1`` for
full and incremental sends of each kind; ``buttervolume / raw`` is context.

The harness's loop filesystems are 4 GiB (sparse), room for the default
1 GiB volumes with their snapshots on the sending side and the received
copies on the other.  Needs root, ``python3 -m tools.stack start btrfs sshd``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pathlib
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

import figures

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
KINDS = ("random", "compressible")
SENDS = ("full", "incremental")
SENDERS = ("raw", "stowkit", "buttervolume")
PIECE = 64 * 1024


def ssh_settings(sshd: dict) -> dict:
    return {
        "ssh_key": sshd["key"],
        "ssh_port": int(sshd["port"]),
        "ssh_user": sshd["user"],
        "ssh_options": [
            "BatchMode=yes",
            "IdentitiesOnly=yes",
            "StrictHostKeyChecking=no",
            "UserKnownHostsFile=/dev/null",
            "GlobalKnownHostsFile=/dev/null",
            "LogLevel=ERROR",
            "ConnectTimeout=10",
        ],
    }


def delete_tree(path: pathlib.Path) -> None:
    """Every subvolume below ``path`` (deepest first), then the directories."""
    import btrfsutil

    if not path.exists():
        return
    for dirpath, dirnames, _ in os.walk(path, topdown=False):
        for d in dirnames:
            sub = os.path.join(dirpath, d)
            if not os.path.islink(sub) and os.lstat(sub).st_ino == 256:
                btrfsutil.set_subvolume_read_only(sub, False)
                btrfsutil.delete_subvolume(sub, recursive=True)
    for dirpath, dirnames, filenames in os.walk(path, topdown=False):
        for f in filenames:
            os.unlink(os.path.join(dirpath, f))
        for d in dirnames:
            os.rmdir(os.path.join(dirpath, d))
    path.rmdir()


def empty_dir(path: pathlib.Path) -> None:
    """Delete the subvolumes in ``path`` and wait for btrfs to free their space."""
    import btrfsutil

    if not path.exists():
        return
    for entry in os.scandir(path):
        if entry.is_dir(follow_symlinks=False) and os.lstat(entry.path).st_ino == 256:
            btrfsutil.set_subvolume_read_only(entry.path, False)
            btrfsutil.delete_subvolume(entry.path, recursive=True)
    subprocess.run(
        ["btrfs", "subvolume", "sync", str(path)], check=True, capture_output=True, timeout=600
    )


def fill(path: pathlib.Path, kind: str, size: int) -> None:
    block = 4 << 20
    text = b"".join(
        f"{i:08d} volume payload line, mostly repeated text, some numbers {i * 7919}\n".encode()
        for i in range(block // 64 + 1)
    )[:block]
    with open(path, "wb") as f:
        left, n = size, 0
        while left:
            count = min(left, block)
            data = os.urandom(count) if kind == "random" else (b"%016d" % n + text[16:])[:count]
            f.write(data)
            left -= count
            n += 1
        f.flush()
        os.fsync(f.fileno())


def change(path: pathlib.Path, kind: str, size: int, percent: float) -> int:
    """Rewrite ``percent`` of the file in PIECE-sized pieces spread evenly; bytes rewritten."""
    pieces = max(1, int(size * percent / 100) // PIECE)
    stride = size // pieces
    with open(path, "r+b") as f:
        for i in range(pieces):
            f.seek(min(i * stride, size - PIECE))
            if kind == "random":
                f.write(os.urandom(PIECE))
            else:
                f.write((f"changed piece {i:08d} " * (PIECE // 24 + 1)).encode()[:PIECE])
        f.flush()
        os.fsync(f.fileno())
    return pieces * PIECE


class Bench:
    def __init__(self, args: argparse.Namespace, res: figures.Results) -> None:
        from stowkit.corelib import config, registry
        from stowkit.plugins.btrfs import transport

        self.args = args
        self.res = res
        btrfs = figures.service("btrfs")
        sshd = figures.service("sshd")
        tag = f"bench-replication-{uuid.uuid4().hex[:6]}"
        self.a = pathlib.Path(btrfs["mounts"][0]) / tag
        self.b = pathlib.Path(btrfs["mounts"][1]) / tag
        self.settings = {"root": str(self.a), "remote_root": str(self.b), **ssh_settings(sshd)}
        self.driver = registry.load("volume", config.load_conf(), "btrfs", **self.settings)
        self.remote = f"{sshd['user']}@{sshd['host']}:{sshd['port']}"
        peer = transport.parse_peer(self.remote, "root", 22)
        self.ssh = self.driver.replication.ssh().argv(peer)  # exactly stowkit's ssh arguments
        self.host = sshd["host"]
        self.port = str(sshd["port"])
        self.scratch = pathlib.Path(tempfile.mkdtemp(prefix="bench-replication-"))
        self.bv_python: str | None = None
        self.times: dict[tuple[str, str, str], list[float]] = {}

    # -- the senders -------------------------------------------------------------------

    # Each sends ``snap`` (on top of ``parent``) to ``dest`` on host b and
    # returns the seconds the send itself took.

    def raw(self, snap: str, parent: str | None, dest: pathlib.Path) -> float:
        dest.mkdir(parents=True, exist_ok=True)
        send_argv = ["btrfs", "send", "-q", *(["-p", parent] if parent else []), snap]
        receive = shlex.join(["btrfs", "receive", "-e", str(dest)])
        with tempfile.TemporaryFile() as err:
            start = time.perf_counter()
            sender = subprocess.Popen(send_argv, stdout=subprocess.PIPE, stderr=err)
            receiver = subprocess.Popen(
                [*self.ssh, receive], stdin=sender.stdout, stdout=subprocess.DEVNULL, stderr=err
            )
            assert sender.stdout is not None
            sender.stdout.close()
            codes = (receiver.wait(timeout=3600), sender.wait(timeout=3600))
            took = time.perf_counter() - start
            if any(codes):
                err.seek(0)
                raise figures.NotRun(f"raw pipeline exited {codes}: {err.read()[-300:]!r}")
        return took

    def stowkit(self, snap: str, parent: str | None, dest: pathlib.Path) -> float:
        start = time.perf_counter()
        result = self.driver.send_snapshot(os.path.basename(snap), self.remote)
        took = time.perf_counter() - start
        expected = os.path.basename(parent) if parent else None
        if result.parent != expected or result.already_there:
            raise figures.NotRun(f"stowkit sent {result} where the parent was {expected}")
        return took

    def setup_buttervolume(self) -> None:
        sys.path.insert(0, str(HERE))
        import btrfs_plugin

        venv = pathlib.Path(self.args.bv_venv)
        btrfs_plugin.ensure_buttervolume(venv)
        self.bv_snaps = self.a / "bv-snapshots"
        self.bv_snaps.mkdir(parents=True)
        self.bv_python = str(venv / "bin" / "python")
        bindir = self.scratch / "bin"
        bindir.mkdir()
        wrapper = bindir / "ssh"
        extra = shlex.join(self.ssh[1:-2])  # -p PORT -i KEY -o ... (theirs -p wins: same port)
        real = figures.need(self.ssh[0])  # its full path: the wrapper must not find itself
        wrapper.write_text(f'#!/bin/sh\nexec {shlex.quote(real)} {extra} "$@"\n')
        wrapper.chmod(0o755)
        socket = self.scratch / "no.sock"
        socket.touch()  # an existing path: its import does not ask docker for its plugin
        self.bv_env = {
            **os.environ,
            "PATH": f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "BUTTERVOLUME_VOLUMES_PATH": f"{self.a}/volumes/",
            "BUTTERVOLUME_SNAPSHOTS_PATH": f"{self.bv_snaps}/",
            "BUTTERVOLUME_SOCKET": str(socket),
            "BUTTERVOLUME_SCHEDULE": str(self.scratch / "schedule.csv"),
            "BUTTERVOLUME_LOGLEVEL": "WARNING",
            "SSH_PORT": self.port,
        }

    def buttervolume(self, snap: str, parent: str | None, dest: pathlib.Path) -> float:
        import btrfsutil

        assert self.bv_python is not None
        dest.mkdir(parents=True, exist_ok=True)
        name = os.path.basename(snap)
        # its snapshot, and its marker of the parent sent to this host (as its
        # own send of the parent leaves it)
        for s in (snap, parent):
            if s and not (self.bv_snaps / os.path.basename(s)).exists():
                btrfsutil.create_snapshot(
                    s, str(self.bv_snaps / os.path.basename(s)), read_only=True
                )
        for marker in self.bv_snaps.glob(f"*@*@{self.host}"):
            btrfsutil.delete_subvolume(str(marker))
        if parent:
            p = self.bv_snaps / os.path.basename(parent)
            btrfsutil.create_snapshot(str(p), f"{p}@{self.host}", read_only=True)
        code = (
            "import sys, types; from buttervolume import cli;"
            " cli.send(types.SimpleNamespace(snapshot=[sys.argv[1]], host=[sys.argv[2]]),"
            " test=True)"
        )
        env = dict(self.bv_env, BUTTERVOLUME_TEST_REMOTE_PATH=f"{dest}/")
        start = time.perf_counter()
        proc = subprocess.run(
            [self.bv_python, "-c", code, name, self.host],
            env=env, cwd=self.scratch, capture_output=True, text=True, timeout=3600,
        )  # fmt: skip
        took = time.perf_counter() - start
        if proc.returncode != 0 or not (dest / name).exists():
            raise figures.NotRun(
                f"buttervolume send exited {proc.returncode}: {(proc.stdout + proc.stderr)[-300:]}"
            )
        return took

    # -- the run -----------------------------------------------------------------------

    def prepare(self, kind: str) -> tuple[str, str]:
        """The volume of ``kind``, its snapshots s1 and s2 (paths)."""
        size = self.args.size_mib << 20
        name = f"bench-{kind}"
        self.driver.create_volume(name)
        data = pathlib.Path(self.driver.volume_path(name)) / "data"
        fill(data, kind, size)
        s1 = self.driver.create_snapshot(name)
        change(data, kind, size, self.args.change)
        s2 = self.driver.create_snapshot(name)
        subprocess.run(["btrfs", "filesystem", "sync", str(self.a)], check=True, timeout=600)
        # warm the page cache the same way for every sender
        for s in (s1.path, s2.path):
            subprocess.run(
                ["btrfs", "send", "-q", s], stdout=subprocess.DEVNULL, check=True, timeout=3600
            )
        return s1.path, s2.path

    def drop(self, kind: str, s1: str, s2: str) -> None:
        import btrfsutil

        for s in (s2, s1):
            with contextlib.suppress(Exception):
                self.driver.delete_snapshot(os.path.basename(s))
        with contextlib.suppress(Exception):
            self.driver.delete_volume(f"bench-{kind}", force=True)
        if self.bv_python and self.bv_snaps.exists():
            for sub in self.bv_snaps.iterdir():
                btrfsutil.delete_subvolume(str(sub))
        subprocess.run(
            ["btrfs", "subvolume", "sync", str(self.a)],
            check=True,
            capture_output=True,
            timeout=600,
        )

    def measure(self, kind: str, senders: list[str]) -> None:
        s1, s2 = self.prepare(kind)
        try:
            for round_ in range(self.args.repeat):
                order = senders[round_ % len(senders) :] + senders[: round_ % len(senders)]
                for sender in order:
                    dest = self.b / ("received" if sender == "stowkit" else sender)
                    run = getattr(self, sender)
                    for send, (snap, parent) in zip(SENDS, ((s1, None), (s2, s1)), strict=True):
                        took = run(snap, parent, dest)
                        self.times.setdefault((kind, send, sender), []).append(took)
                        print(
                            f"  {kind:12} {send:11} {sender:12} round {round_ + 1}: {took:.3f} s",
                            file=sys.stderr,
                            flush=True,
                        )
                    empty_dir(dest)
        finally:
            self.drop(kind, s1, s2)

    def close(self) -> None:
        delete_tree(self.a)
        delete_tree(self.b)
        with contextlib.suppress(OSError):
            for f in sorted(self.scratch.rglob("*"), reverse=True):
                f.rmdir() if f.is_dir() else f.unlink()
            self.scratch.rmdir()


def median(values: list[float] | None) -> float | None:
    return statistics.median(values) if values else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="data per volume (MiB)")
    parser.add_argument("--change", type=float, default=1.0, help="percent rewritten for s2")
    parser.add_argument("--repeat", type=int, default=3, help="rounds (medians are reported)")
    parser.add_argument("--skip-peers", action="store_true", help="leave buttervolume out")
    parser.add_argument("--bv-venv", default=str(REPO / ".stack" / "venvs" / "buttervolume"))
    figures.add_arguments(parser, "replication")
    args = parser.parse_args()

    res = figures.Results("replication")
    size = f"{args.size_mib} MiB"
    keys: dict[tuple[str, str, str], str] = {}
    for kind in KINDS:
        for send in SENDS:
            what = f"{send} {size} {kind}" if send == "full" else f"{args.change:g}% incr. {kind}"
            for sender in SENDERS:
                keys[(kind, send, sender)] = res.declare(f"{what}: {sender} s", unit="s")
            keys[(kind, send, "ratio")] = res.declare(
                f"{what}: stowkit / raw", target=1.1, direction="<="
            )
            keys[(kind, send, "bv ratio")] = res.declare(f"{what}: buttervolume / raw")
    everything = list(keys.values())
    bench = None
    with res.part("setup", everything):
        bench = Bench(args, res)
    if bench is None:
        return res.finish(args)
    senders = ["raw", "stowkit"]
    try:
        if args.skip_peers:
            for kind in KINDS:
                for send in SENDS:
                    for k in ("buttervolume", "bv ratio"):
                        res.skip(keys[(kind, send, k)], "--skip-peers")
        else:
            bv_keys = [keys[k] for k in keys if k[2] in ("buttervolume", "bv ratio")]
            with res.part("buttervolume 3.13", bv_keys):
                bench.setup_buttervolume()
                senders.append("buttervolume")
        for kind in KINDS:
            with res.part(f"{kind} data", [keys[k] for k in keys if k[0] == kind]):
                bench.measure(kind, senders)
    finally:
        bench.close()
    for kind in KINDS:
        for send in SENDS:
            med = {s: median(bench.times.get((kind, send, s))) for s in SENDERS}
            for sender in SENDERS:
                res.set(keys[(kind, send, sender)], med[sender], "not measured")
            res.ratio(keys[(kind, send, "ratio")], med["stowkit"], med["raw"], "not measured")
            if not args.skip_peers:
                res.ratio(
                    keys[(kind, send, "bv ratio")], med["buttervolume"], med["raw"], "not measured"
                )
    return res.finish(args)


if __name__ == "__main__":
    sys.exit(main())

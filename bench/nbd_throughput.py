"""NBD on Swift: stowkit's server beside raw Swift, nbdkit's S3 plugin and swiftnbd 0.11.

    python3 bench/nbd_throughput.py [--size-mib 256] [--object-size 4M] [--repeat 3]
        [--peer-size-mib 32] [--skip-peers] [--boto3-path SITE_PACKAGES] [--json FILE]
        [--results FILE] [--strict]

Swift credentials come from the harness (service "swift"; start it with
``python3 -m tools.stack start swift``).  The clients are nbdcopy (Debian
libnbd-bin) and qemu-img (qemu-utils); stowkit runs from the interpreter
running this file (``python -m stowkit.cli.app``).  Every NBD server is
measured the same way, through the same Swift:

* write: ``nbdcopy --flush`` of random bytes into a fresh device; the time
  runs until the flush is answered, i.e. until Swift stored everything;
* read: ``nbdcopy`` of the whole device to a file after a server restart
  (a cold cache), checked byte for byte against what was written;
* 4K reads: ``qemu-img bench`` of 4 KiB reads, 16 in flight, after another
  restart; qemu-img bench has no random mode, so each read strides one
  object plus 4 KiB past the previous one and lands in a new object.

Baselines, with python-swiftclient and the same bytes:

* raw, 1 object: one PUT and one GET of the whole size as a single object
  (Swift's streaming speed: the target's yardstick);
* raw, N objects: the same bytes as objects of the device's object size,
  PUT and GET from 8 threads (what any client of that layout can reach),
  and 4 KiB ranged GETs at the same strided offsets from 16 threads: the
  most small reads per second this Swift serves, which bounds every server.

stowkit runs twice: as configured by default (``send_etag = true``: each
object's MD5 is sent so Swift refuses a corrupted body) and with
``send_etag = false``; the MD5 costs CPU that this 2-core machine otherwise
gives to Swift.  Peers, at ``--peer-size-mib`` (they are slow):

* nbdkit's S3 plugin (Debian nbdkit and nbdkit-plugin-python, + boto3)
  through Swift's s3api, 64 KiB objects (its maximum).  boto3 comes from
  ``--boto3-path`` or a venv of the system Python made once under
  .stack/venvs/nbdkit-s3;
* swiftnbd 0.11 (64 KiB objects, its default) when a Python 3.6 is present
  (pyenv's); its venv is made once under .stack/venvs/swiftnbd36.

stowkit and the raw baselines are measured ``--repeat`` times, interleaved,
and the median is shown (with the range); peers once.  Figures
(bench/figures.py), each with its target:

* stowkit over the raw N-object layout (what any client of that layout
  reaches): write >= 0.8x, read >= 0.9x, 4K reads >= 0.9x;
* stowkit over each peer: write and read >= 5x; 4K reads >= 5x nbdkit's S3
  plugin and >= 10x swiftnbd;
* the stowkit server's peak RSS (``VmHWM`` of its process, read from /proc
  after each copy, the larger of the copy in and the copy out) <= cache
  size + the in-flight bound (``max_inflight_bytes``, 64 MiB) + 100 MiB;
* without a target, for context: stowkit over raw Swift with one object,
  and stowkit with ``send_etag = false`` over the N-object layout.

A server that does not start, a missing client or peer, a figure not
measured: the figure is MISSING, the reason printed, and the exit status 1
(a figure that misses its target is FAIL, exit 0 unless ``--strict``).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import pathlib
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import figures

from stowkit.cli.common import parse_size  # the same sizes the CLI takes

REPO = pathlib.Path(__file__).resolve().parents[1]

VENVS = REPO / ".stack" / "venvs"
MiB = 1 << 20
PEER_OBJECT_SIZE = 64 << 10
RAW_THREADS = 8
RAW_4K_READS = 400


def timed(cmd: list[str], timeout: int = 1800) -> float:
    start = time.perf_counter()
    subprocess.run(["timeout", str(timeout), *cmd], check=True, capture_output=True)
    return time.perf_counter() - start


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, log: pathlib.Path, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip()[-300:] if log.exists() else ""
            raise figures.NotRun(f"server exited with {proc.returncode}: {tail}")
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise figures.NotRun(f"server did not listen on port {port} within {seconds:.0f} s")


# -- raw python-swiftclient ------------------------------------------------------------


def swift_conn(rec: dict):
    from swiftclient import client

    return client.Connection(rec["auth_url"], rec["user"], rec["key"])


def raw_single(rec: dict, data: bytes) -> tuple[float, float]:
    conn = swift_conn(rec)
    container = f"bench-raw-{secrets.token_hex(3)}"
    conn.put_container(container)
    try:
        start = time.perf_counter()
        conn.put_object(container, "blob", data)
        put = time.perf_counter() - start
        start = time.perf_counter()
        _, body = conn.get_object(container, "blob")
        get = time.perf_counter() - start
        if body != data:
            raise RuntimeError("raw swift: read back differs")
    finally:
        conn.delete_object(container, "blob")
        conn.delete_container(container)
        conn.close()
    return put, get


def raw_objects(rec: dict, data: bytes, object_size: int) -> tuple[float, float, float]:
    """(PUT seconds, GET seconds, 4 KiB ranged GETs per second, 16 threads)."""
    local = threading.local()
    container = f"bench-rawn-{secrets.token_hex(3)}"

    def conn():
        if not hasattr(local, "conn"):
            local.conn = swift_conn(rec)
        return local.conn

    count = len(data) // object_size
    view = memoryview(data)

    def put(i: int) -> None:
        conn().put_object(container, f"o{i:08d}", view[i * object_size : (i + 1) * object_size]
                          .tobytes())  # fmt: skip

    def get(i: int) -> bytes:
        return conn().get_object(container, f"o{i:08d}")[1]

    def get_4k(i: int) -> None:
        # The strided offsets qemu-img bench uses against the NBD servers.
        offset = (i * (object_size + 4096)) % len(data)
        index, start = divmod(offset, object_size)
        headers = {"Range": f"bytes={start}-{start + 4095}"}
        conn().get_object(container, f"o{index:08d}", headers=headers)

    conn().put_container(container)
    with concurrent.futures.ThreadPoolExecutor(RAW_THREADS) as pool:
        try:
            list(pool.map(lambda _: conn().head_account(), range(RAW_THREADS)))  # connect first
            start = time.perf_counter()
            list(pool.map(put, range(count)))
            put_s = time.perf_counter() - start
            start = time.perf_counter()
            parts = list(pool.map(get, range(count)))
            get_s = time.perf_counter() - start
            if b"".join(parts) != data:
                raise RuntimeError("raw swift objects: read back differs")
            with concurrent.futures.ThreadPoolExecutor(16) as small:
                list(small.map(lambda _: conn().head_account(), range(16)))
                start = time.perf_counter()
                list(small.map(get_4k, range(RAW_4K_READS)))
                iops = RAW_4K_READS / (time.perf_counter() - start)
        finally:
            list(pool.map(lambda i: conn().delete_object(container, f"o{i:08d}"), range(count)))
            conn().delete_container(container)
    return put_s, get_s, iops


# -- NBD servers ---------------------------------------------------------------------


class Server:
    """One NBD server under test: prepare a device, start, stop, clean up."""

    object_size = PEER_OBJECT_SIZE

    def __init__(self, workdir: pathlib.Path, size: int, rec: dict) -> None:
        self.workdir = workdir
        self.size = size
        self.rec = rec  # the harness's Swift record
        self.proc: subprocess.Popen | None = None
        self.log = workdir / f"{type(self).__name__}.log"

    def prepare(self) -> None:
        pass

    def command(self, port: int) -> tuple[list[str], dict | None]:
        raise NotImplementedError

    def uri(self, port: int) -> str:
        return f"nbd://127.0.0.1:{port}"

    def start(self) -> str:
        port = free_port()
        cmd, env = self.command(port)
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=log)
        wait_port(port, self.proc, self.log)
        return self.uri(port)

    def peak_rss(self) -> int | None:
        """The server process's peak resident size so far (VmHWM), in bytes."""
        if self.proc is None:
            return None
        try:
            with open(f"/proc/{self.proc.pid}/status") as status:
                for line in status:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
        return None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(600)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def cleanup(self) -> None:
        pass


class Stowkit(Server):
    def __init__(self, workdir, size, rec, object_size, cache, send_etag):
        super().__init__(workdir, size, rec)
        self.object_size = object_size
        self.cache = cache
        self.name = f"nbd{secrets.token_hex(3)}"
        self.conf = workdir / f"stowkit-{self.name}.conf"
        self.conf.write_text(
            "[blockstore]\nbackend = swift\n[blockstore_swift]\n"
            f"auth_url = {rec['auth_url']}\nuser = {rec['user']}\nkey = {rec['key']}\n"
            f"container_prefix = bench-\nsend_etag = {str(send_etag).lower()}\n"
        )

    def cli(self, *args: str) -> None:
        subprocess.run([*figures.stowkit_command(), "--config-file", str(self.conf), *args],
                       check=True, capture_output=True, timeout=600)  # fmt: skip

    def prepare(self) -> None:
        self.cli("blockstore", "setup", self.name, "--size", str(self.size),
                 "--object-size", str(self.object_size))  # fmt: skip

    def command(self, port: int) -> tuple[list[str], dict | None]:
        return [*figures.stowkit_command(), "--config-file", str(self.conf), "blockstore",
                "serve", "--port", str(port), "--cache-size", self.cache,
                self.name], None  # fmt: skip

    def uri(self, port: int) -> str:
        return f"nbd://127.0.0.1:{port}/{self.name}"

    def cleanup(self) -> None:
        self.cli("blockstore", "delete", self.name, "--force")


class NbdkitS3(Server):
    def __init__(self, workdir, size, rec, boto3_path):
        super().__init__(workdir, size, rec)
        self.boto3_path = boto3_path
        self.bucket = f"bench-s3-{secrets.token_hex(3)}"
        self.endpoint = rec.get("s3_endpoint", rec["proxy_url"])

    def check(self) -> None:
        """nbdkit's S3 plugin (Python, Debian nbdkit-plugin-python) loads, before any bucket."""
        cmd, env = self.command(0)
        try:
            subprocess.run(["timeout", "60", cmd[0], "S3", "--version"], env=env, check=True,
                           capture_output=True)  # fmt: skip
        except subprocess.CalledProcessError as err:
            why = figures.describe(err)
            raise figures.NotRun(
                f"nbdkit's S3 plugin does not load (Debian package nbdkit-plugin-python): {why}"
            ) from None

    def _s3(self):
        sys.path.insert(0, self.boto3_path)
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=self.rec["user"],
                            aws_secret_access_key=self.rec["key"])  # fmt: skip

    def prepare(self) -> None:
        self._s3().create_bucket(Bucket=self.bucket)

    def command(self, port: int) -> tuple[list[str], dict | None]:
        # nbdkit embeds the system Python; boto3 comes from the venv.  PYTHONHOME
        # pins that interpreter to /usr: run from a pyenv shell it found pyenv's
        # standard library first and could not load that one's _ssl.
        env = dict(os.environ, AWS_DEFAULT_REGION="us-east-1", PYTHONPATH=self.boto3_path,
                   PYTHONHOME="/usr")  # fmt: skip
        return ["nbdkit", "-f", "-i", "127.0.0.1", "-p", str(port), "S3",
                f"access-key={self.rec['user']}", f"secret-key={self.rec['key']}",
                f"endpoint-url={self.endpoint}", f"bucket={self.bucket}", "key=disk",
                f"size={self.size}", f"object-size={PEER_OBJECT_SIZE}"], env  # fmt: skip

    def cleanup(self) -> None:
        s3 = self._s3()
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
            for obj in page.get("Contents", []):
                s3.delete_object(Bucket=self.bucket, Key=obj["Key"])
        s3.delete_bucket(Bucket=self.bucket)


class Swiftnbd(Server):
    def __init__(self, workdir, size, rec, venv):
        super().__init__(workdir, size, rec)
        self.venv = venv
        self.container = f"bench-snbd-{secrets.token_hex(3)}"
        self.secrets = workdir / "swiftnbd-secrets.conf"
        self.secrets.write_text(
            f"[{self.container}]\nusername = {rec['user']}\npassword = {rec['key']}\n"
        )
        self.secrets.chmod(0o600)

    def prepare(self) -> None:
        objects = self.size // PEER_OBJECT_SIZE
        subprocess.run([str(self.venv / "bin" / "swiftnbd-ctl"), "--secrets", str(self.secrets),
                        "-a", self.rec["auth_url"], "setup", self.container, str(objects)],
                       check=True, capture_output=True, timeout=120)  # fmt: skip
        # Its object-size header loses its underscore on the way (FACTS.md).
        conn = swift_conn(self.rec)
        conn.post_container(self.container, {"X-Container-Meta-Swiftnbd-Object-Size":
                                             str(PEER_OBJECT_SIZE)})  # fmt: skip
        conn.close()

    def command(self, port: int) -> tuple[list[str], dict | None]:
        return [str(self.venv / "bin" / "swiftnbd-server"), "--secrets", str(self.secrets),
                "-a", self.rec["auth_url"], "-b", "127.0.0.1", "-p", str(port), "-f",
                "--pid-file", str(self.workdir / "swiftnbd.pid")], None  # fmt: skip

    def uri(self, port: int) -> str:
        return f"nbd://127.0.0.1:{port}/{self.container}"

    def cleanup(self) -> None:
        conn = swift_conn(self.rec)
        _, objs = conn.get_container(self.container, full_listing=True)
        for obj in objs:
            conn.delete_object(self.container, obj["name"])
        conn.delete_container(self.container)
        conn.close()


def bench_server(
    server: Server, src: pathlib.Path, dst: pathlib.Path, count: int, no_4k: str = ""
) -> tuple[float, float, float | None, str, int | None]:
    """(write seconds, read seconds, 4K reads per second or None, why None, peak RSS).

    ``no_4k`` says why the 4K reads cannot be measured (no qemu-img), if so.
    The peak RSS is the server's VmHWM over the copy in and the copy out.
    """
    server.prepare()
    try:
        uri = server.start()
        write = timed(["nbdcopy", "--flush", str(src), uri])
        peaks = [server.peak_rss()]
        server.stop()
        uri = server.start()  # cold cache
        read = timed(["nbdcopy", uri, str(dst)])
        peaks.append(server.peak_rss())
        server.stop()
        if not filecmp_equal(src, dst):
            raise RuntimeError(f"{type(server).__name__}: read back differs")
        iops, why = None, no_4k
        if not no_4k:
            uri = server.start()
            step = str(server.object_size + 4096)
            try:
                seconds = timed(["qemu-img", "bench", "-f", "raw", "-t", "none", "-c", str(count),
                                 "-d", "16", "-s", "4k", "-S", step, uri],
                                timeout=600)  # fmt: skip
                iops, why = count / seconds, ""
            except subprocess.CalledProcessError as err:
                why = figures.describe(err)
            server.stop()
    finally:
        server.stop()
        try:
            server.cleanup()
        except Exception as err:
            print(f"warning: cleaning up {type(server).__name__}: {figures.describe(err)}",
                  file=sys.stderr)  # fmt: skip
    known = [peak for peak in peaks if peak is not None]
    return write, read, iops, why, max(known) if known else None


def filecmp_equal(a: pathlib.Path, b: pathlib.Path) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(MiB), fb.read(MiB)
            if x != y:
                return False
            if not x:
                return True


# -- peers' environments ---------------------------------------------------------------


def boto3_site_packages() -> str:
    """A venv of the system Python (the one nbdkit embeds) holding boto3."""
    venv = VENVS / "nbdkit-s3"
    if not (venv / "bin" / "python").exists():
        subprocess.run(["/usr/bin/python3", "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "boto3"], check=True)
    return str(next((venv / "lib").glob("python3*/site-packages")))


def swiftnbd_venv() -> pathlib.Path:
    """swiftnbd 0.11 in a Python 3.6 venv (its server runs on nothing newer)."""
    venv = VENVS / "swiftnbd36"
    if (venv / "bin" / "swiftnbd-server").exists():
        return venv
    root = pathlib.Path(os.environ.get("PYENV_ROOT", pathlib.Path.home() / ".pyenv"))
    pythons = sorted(root.glob("versions/3.6*/bin/python3.6")) or (
        [pathlib.Path(p)] if (p := shutil.which("python3.6")) else []
    )
    if not pythons:
        raise figures.NotRun(
            "no Python 3.6 found (its server runs on nothing newer): pyenv install 3.6"
        )
    subprocess.run([str(pythons[-1]), "-m", "venv", str(venv)], check=True)
    # The pins FACTS.md found: the last releases that still run on 3.6.
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "swiftnbd==0.11",
                    "python-swiftclient<4", "requests<2.28", "urllib3<1.27", "idna<3",
                    "certifi<2023", "charset-normalizer<2.1", "six<1.17"], check=True)  # fmt: skip
    return venv


# -- report ----------------------------------------------------------------------------


class Row:
    def __init__(self, name: str, mib: float) -> None:
        self.name = name
        self.mib = mib
        self.write: list[float] = []
        self.read: list[float] = []
        self.iops: list[float] = []
        self.rss: list[float] = []  # the server's peak RSS over each copy, MiB
        self.error = ""  # why nothing was measured
        self.iops_error = ""  # why the 4K reads were not

    def add(self, write_s: float, read_s: float, iops: float | None = None, why: str = "",
            rss: int | None = None) -> None:  # fmt: skip
        self.write.append(self.mib / write_s)
        self.read.append(self.mib / read_s)
        if rss is not None:
            self.rss.append(rss / MiB)
        if iops is not None:
            self.iops.append(iops)
        elif why:
            self.iops_error = why

    def attempt(self, res: figures.Results, measure) -> None:
        """Add one run of ``measure()``; a failure is the row's error (later runs skipped)."""
        if self.error:
            return
        try:
            self.add(*measure())
        except Exception as err:
            self.error = figures.describe(err)
            res.error(self.name, self.error)

    def why_not(self, what: str) -> str:
        if self.error:
            return f"{self.name}: {self.error}"
        if what == "iops" and self.iops_error:
            return f"{self.name}: 4K reads: {self.iops_error}"
        return f"{self.name}: not measured"

    @staticmethod
    def cell(values: list[float], width: int, digits: int = 1) -> str:
        if not values:
            return f"{'-':>{width}}"
        med = statistics.median(values)
        if len(values) == 1:
            return f"{med:{width}.{digits}f}"
        spread = f" ({min(values):.0f}-{max(values):.0f})"
        return f"{med:.{digits}f}{spread}".rjust(width)

    def median(self, what: str) -> float | None:
        values = getattr(self, what)
        return statistics.median(values) if values else None

    def as_dict(self) -> dict:
        return {"name": self.name, "mib": self.mib, "write_mib_s": self.write,
                "read_mib_s": self.read, "iops_4k": self.iops, "error": self.error,
                "iops_error": self.iops_error, "peak_rss_mib": self.rss}  # fmt: skip


#: figure key -> its label in the table
WHAT = {"write": "write", "read": "read", "iops": "4K reads"}
PEERS = ("nbdkit S3 plugin (64K objects)", "swiftnbd 0.11 (64K objects)")
#: stowkit over the raw layout it uses (4 MiB objects from 8 threads; 4K: ranged
#: GETs from 16 threads): the most any client of that layout gets from this Swift.
RAW_TARGETS = {"write": 0.8, "read": 0.9, "iops": 0.9}
#: stowkit over each peer (write, read, 4K reads).
PEER_TARGETS = {PEERS[0]: {"write": 5.0, "read": 5.0, "iops": 5.0},
                PEERS[1]: {"write": 5.0, "read": 5.0, "iops": 10.0}}  # fmt: skip
#: The in-flight bound: [blockstore] max_inflight_bytes, as the bench runs the server.
MAX_INFLIGHT = 64 * MiB
RSS_SLACK = 100 * MiB


def rss_figure(ours: Row) -> str:
    return f"peak RSS of {ours.name} server, MiB"


def rss_target(cache: int) -> float:
    """Cache size + in-flight bound + 100 MiB (the interpreter, swiftclient, uploads)."""
    return (cache + MAX_INFLIGHT + RSS_SLACK) / MiB


def declare(res: figures.Results, ours: Row, ours_noetag: Row, raw1: Row, rawn: Row,
            cache: int) -> None:  # fmt: skip
    """Every figure, before anything runs: a part that fails leaves its figures MISSING."""
    for what, label in WHAT.items():
        res.declare(f"{label}: {ours.name} / {rawn.name}", "x", RAW_TARGETS[what], ">=")
    for peer in PEERS:
        for what, label in WHAT.items():
            res.declare(f"{label}: {ours.name} / {peer}", "x", PEER_TARGETS[peer][what], ">=")
    res.declare(rss_figure(ours), "MiB", rss_target(cache), "<=")
    for label in list(WHAT.values())[:2]:
        res.declare(f"{label}: {ours.name} / {raw1.name}")
    for label in list(WHAT.values())[:2]:
        res.declare(f"{label}: {ours_noetag.name} / {rawn.name}")


def ratios(res: figures.Results, ours: Row, ours_noetag: Row, raw1: Row, rawn: Row,
           peers: dict[str, Row]) -> None:  # fmt: skip
    def put(mine: Row, theirs: Row, what: str, label: str) -> None:
        figure = f"{label}: {mine.name} / {theirs.name}"
        a, b = mine.median(what), theirs.median(what)
        why = mine.why_not(what) if a is None else theirs.why_not(what)
        res.ratio(figure, a, b, why)

    for what, label in list(WHAT.items())[:2]:
        put(ours, raw1, what, label)
        put(ours_noetag, rawn, what, label)
    for what, label in WHAT.items():
        put(ours, rawn, what, label)
        for peer in peers.values():
            put(ours, peer, what, label)
    peak = max(ours.rss) if ours.rss else None
    res.set(rss_figure(ours), peak, ours.error or "the server's /proc status was not readable")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--object-size", default="4M", help="stowkit device object size")
    parser.add_argument("--cache-size", default="64M")
    parser.add_argument("--repeat", type=int, default=3, help="runs of stowkit and raw Swift")
    parser.add_argument("--bench-count", type=int, default=2000, help="qemu-img bench requests")
    parser.add_argument("--peer-size-mib", type=int, default=32,
                        help="bytes copied through the peers (they are slow)")  # fmt: skip
    parser.add_argument("--skip-peers", action="store_true")
    parser.add_argument("--boto3-path", help="site-packages with boto3 for nbdkit's Python")
    parser.add_argument("--json", help="also write the rows (MiB/s, reads/s) to this file")
    figures.add_arguments(parser, "nbd_throughput")
    args = parser.parse_args()
    object_size = parse_size(args.object_size)
    size = args.size_mib * MiB
    osize_text = args.object_size.upper()
    raw1 = Row("raw swiftclient, 1 object", args.size_mib)
    rawn = Row(f"raw swiftclient, {osize_text} x{RAW_THREADS} thr", args.size_mib)
    ours = Row(f"stowkit ({osize_text} objects)", args.size_mib)
    ours_noetag = Row(f"stowkit ({osize_text}, send_etag off)", args.size_mib)
    peers = {name: Row(name, args.peer_size_mib) for name in PEERS}
    res = figures.Results("nbd_throughput")
    declare(res, ours, ours_noetag, raw1, rawn, parse_size(args.cache_size))
    servers = [ours, ours_noetag, *peers.values()]
    rec = None
    try:
        rec = figures.service("swift")
    except figures.NotRun as err:
        res.error("swift", str(err))
        for row in (raw1, rawn, *servers):
            row.error = str(err)
    nbd_ok = True
    for command in ("timeout", "nbdcopy"):
        try:
            figures.need(command)
        except figures.NotRun as err:
            res.error("NBD client", str(err))
            nbd_ok = False
            for row in servers:
                row.error = row.error or str(err)
    no_4k = ""
    try:
        figures.need("qemu-img")
    except figures.NotRun as err:
        no_4k = str(err)
        res.error("4K reads", no_4k)
    if args.skip_peers:
        for peer in PEERS:
            for label in WHAT.values():
                res.skip(f"{label}: {ours.name} / {peer}", "--skip-peers")
    if rec is None:
        return finish(res, args, rec, raw1, rawn, ours, ours_noetag, peers)
    with tempfile.TemporaryDirectory(prefix="nbd-bench-") as tmp:
        work = pathlib.Path(tmp)
        src, dst = work / "src.raw", work / "dst.raw"
        data = os.urandom(size)
        src.write_bytes(data)
        for run in range(args.repeat):
            print(f"run {run + 1}/{args.repeat}", file=sys.stderr, flush=True)
            raw1.attempt(res, lambda: raw_single(rec, data))
            rawn.attempt(res, lambda: raw_objects(rec, data, object_size))
            if not nbd_ok:
                continue
            for row, etag in ((ours, True), (ours_noetag, False)):
                row.attempt(res, lambda etag=etag: bench_server(
                    Stowkit(work, size, rec, object_size, args.cache_size, etag),
                    src, dst, args.bench_count, no_4k))  # fmt: skip
        data = b""  # 256 MiB less while the peers run
        if not args.skip_peers and nbd_ok:
            peer_size = args.peer_size_mib * MiB
            psrc, pdst = work / "peer-src.raw", work / "peer-dst.raw"
            with open(src, "rb") as f:
                psrc.write_bytes(f.read(peer_size))
            count = max(args.bench_count // 10, 50)

            def nbdkit_s3() -> NbdkitS3:
                figures.need("nbdkit")  # before boto3's venv is made for it
                server = NbdkitS3(work, peer_size, rec, args.boto3_path or boto3_site_packages())
                server.check()
                return server

            def swiftnbd() -> Swiftnbd:
                return Swiftnbd(work, peer_size, rec, swiftnbd_venv())

            makers = {PEERS[0]: nbdkit_s3, PEERS[1]: swiftnbd}
            for name, make in makers.items():
                print(f"peer: {name}", file=sys.stderr, flush=True)
                peers[name].attempt(res, lambda make=make: bench_server(
                    make(), psrc, pdst, count, no_4k))  # fmt: skip
    return finish(res, args, rec, raw1, rawn, ours, ours_noetag, peers)


def finish(res, args, rec, raw1, rawn, ours, ours_noetag, peers) -> int:
    where = rec["auth_url"] if rec else "(not running)"
    print(f"\n{args.size_mib} MiB ({args.peer_size_mib} MiB for peers), Swift at "
          f"{where}, median of {args.repeat} (range)")  # fmt: skip
    print(f"{'':38} {'write MiB/s':>16} {'read MiB/s':>16} {'4K reads/s':>14} "
          f"{'peak RSS MiB':>13}")  # fmt: skip
    rows = [raw1, rawn, ours, ours_noetag, *([] if args.skip_peers else peers.values())]
    for row in rows:
        if row.error:
            print(f"{row.name:38} failed: {row.error}")
            continue
        print(f"{row.name:38} {Row.cell(row.write, 16)} {Row.cell(row.read, 16)} "
              f"{Row.cell(row.iops, 14, 0)} {Row.cell(row.rss, 13, 0)}")  # fmt: skip
    ratios(res, ours, ours_noetag, raw1, rawn, {} if args.skip_peers else peers)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps([r.as_dict() for r in rows], indent=1))
    return res.finish(args)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)

"""NBD on Swift: stowkit's server beside raw Swift, nbdkit's S3 plugin and swiftnbd 0.11.

    python3 bench/nbd_throughput.py [--size-mib 256] [--object-size 4M] [--repeat 3]
        [--peer-size-mib 32] [--skip-peers] [--boto3-path SITE_PACKAGES] [--json FILE]

Swift credentials come from the harness state file (.stack/state.json, service
"swift"; start it with ``python3 -m tools.stack start swift``).  Every NBD
server is measured the same way, through the same Swift:

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

* nbdkit's S3 plugin (Debian nbdkit-plugin-python + boto3) through Swift's
  s3api, 64 KiB objects (its maximum).  boto3 comes from ``--boto3-path`` or
  a venv of the system Python made once under .stack/venvs/nbdkit-s3;
* swiftnbd 0.11 (64 KiB objects, its default) when a Python 3.6 is present
  (pyenv's); its venv is made once under .stack/venvs/swiftnbd36.

stowkit and the raw baselines are measured ``--repeat`` times, interleaved,
and the median is shown (with the range); peers once.  Ratios printed: stowkit
over raw Swift (target >= 0.5x both ways) and over each peer (target >= 5x).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
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

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from stowkit.cli.common import parse_size  # noqa: E402 - the same sizes the CLI takes

VENVS = REPO / ".stack" / "venvs"
MiB = 1 << 20
PEER_OBJECT_SIZE = 64 << 10
RAW_THREADS = 8
RAW_4K_READS = 400


def swift_record() -> dict:
    state = pathlib.Path(os.environ.get("STOWKIT_STACK_DIR", REPO / ".stack")) / "state.json"
    try:
        return json.loads(state.read_text())["services"]["swift"]
    except (FileNotFoundError, KeyError):
        sys.exit("swift is not running: python3 -m tools.stack start swift")


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
            raise RuntimeError(f"server exited with {proc.returncode}: {tail}")
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("server did not listen")


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
        subprocess.run(["stowkit", "--config-file", str(self.conf), *args], check=True,
                       capture_output=True, timeout=600)  # fmt: skip

    def prepare(self) -> None:
        self.cli("blockstore", "setup", self.name, "--size", str(self.size),
                 "--object-size", str(self.object_size))  # fmt: skip

    def command(self, port: int) -> tuple[list[str], dict | None]:
        return ["stowkit", "--config-file", str(self.conf), "blockstore", "serve", "--port",
                str(port), "--cache-size", self.cache, self.name], None  # fmt: skip

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


def bench_server(server: Server, src: pathlib.Path, dst: pathlib.Path,
                 count: int) -> tuple[float, float, float | None]:  # fmt: skip
    """(write seconds, read seconds, 4K reads per second or None if the client failed)."""
    server.prepare()
    try:
        uri = server.start()
        write = timed(["nbdcopy", "--flush", str(src), uri])
        server.stop()
        uri = server.start()  # cold cache
        read = timed(["nbdcopy", uri, str(dst)])
        server.stop()
        if not filecmp_equal(src, dst):
            raise RuntimeError(f"{type(server).__name__}: read back differs")
        uri = server.start()
        step = str(server.object_size + 4096)
        try:
            seconds = timed(["qemu-img", "bench", "-f", "raw", "-t", "none", "-c", str(count),
                             "-d", "16", "-s", "4k", "-S", step, uri], timeout=600)  # fmt: skip
            iops = count / seconds
        except subprocess.CalledProcessError:
            iops = None
        server.stop()
    finally:
        server.stop()
        server.cleanup()
    return write, read, iops


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


def swiftnbd_venv() -> pathlib.Path | None:
    """swiftnbd 0.11 in a Python 3.6 venv (its server runs on nothing newer), or None."""
    venv = VENVS / "swiftnbd36"
    if (venv / "bin" / "swiftnbd-server").exists():
        return venv
    root = pathlib.Path(os.environ.get("PYENV_ROOT", pathlib.Path.home() / ".pyenv"))
    pythons = sorted(root.glob("versions/3.6*/bin/python3.6")) or (
        [pathlib.Path(p)] if (p := shutil.which("python3.6")) else []
    )
    if not pythons:
        return None
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
        self.error: str | None = None

    def add(self, write_s: float, read_s: float, iops: float | None = None) -> None:
        self.write.append(self.mib / write_s)
        self.read.append(self.mib / read_s)
        if iops is not None:
            self.iops.append(iops)

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
                "read_mib_s": self.read, "iops_4k": self.iops, "error": self.error}  # fmt: skip


def ratio(ours: Row, theirs: Row, what: str) -> str:
    a, b = ours.median(what), theirs.median(what)
    return f"{a / b:.2f}x" if a and b else "-"


def main() -> None:
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
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    rec = swift_record()
    object_size = parse_size(args.object_size)
    size = args.size_mib * MiB
    osize_text = args.object_size.upper()
    raw1 = Row("raw swiftclient, 1 object", args.size_mib)
    rawn = Row(f"raw swiftclient, {osize_text} x{RAW_THREADS} thr", args.size_mib)
    ours = Row(f"stowkit ({osize_text} objects)", args.size_mib)
    ours_noetag = Row(f"stowkit ({osize_text}, send_etag off)", args.size_mib)
    peers: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="nbd-bench-") as tmp:
        work = pathlib.Path(tmp)
        src, dst = work / "src.raw", work / "dst.raw"
        data = os.urandom(size)
        src.write_bytes(data)
        for run in range(args.repeat):
            print(f"run {run + 1}/{args.repeat}", file=sys.stderr, flush=True)
            raw1.add(*raw_single(rec, data))
            rawn.add(*raw_objects(rec, data, object_size))
            for row, etag in ((ours, True), (ours_noetag, False)):
                server = Stowkit(work, size, rec, object_size, args.cache_size, etag)
                row.add(*bench_server(server, src, dst, args.bench_count))
        del data
        if not args.skip_peers:
            peer_size = args.peer_size_mib * MiB
            psrc, pdst = work / "peer-src.raw", work / "peer-dst.raw"
            with open(src, "rb") as f:
                psrc.write_bytes(f.read(peer_size))
            count = max(args.bench_count // 10, 50)
            candidates = [("nbdkit S3 plugin (64K objects)", lambda: NbdkitS3(
                work, peer_size, rec, args.boto3_path or boto3_site_packages()))]  # fmt: skip
            venv = swiftnbd_venv()
            if venv is None:
                print("swiftnbd 0.11: not measured (no Python 3.6 found)")
            else:
                candidates.append(("swiftnbd 0.11 (64K objects)",
                                   lambda: Swiftnbd(work, peer_size, rec, venv)))  # fmt: skip
            for name, make in candidates:
                row = Row(name, args.peer_size_mib)
                peers.append(row)
                print(f"peer: {name}", file=sys.stderr, flush=True)
                try:
                    row.add(*bench_server(make(), psrc, pdst, count))
                except Exception as err:
                    row.error = str(err)[:300]
    print(f"\n{args.size_mib} MiB ({args.peer_size_mib} MiB for peers), Swift at "
          f"{rec['auth_url']}, median of {args.repeat} (range)")  # fmt: skip
    print(f"{'':38} {'write MiB/s':>16} {'read MiB/s':>16} {'4K reads/s':>14}")
    for row in (raw1, rawn, ours, ours_noetag, *peers):
        if row.error:
            print(f"{row.name:38} failed: {row.error}")
            continue
        print(f"{row.name:38} {Row.cell(row.write, 16)} {Row.cell(row.read, 16)} "
              f"{Row.cell(row.iops, 14, 0)}")  # fmt: skip
    print()
    for mine in (ours, ours_noetag):
        print(f"{mine.name} / raw 1 object: write {ratio(mine, raw1, 'write')}, "
              f"read {ratio(mine, raw1, 'read')} (target >= 0.5x)")  # fmt: skip
        print(f"{mine.name} / raw {osize_text} objects: write {ratio(mine, rawn, 'write')}, "
              f"read {ratio(mine, rawn, 'read')}, "
              f"4K reads {ratio(mine, rawn, 'iops')}")  # fmt: skip
    for peer in peers:
        if not peer.error:
            print(f"{ours.name} / {peer.name}: write {ratio(ours, peer, 'write')}, "
                  f"read {ratio(ours, peer, 'read')}, 4K reads {ratio(ours, peer, 'iops')} "
                  "(target >= 5x)")  # fmt: skip
    if args.json:
        rows = [raw1, rawn, ours, ours_noetag, *peers]
        pathlib.Path(args.json).write_text(json.dumps([r.as_dict() for r in rows], indent=1))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()

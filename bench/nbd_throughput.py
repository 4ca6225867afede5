"""NBD throughput on Swift: stowkit's server beside raw Swift and nbdkit's S3 plugin.

    python3 bench/nbd_throughput.py [--size-mib 256] [--object-size 1M] [--skip-s3]
        [--s3-size-mib N] [--boto3-path VENV/lib/python3.11/site-packages]

boto3 for nbdkit's embedded Python (Debian's, not this interpreter): unless
``--boto3-path`` names a site-packages, a venv of the system Python is made
once under .stack/venvs/nbdkit-s3 with boto3 in it.

Swift credentials come from the harness state file (.stack/state.json, service
"swift"; start it with ``python3 -m tools.stack start swift``).  Measured:

* stowkit: ``nbdcopy --flush`` of SIZE random bytes into a fresh device (the
  time includes the flush, i.e. until Swift stored everything), then a cold
  ``nbdcopy`` read after a server restart, then ``qemu-img bench`` of 4 KiB
  reads striding across the device (cold objects; qemu-img bench has no
  random mode, a stride of one object + 4 KiB touches a new object each time);
* raw python-swiftclient: one PUT and one GET of the same bytes as one object;
* nbdkit's S3 plugin (Debian nbdkit-plugin-python + boto3) through Swift's
  s3api, same nbdcopy commands (its object size is at most 64 KiB).

Prints MiB/s and the ratios the issue sets as targets (>= 0.5x raw Swift,
>= 5x nbdkit S3).  swiftnbd 0.11 is not measured (it needs Python 3.6).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import secrets
import signal
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
MiB = 1 << 20


def swift_record() -> dict:
    state = pathlib.Path(os.environ.get("STOWKIT_STACK_DIR", REPO / ".stack")) / "state.json"
    try:
        return json.loads(state.read_text())["services"]["swift"]
    except (FileNotFoundError, KeyError):
        sys.exit("swift is not running: python3 -m tools.stack start swift")


def timed(cmd: list[str], timeout: int = 3600) -> float:
    start = time.perf_counter()
    subprocess.run(["timeout", str(timeout), *cmd], check=True, capture_output=True)
    return time.perf_counter() - start


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, seconds: float = 60) -> None:
    import socket

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("server did not listen")


def bench_raw(rec: dict, src: pathlib.Path) -> tuple[float, float]:
    from swiftclient import client

    conn = client.Connection(rec["auth_url"], rec["user"], rec["key"])
    container = f"bench-raw-{secrets.token_hex(3)}"
    conn.put_container(container)
    data = src.read_bytes()
    try:
        start = time.perf_counter()
        conn.put_object(container, "blob", data)
        put = time.perf_counter() - start
        start = time.perf_counter()
        _, body = conn.get_object(container, "blob")
        get = time.perf_counter() - start
        assert body == data
    finally:
        conn.delete_object(container, "blob")
        conn.delete_container(container)
        conn.close()
    return put, get


class Stowkit:
    def __init__(self, rec: dict, workdir: pathlib.Path, object_size: str, cache: str) -> None:
        self.conf = workdir / "stowkit.conf"
        self.conf.write_text(
            "[blockstore]\nbackend = swift\n[blockstore_swift]\n"
            f"auth_url = {rec['auth_url']}\nuser = {rec['user']}\nkey = {rec['key']}\n"
            "container_prefix = bench-\n"
        )
        self.object_size = object_size
        self.cache = cache
        self.name = f"nbd{secrets.token_hex(3)}"
        self.proc: subprocess.Popen | None = None

    def cli(self, *args: str) -> None:
        subprocess.run(["stowkit", "--config-file", str(self.conf), *args], check=True,
                       capture_output=True, timeout=600)  # fmt: skip

    def start(self) -> str:
        port = free_port()
        self.proc = subprocess.Popen(
            ["stowkit", "--config-file", str(self.conf), "blockstore", "serve", "--port",
             str(port), "--cache-size", self.cache, self.name],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        wait_port(port, self.proc)
        return f"nbd://127.0.0.1:{port}/{self.name}"

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(600)
            self.proc = None


def bench_stowkit(rec, src, dst, size, object_size, cache, workdir, bench_count):  # noqa: ANN001, ANN201
    sk = Stowkit(rec, workdir, object_size, cache)
    sk.cli("blockstore", "setup", sk.name, "--size", f"{size}", "--object-size", object_size)
    try:
        uri = sk.start()
        write = timed(["nbdcopy", "--flush", str(src), uri])
        sk.stop()
        uri = sk.start()  # cold cache
        read = timed(["nbdcopy", uri, str(dst)])
        if src.read_bytes() != dst.read_bytes():
            raise RuntimeError("stowkit: read back differs")
        sk.stop()
        uri = sk.start()
        step = str(_parse(object_size) + 4096)
        iops_time = timed(["qemu-img", "bench", "-f", "raw", "-t", "none", "-c",
                           str(bench_count), "-d", "16", "-s", "4k", "-S", step, uri])  # fmt: skip
        sk.stop()
    finally:
        sk.stop()
        sk.cli("blockstore", "delete", sk.name, "--force")
    return write, read, bench_count / iops_time


def bench_s3(rec, src, dst, size, workdir, bench_count, boto3_path):  # noqa: ANN001, ANN201
    import boto3

    bucket = f"bench-s3-{secrets.token_hex(3)}"
    s3 = boto3.client("s3", endpoint_url=rec.get("s3_endpoint", rec["proxy_url"]),
                      aws_access_key_id=rec["user"], aws_secret_access_key=rec["key"],
                      region_name="us-east-1")  # fmt: skip
    s3.create_bucket(Bucket=bucket)
    port = free_port()
    # nbdkit embeds the system Python; boto3 comes from Debian (python3-boto3)
    # or a venv given with --boto3-path, as FACTS' recipe does.  PYTHONHOME
    # pins the embedded interpreter to /usr: run from a pyenv shell it found
    # pyenv's standard library first and failed to load that one's _ssl.
    env = dict(os.environ, AWS_DEFAULT_REGION="us-east-1", PYTHONPATH=boto3_path,
               PYTHONHOME="/usr")  # fmt: skip
    cmd = ["nbdkit", "-f", "-i", "127.0.0.1", "-p", str(port), "S3",
           f"access-key={rec['user']}", f"secret-key={rec['key']}",
           f"endpoint-url={rec.get('s3_endpoint', rec['proxy_url'])}", f"bucket={bucket}",
           "key=disk", f"size={size}", "object-size=64k"]  # fmt: skip
    try:
        errors = open(workdir / "nbdkit.err", "w+")  # noqa: SIM115 - read back on failure
        proc = subprocess.Popen(cmd, env=env, stderr=errors)
        try:
            wait_port(port, proc)
        except RuntimeError as err:
            errors.seek(0)
            raise RuntimeError(f"{err}: {errors.read().strip()[-300:]}") from None
        uri = f"nbd://127.0.0.1:{port}"
        write = timed(["nbdcopy", "--flush", str(src), uri])
        read = timed(["nbdcopy", uri, str(dst)])
        if src.read_bytes() != dst.read_bytes():
            raise RuntimeError("nbdkit S3: read back differs")
        iops_time = timed(["qemu-img", "bench", "-f", "raw", "-t", "none", "-c",
                           str(bench_count), "-d", "16", "-s", "4k", "-S", str(65536 + 4096),
                           uri])  # fmt: skip
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    finally:
        paginator = s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                s3.delete_object(Bucket=bucket, Key=obj["Key"])
        s3.delete_bucket(Bucket=bucket)
    return write, read, bench_count / iops_time


def boto3_site_packages() -> str:
    """A venv of the system Python (the one nbdkit embeds) holding boto3."""
    venv = pathlib.Path(__file__).resolve().parents[1] / ".stack" / "venvs" / "nbdkit-s3"
    if not (venv / "bin" / "python").exists():
        subprocess.run(["/usr/bin/python3", "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "boto3"], check=True)
    return str(next((venv / "lib").glob("python3*/site-packages")))


def _parse(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(text[:-1]) * units[text[-1].upper()] if text[-1].upper() in units else int(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--object-size", default="1M", help="stowkit device object size")
    parser.add_argument("--cache-size", default="64M")
    parser.add_argument("--bench-count", type=int, default=2000, help="qemu-img bench requests")
    parser.add_argument("--skip-s3", action="store_true")
    parser.add_argument(
        "--s3-size-mib",
        type=int,
        default=0,
        help="Bytes copied through nbdkit's S3 plugin (default: --size-mib); it moves 64 KiB "
        "objects one request at a time, so a smaller size keeps the run short.",
    )
    parser.add_argument("--boto3-path", help="site-packages with boto3 for nbdkit's Python")
    args = parser.parse_args()
    rec = swift_record()
    size = args.size_mib * MiB
    with tempfile.TemporaryDirectory(prefix="nbd-bench-") as tmp:
        work = pathlib.Path(tmp)
        src, dst = work / "src.raw", work / "dst.raw"
        src.write_bytes(os.urandom(size))
        rows = []
        put, get = bench_raw(rec, src)
        rows.append(("raw swiftclient, 1 object", args.size_mib / put, args.size_mib / get, None))
        w, r, iops = bench_stowkit(rec, src, dst, size, args.object_size, args.cache_size,
                                   work, args.bench_count)  # fmt: skip
        rows.append((f"stowkit nbd ({args.object_size} objects)", args.size_mib / w,
                     args.size_mib / r, iops))  # fmt: skip
        if args.skip_s3:
            print("nbdkit S3 plugin: skipped (--skip-s3)")
        else:
            try:
                count = max(args.bench_count // 10, 50)
                s3_mib = args.s3_size_mib or args.size_mib
                s3_src, s3_dst = work / "s3src.raw", work / "s3dst.raw"
                with open(src, "rb") as f:
                    s3_src.write_bytes(f.read(s3_mib * MiB))
                boto3_path = args.boto3_path or boto3_site_packages()
                w3, r3, iops3 = bench_s3(rec, s3_src, s3_dst, s3_mib * MiB, work, count, boto3_path)
                rows.append((f"nbdkit S3 plugin (64k obj, {s3_mib} MiB)", s3_mib / w3,
                             s3_mib / r3, iops3))  # fmt: skip
            except Exception as err:  # noqa: BLE001 - report and go on
                print(f"nbdkit S3 plugin: failed: {err}")
    print("swiftnbd 0.11: not measured (its server needs Python 3.6)")
    print(f"\n{args.size_mib} MiB, Swift at {rec['auth_url']}")
    print(f"{'':34} {'write MiB/s':>12} {'read MiB/s':>11} {'4K read IOPS':>13}")
    for name, w, r, iops in rows:
        iops_text = f"{iops:13.0f}" if iops else f"{'-':>13}"
        print(f"{name:34} {w:12.1f} {r:11.1f} {iops_text}")
    ours = rows[1]
    raw = rows[0]
    print(f"\nstowkit / raw swift: write {ours[1] / raw[1]:.2f}x, "
          f"read {ours[2] / raw[2]:.2f}x (target >= 0.5x)")  # fmt: skip
    if len(rows) > 2:
        s3 = rows[2]
        print(f"stowkit / nbdkit S3: write {ours[1] / s3[1]:.1f}x, read {ours[2] / s3[2]:.1f}x, "
              f"4K reads {ours[3] / s3[3]:.1f}x (target >= 5x)")  # fmt: skip


if __name__ == "__main__":
    main()

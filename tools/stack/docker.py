"""A private dockerd with its own roots, socket and pidfile, and a busybox image.

No registry is reachable from the test machines, so the image ``bbox:1`` is made
here from Debian's static busybox and ``docker import``-ed.  The daemon runs
without iptables and without a bridge: containers use ``--network none``.
The data root stays between runs (the image is imported once); it lives under
the stack dir, never on the btrfs loop images.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import pathlib
import shutil
import tarfile

from tools.stack.base import Context, StackError, tail

NAME = "docker"
REQUIRES: list[str] = []
IMAGE = "bbox:1"
# busybox applets linked into the image: what the tests' shell snippets use.
APPLETS = (
    "sh echo cat ls mkdir rm rmdir touch cp mv ln dd head tail wc sleep true false test "
    "env id stat df du sync sha256sum md5sum grep sed find chmod chown date hostname uname"
).split()


def _paths(ctx: Context) -> dict[str, pathlib.Path]:
    d = ctx.service_dir(NAME)
    # containerd's socket lives under the exec root and a unix socket path is at most
    # 107 bytes: a deep checkout gets a short exec root under /run instead.
    short = pathlib.Path("/run") / f"stowkit-docker-{hashlib.sha1(bytes(d)).hexdigest()[:10]}"
    exec_root = d / "exec" if len(str(d)) < 60 else short
    return {
        "dir": d,
        "data": d / "root",
        "exec": exec_root,
        "socket": (d if len(str(d)) < 80 else exec_root) / "docker.sock",
        "pidfile": d / "docker.pid",
    }


def install(ctx: Context) -> None:
    pass


def _busybox() -> pathlib.Path:
    for cand in ("/bin/busybox", "/usr/bin/busybox"):
        if os.path.exists(cand):
            return pathlib.Path(cand)
    raise StackError("busybox not found (apt-get install busybox-static)")


def _image_tar() -> bytes:
    """A root filesystem tar: bin/busybox plus applet symlinks, tmp and data dirs."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for d in ("bin", "tmp", "data", "etc"):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if d == "tmp" else 0o755
            tar.addfile(info)
        tar.add(_busybox(), arcname="bin/busybox")
        for applet in APPLETS:
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type, info.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(info)
        passwd = b"root:x:0:0:root:/:/bin/sh\n"
        info = tarfile.TarInfo("etc/passwd")
        info.size = len(passwd)
        tar.addfile(info, io.BytesIO(passwd))
    return buf.getvalue()


def start(ctx: Context) -> dict:
    p = _paths(ctx)
    for key in ("data", "exec"):
        p[key].mkdir(parents=True, exist_ok=True)
    # Legacy volume plugins are looked up here; the volume plugin tests link into it.
    pathlib.Path("/run/docker/plugins").mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        p["socket"].unlink()  # left by a daemon that was killed
    host = f"unix://{p['socket']}"
    log = ctx.log(NAME)
    ns = f"stowkit-{hashlib.sha1(bytes(p['dir'])).hexdigest()[:10]}"
    pid = ctx.spawn(
        [
            shutil.which("dockerd") or "/usr/sbin/dockerd",
            "--iptables=false",
            "--ip-masq=false",
            "--bridge=none",
            "--data-root", p["data"],
            "--exec-root", p["exec"],
            "--pidfile", p["pidfile"],
            "-H", host,
            # If a system containerd is running dockerd would share it: keep our
            # containers in namespaces of our own.
            "--containerd-namespace", ns,
            "--containerd-plugins-namespace", f"{ns}-plugins",
        ],
        log,
    )  # fmt: skip
    docker = ["docker", "-H", host]
    ctx.wait_for(
        "dockerd", lambda: ctx.run([*docker, "version"], check=False).returncode == 0, 90, log
    )
    if ctx.run([*docker, "image", "inspect", IMAGE], check=False).returncode != 0:
        proc = ctx.run(
            [*docker, "import", "-c", 'CMD ["sh"]', "-", IMAGE], input=_image_tar(), text=False
        )
        if proc.returncode != 0:
            raise StackError(f"docker import failed\n{tail(log)}")
    return {
        "pids": [pid],
        "host": host,
        "socket": str(p["socket"]),
        "image": IMAGE,
        "data_root": str(p["data"]),
        "exec_root": str(p["exec"]),
        "run_options": ["--network", "none"],
        "plugins_dir": "/run/docker/plugins",
    }


def _mounts_under(paths: list[pathlib.Path]) -> list[str]:
    out = []
    for line in pathlib.Path("/proc/mounts").read_text().splitlines():
        target = line.split()[1].replace("\\040", " ")
        if any(target == str(p) or target.startswith(f"{p}/") for p in paths):
            out.append(target)
    return sorted(out, key=len, reverse=True)


def stop(ctx: Context, record: dict) -> None:
    # dockerd stops its containers and containerd on TERM; give it the time for that.
    ctx.kill(record.get("pids", []), record.get("started"), timeout=40)
    roots = [pathlib.Path(record[k]) for k in ("data_root", "exec_root") if k in record]
    # A daemon that had to be killed leaves overlay and netns mounts under its roots.
    for target in _mounts_under(roots):
        ctx.run(["umount", "-l", target], check=False)
    with contextlib.suppress(FileNotFoundError, KeyError):
        pathlib.Path(record["socket"]).unlink()

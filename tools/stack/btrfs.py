"""Two btrfs filesystems on sparse loop images: the "hosts" a and b.

Replication tests send subvolumes from one to the other (over the sshd
service), so the two must be separate filesystems.  Each start makes fresh,
empty filesystems; stop unmounts them, detaches the loop devices and deletes
the images.
"""

from __future__ import annotations

import contextlib
import pathlib

from tools.stack.base import Context, StackError

NAME = "btrfs"
REQUIRES: list[str] = []
HOSTS = ("a", "b")
SIZE = "4G"  # sparse; bench/replication.py sends 1 GiB volumes both ways


def install(ctx: Context) -> None:
    pass  # the Debian packages are all it needs


def _mounted(path: pathlib.Path) -> bool:
    mounts = pathlib.Path("/proc/mounts").read_text().splitlines()
    return any(line.split()[1] == str(path) for line in mounts)


def _clean(ctx: Context, mount: pathlib.Path, image: pathlib.Path) -> None:
    """Undo a previous run at our own paths: unmount, detach, delete."""
    while _mounted(mount):
        if ctx.run(["umount", mount], check=False).returncode != 0:
            ctx.run(["umount", "-l", mount])
    if image.exists():
        # Loop devices still backed by our image file (losetup -j matches the file).
        out = ctx.run(["losetup", "-j", image], check=False).stdout
        for line in out.splitlines():
            ctx.run(["losetup", "-d", line.split(":", 1)[0]], check=False)
        image.unlink()


def start(ctx: Context) -> dict:
    d = ctx.service_dir(NAME)
    mounts, loops, images = [], [], []
    try:
        for host in HOSTS:
            mount, image = d / f"host{host.upper()}", d / f"host{host.upper()}.img"
            _clean(ctx, mount, image)
            mount.mkdir(exist_ok=True)
            ctx.run(["truncate", "-s", SIZE, image])
            ctx.run(["mkfs.btrfs", "-q", "-L", f"stowkit-{host}", image])
            images.append(str(image))
            loop = ctx.run(["losetup", "-f", "--show", image]).stdout.strip()
            loops.append(loop)
            ctx.run(["mount", loop, mount])
            mounts.append(str(mount))
    except StackError:
        stop(ctx, {"mounts": mounts, "loops": loops, "images": images})
        raise
    return {
        "pids": [],
        "mounts": mounts,
        "hosts": dict(zip(HOSTS, mounts, strict=True)),
        "loops": loops,
        "images": images,
        "size": SIZE,
    }


def alive(ctx: Context, record: dict) -> bool:
    return all(_mounted(pathlib.Path(m)) for m in record.get("mounts", []))


def stop(ctx: Context, record: dict) -> None:
    errors = []
    for mount in record.get("mounts", []):
        path = pathlib.Path(mount)
        # Never a lazy unmount here first: a busy filesystem should be reported.
        while _mounted(path):
            proc = ctx.run(["umount", path], check=False)
            if proc.returncode != 0:
                errors.append(f"umount {path}: {proc.stderr.strip()}; detaching lazily")
                ctx.run(["umount", "-l", path], check=False)
                break
    for loop in record.get("loops", []):
        ctx.run(["losetup", "-d", loop], check=False)
    for image in record.get("images", []):
        with contextlib.suppress(FileNotFoundError):
            pathlib.Path(image).unlink()
    if errors:
        print("\n".join(errors))

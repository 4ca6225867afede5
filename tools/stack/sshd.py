"""A private sshd on a loopback port, root login with a generated ed25519 key.

Replication between the two btrfs "hosts" goes through it exactly as between two
machines.  ``ssh_options`` in the record holds everything but the destination,
so a test runs ``["ssh", *rec["ssh_options"], f"{rec['user']}@{rec['host']}", CMD]``.
"""

from __future__ import annotations

import pathlib
import socket
import time

from tools.stack.base import Context, StackError, tail

NAME = "sshd"
REQUIRES: list[str] = []


def install(ctx: Context) -> None:
    pass


def _keygen(ctx: Context, path: pathlib.Path) -> None:
    if not path.exists():
        ctx.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "stowkit-test", "-f", path])


def _banner(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            return s.recv(4).startswith(b"SSH-")
    except OSError:
        return False


def start(ctx: Context) -> dict:
    d = ctx.service_dir(NAME)
    host_key, user_key = d / "ssh_host_ed25519_key", d / "id_ed25519"
    _keygen(ctx, host_key)
    _keygen(ctx, user_key)
    authorized = d / "authorized_keys"
    authorized.write_text(user_key.with_suffix(".pub").read_text())
    authorized.chmod(0o600)
    pathlib.Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation dir
    port = ctx.free_port()
    config = d / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"Port {port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {host_key}",
                f"AuthorizedKeysFile {authorized}",
                f"PidFile {d / 'sshd.pid'}",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PermitRootLogin prohibit-password",
                "StrictModes no",
                "UsePAM no",
                "PrintMotd no",
                "UseDNS no",
                "MaxStartups 100",
                "MaxSessions 100",
                "Subsystem sftp internal-sftp",
                "",
            ]
        )
    )
    log = ctx.log(NAME)
    # -D: stay in the foreground so the pid we record is the daemon's; -e: log to stderr.
    pid = ctx.spawn(["/usr/sbin/sshd", "-D", "-e", "-f", config], log)
    ctx.wait_for(f"sshd on port {port}", lambda: _banner(port), 30, log)
    options = [
        "-i", str(user_key),
        "-p", str(port),
        "-o", "IdentitiesOnly=yes",
        "-o", "StrictHostKeyChecking=no",
        "-o", "UserKnownHostsFile=/dev/null",
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "BatchMode=yes",
        "-o", "LogLevel=ERROR",
        "-o", "ConnectTimeout=10",
    ]  # fmt: skip
    # The daemon answering is not enough: prove a key login runs a command.
    deadline = time.monotonic() + 20
    while True:
        proc = ctx.run(["ssh", *options, "root@127.0.0.1", "true"], check=False, timeout=30)
        if proc.returncode == 0:
            break
        if time.monotonic() > deadline:
            raise StackError(f"ssh login to sshd failed: {proc.stderr.strip()}\n{tail(log)}")
        time.sleep(0.5)
    return {
        "pids": [pid],
        "host": "127.0.0.1",
        "port": port,
        "user": "root",
        "key": str(user_key),
        "host_key": str(host_key.with_suffix(".pub")),
        "ssh_options": options,
        "ssh_command": ["ssh", *options, "root@127.0.0.1"],
    }


def stop(ctx: Context, record: dict) -> None:
    ctx.kill(record.get("pids", []), record.get("started"))

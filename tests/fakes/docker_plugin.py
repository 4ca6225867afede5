"""Clients of a Docker volume plugin's unix socket, and a driver just big enough for it.

Docker speaks HTTP/1.1 to ``/run/docker/plugins/NAME.sock``; these talk to the
plugin the same way, either through http.client or with raw bytes (for the
requests http.client would refuse to send).
"""

from __future__ import annotations

import http.client
import json
import socket
import types

from stowkit.corelib.errors import NotFound
from stowkit.corelib.volume import VolumeDriver

PLUGINS_DIR = "/run/docker/plugins"


class UnixHTTPConnection(http.client.HTTPConnection):
    """An HTTP connection to a unix socket path."""

    def __init__(self, path: str, timeout: float = 10) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


def plugin_call(sock: str, endpoint: str, body: dict | None = None) -> dict:
    """POST ``body`` to ``endpoint`` as dockerd does; the JSON answer (it must be a 200)."""
    conn = UnixHTTPConnection(sock, timeout=30)
    try:
        conn.request("POST", endpoint, body=json.dumps(body or {}))
        resp = conn.getresponse()
        assert resp.status == 200
        return json.loads(resp.read())
    finally:
        conn.close()


def exchange(path: str, raw: bytes, timeout: float = 30.0) -> bytes:
    """Send a whole request, then read the answer to the end (a reset raises)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(raw)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def raw_post(endpoint: str, body: bytes) -> bytes:
    """The bytes of a POST of ``body`` that closes the connection after its answer."""
    return (
        f"POST {endpoint} HTTP/1.1\r\nHost: plugin\r\nConnection: close\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def split_answer(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    """A raw HTTP answer as (status, lower-cased headers, body cut to its Content-Length)."""
    head, sep, body = answer.partition(b"\r\n\r\n")
    assert sep, answer[:200]
    lines = head.decode("iso-8859-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = body[: int(headers["content-length"])]
    return status, headers, body


class ProtocolDriver:
    """Enough of a VolumeDriver for the protocol."""

    def __init__(self):
        self.volumes: dict[str, list[str]] = {}

    def volume_path(self, name):
        if name not in self.volumes:
            raise NotFound(f"no such volume: {name}")
        return f"/v/{name}"

    def create_volume(self, name, options=None):
        self.volumes.setdefault(name, [])

    def delete_volume(self, name, force=False):
        self.volume_path(name)
        del self.volumes[name]

    def mount(self, name, mount_id):
        path = self.volume_path(name)
        self.volumes[name].append(mount_id)
        return path

    def create_snapshot(self, name):
        self.volume_path(name)
        return types.SimpleNamespace(name=f"{name}@2026-12-01T10-00-00.000000")

    def unmount(self, name, mount_id):
        pass

    def mounts(self, name):
        return self.volumes.get(name, [])

    def volume_created(self, name):
        return None

    def list_volumes(self):
        return []

    def volume_entries(self):
        return [(name, f"/v/{name}", None) for name in sorted(self.volumes)]

    def list_snapshots(self, volume=None):
        return []

    # the interface's own defaults, over the methods above
    snapshot_entries = VolumeDriver.snapshot_entries
    volume_status = VolumeDriver.volume_status

    supports = staticmethod(lambda capability: True)

"""Replication of a btrfs root's snapshots: send, pull (receive), sync, and the sent records.

Peers are reached over ssh (plugins/btrfs/transport.py speaks to them); the
peer's layout is this root's unless ``remote_*`` options say otherwise.  One
rule chooses the parent of a stream both ways (:func:`shared_parent`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import os
import posixpath
from collections.abc import Callable, Container, Sequence
from typing import TypeVar

from stowkit.corelib.errors import (
    BackendUnavailable,
    ConfigError,
    Conflict,
    InvalidArgument,
    InvalidName,
    NotFound,
)
from stowkit.corelib.names import check_name
from stowkit.corelib.volume import SNAPSHOT_SEPARATOR, SendResult, Snapshot, SyncResult, parse_rate
from stowkit.plugins.btrfs import state, subvol, transport
from stowkit.plugins.btrfs.layout import Layout
from stowkit.plugins.btrfs.snapshots import Snapshots

_T = TypeVar("_T")


@dataclasses.dataclass(frozen=True)
class _PeerSnapshot:
    name: str
    created: dt.datetime
    path: str  #: on the peer
    key: str  #: its stream UUID (received UUID, else UUID)


def shared_parent(
    candidates: Sequence[_T],
    name: str,
    created: dt.datetime,
    shared: Container[str | None],
    key: Callable[[_T], str | None],
) -> _T | None:
    """The incremental parent of a stream of snapshot ``name`` (taken at ``created``).

    The newest of ``candidates`` (the sending side's snapshots, oldest
    first, each with ``.name`` and ``.created``) not newer than the snapshot
    whose stream UUID (``key``) the receiving side holds too (``shared``).
    One rule for sends and pulls: a stream's parent must exist on both ends.
    """
    found = [
        c
        for c in candidates
        if c.name != name and c.created <= created and key(c) in shared  # type: ignore[attr-defined]
    ]
    return found[-1] if found else None


def stream_uuid(snap: Snapshot) -> str | None:
    """The UUID a stream of ``snap`` carries: btrfs send names a subvolume by its
    received UUID when it has one."""
    return snap.received_uuid or snap.uuid


class Replication:
    """Sends, pulls and syncs of ``snapshots``' volumes, configured by ``opts``."""

    def __init__(self, layout: Layout, snapshots: Snapshots, opts) -> None:
        self.layout = layout
        self.snapshots = snapshots
        self.opts = opts

    # -- peers -----------------------------------------------------------------------

    def ssh(self) -> transport.SshConfig:
        return transport.SshConfig(
            command=self.opts.ssh_command,
            key=self.opts.ssh_key,
            options=tuple(self.opts.ssh_options or ()),
        )

    def peer(self, host: str) -> transport.Peer:
        address = self._addresses().get(host, host) if isinstance(host, str) else host
        return transport.parse_peer(address, self.opts.ssh_user, self.opts.ssh_port)

    def _addresses(self) -> dict[str, str]:
        """``[volume_btrfs] peer_addresses`` as {name: address}."""
        found: dict[str, str] = {}
        for item in self.opts.peer_addresses or ():
            name, sep, address = item.partition("=")
            if not sep or not name.strip() or not address.strip():
                raise ConfigError(
                    f"[volume_btrfs] peer_addresses: {item!r} is not NAME=[user@]host[:port]"
                )
            found[name.strip()] = address.strip()
        return found

    def _transfer(self, compress: bool | None, bwlimit: int | None) -> tuple[bool, int]:
        """(compress, bytes per second) of one stream: the caller's, else the configuration's."""
        compress = self.opts.send_compression if compress is None else bool(compress)
        rate = parse_rate(self.opts.bwlimit) if bwlimit is None else int(bwlimit)
        if rate < 0:
            raise InvalidArgument("bandwidth limit must not be negative")
        return compress, rate

    def remote_dirs(self) -> tuple[str, str]:
        """(received dir, snapshots dir) on peers: where sends land, and where else to look."""
        remote_root = self.opts.remote_root
        if remote_root:
            received = posixpath.join(os.path.abspath(remote_root), "received")
            snapshots = posixpath.join(os.path.abspath(remote_root), "snapshots")
        else:
            received, snapshots = self.layout.received_dir, self.layout.snapshots_dir
        received = os.path.abspath(self.opts.remote_received_path or received)
        snapshots = os.path.abspath(self.opts.remote_snapshots_path or snapshots)
        return received, snapshots

    def _listing_dirs(self) -> list[str]:
        """The peer directories a send lists: its received/ (first), its snapshots/."""
        received, snapshots = self.remote_dirs()
        return [received] if snapshots == received else [received, snapshots]

    def _list_peer(self, peer: transport.Peer, dirs: Sequence[str]) -> str:
        argv = [*self.ssh().argv(peer), transport.remote_command(transport.LIST_SCRIPT, *dirs)]
        return transport.run(argv, what=f"listing snapshots on {peer.spec}")

    def remote_held(self, peer: transport.Peer, volume: str) -> tuple[dict[str, str], set[str]]:
        """{received_uuid: name} of ``volume``'s complete snapshots the peer holds,
        and the names of those in the directory sends land in (one ssh call;
        a send gets the same from its own session, see :meth:`_send`)."""
        dirs = self._listing_dirs()
        return self._held(self._list_peer(peer, dirs), dirs, volume)

    def _held(self, out: str, dirs: Sequence[str], volume: str) -> tuple[dict[str, str], set[str]]:
        """:meth:`remote_held` from a listing's text.

        Only subvolumes directly in the peer's configured received/ directory
        (where sends land) or its snapshots/ directory (where buttervolume
        receives) count: ``btrfs subvolume list`` covers the whole filesystem,
        so every listed path is compared with the exact place of those two
        directories on it, never with a directory name.
        """
        received = dirs[0]
        held: dict[str, str] = {}
        landed: set[str] = set()
        for sub in transport.parse_listing(out, dirs):
            if not sub.received_uuid:
                continue  # a receive in progress, or the peer's own snapshot
            name = posixpath.basename(sub.path)
            try:
                vol, _ = self.snapshots.split_name(name)
            except InvalidName:
                continue
            if vol == volume:
                held.setdefault(sub.received_uuid, name)
                if sub.where == received:
                    landed.add(name)
        return held, landed

    def _peer_snapshots(self, out: str, dirs: Sequence[str], volume: str) -> list[_PeerSnapshot]:
        """``volume``'s complete snapshots on a peer, oldest first, from its listing."""
        found = []
        for sub in transport.parse_listing(out, dirs):
            name = posixpath.basename(sub.path)
            try:
                vol, created = self.snapshots.split_name(name)
            except InvalidName:
                continue
            if vol != volume or (sub.where == dirs[0] and not sub.received_uuid):
                continue  # another volume's, or a receive in progress on the peer
            key = sub.received_uuid or sub.uuid
            if key:
                found.append(_PeerSnapshot(name, created, posixpath.join(sub.where, name), key))
        return sorted(found, key=lambda r: (r.created, r.name))

    # -- sent records ------------------------------------------------------------------

    def record_sent(self, peer: transport.Peer, snap: Snapshot) -> None:
        record = self.layout.dir(".sent", snap.volume)
        key = f"{peer.user}@{peer.host}:{peer.port}"
        with self.layout.record_lock(snap.volume):
            sent = state.read_json(record, {})
            sent[key] = {
                "snapshot": snap.name,
                "uuid": stream_uuid(snap),
                "at": dt.datetime.now(dt.UTC).isoformat(),
            }
            state.write_json(record, sent)
        # buttervolume's markers of sends to this peer are superseded by the record.
        names = {peer.spec, peer.host, peer.destination, f"{peer.destination}:{peer.port}"}
        for host, _, marker in self.snapshots.markers(snap.volume):
            if host in names:
                with contextlib.suppress(NotFound):
                    subvol.delete(marker)

    def sent(self, volume: str) -> dict[str, dict[str, str]]:
        """{peer: {"snapshot", "uuid", "at"}}: the last snapshot sent to each peer.

        buttervolume's sent markers (read-only ``VOLUME@STAMP@HOST`` snapshots
        in snapshots/) count as records too: the newest per host, for a host
        stowkit has no record of.
        """
        check_name(volume, "volume name")
        self.layout.setup()
        records = state.read_json(self.layout.dir(".sent", volume), {})
        for host, snapshot, marker in self.snapshots.markers(volume):
            if host not in records or records[host].get("marker"):
                records[host] = {"snapshot": snapshot, "marker": os.path.basename(marker)}
        return records

    # -- send, pull, sync ----------------------------------------------------------------

    def send(self, name: str, host: str, compress: bool | None, bwlimit: int | None) -> SendResult:
        """VolumeDriver.send_snapshot."""
        peer = self.peer(host)
        path = self.snapshots.path(name)
        compress, rate = self._transfer(compress, bwlimit)
        # One send of a volume at a time (and no purge meanwhile): the parent
        # chosen below must still be there, on both sides, when the stream runs.
        with self.layout.volume_lock(os.path.basename(path).partition(SNAPSHOT_SEPARATOR)[0]):
            return self._send(path, peer, host, compress, rate)

    def _send(
        self, path: str, peer: transport.Peer, host: str, compress: bool, rate: int
    ) -> SendResult:
        # One ssh connection for the whole send: the peer lists what it holds,
        # then receives on the same session (or is told there is nothing).
        # It is opened first, so the local work below overlaps its handshake.
        dirs = self._listing_dirs()
        with transport.SendSession(self.ssh().argv(peer), dirs) as session:
            snap = self.snapshots.snapshot(path)
            subvol.sync(path)
            local = self.snapshots.list(snap.volume)
            held, landed = self._held(
                session.listing(f"listing snapshots on {peer.spec}"), dirs, snap.volume
            )
            key = stream_uuid(snap)
            if key in held:
                session.nothing()
                self.record_sent(peer, snap)
                return SendResult(snap.name, host, None, 0, already_there=True)
            if snap.name in landed:
                raise Conflict(f"{peer.spec} holds a different snapshot named {snap.name}")
            parent = shared_parent(local, snap.name, snap.created, held, stream_uuid)
            send_argv = [self.opts.btrfs_command, "send", "-q"]
            if parent is not None:
                send_argv += ["-p", parent.path]
            send_argv += ["--", path]
            sent_bytes = session.stream(send_argv, snap.name, compress, rate)
        self.record_sent(peer, snap)
        return SendResult(snap.name, host, parent.name if parent else None, sent_bytes)

    def receive(
        self, name: str, host: str, compress: bool | None, bwlimit: int | None, dry_run: bool
    ) -> SendResult:
        """Pull snapshot ``name`` from ``host`` into received/: a send run from this side.

        The peer's snapshots/ and received/ are listed over ssh (the directories
        a send lists); the parent is the newest snapshot both hold by stream
        UUID (:func:`shared_parent`, the rule of sends); the peer runs
        ``btrfs send [-p PARENT]`` and the stream is received here by the
        receive script sends use on peers, which deletes a partial subvolume.
        ``already_there`` when a snapshot with the same stream UUID is here.
        """
        volume = self.snapshots.split_name(name)[0]
        peer = self.peer(host)
        compress, rate = self._transfer(compress, bwlimit)
        self.layout.setup()
        with self.layout.volume_lock(volume):
            dirs = self._listing_dirs()
            remote = self._peer_snapshots(self._list_peer(peer, dirs), dirs, volume)
            target = next((r for r in remote if r.name == name), None)
            if target is None:
                raise NotFound(f"{peer.spec} holds no snapshot {name}")
            local = self.snapshots.list(volume)
            for snap in local:
                if stream_uuid(snap) == target.key:
                    return SendResult(snap.name, host, None, 0, already_there=True)
                if snap.name == name:
                    raise Conflict(f"a different snapshot named {name} is here already")
            here = {stream_uuid(s) for s in local}
            parent = shared_parent(remote, name, target.created, here, lambda r: r.key)
            if dry_run:
                return SendResult(name, host, parent.name if parent else None, 0)
            send = transport.remote_command(
                transport.PULL_SEND_SCRIPT,
                target.path,
                parent.path if parent else "",
                "zstd" if compress else "none",
            )
            receive = [
                "sh",
                "-c",
                transport.RECEIVE_SCRIPT,
                "stowkit",
                self.layout.received_dir,
                name,
                "zstd" if compress else "none",
            ]
            got = transport.pull_stream([*self.ssh().argv(peer), send], receive, rate)
        return SendResult(name, host, parent.name if parent else None, got)

    def peers(self, hosts: Sequence[str] | str) -> list[transport.Peer]:
        """The peers of a sync (at least one)."""
        if isinstance(hosts, str):
            hosts = [hosts]
        peers = [self.peer(h) for h in hosts]
        if not peers:
            raise InvalidArgument("sync needs at least one host")
        return peers

    def sync(
        self, volume: str, path: str, peers: Sequence[transport.Peer], backup: str
    ) -> SyncResult:
        """Pull newer files of ``volume`` (at ``path``; ``backup`` taken) from ``peers``."""
        remote_root = self.opts.remote_root
        remote_volumes = (
            posixpath.join(os.path.abspath(remote_root), "volumes")
            if remote_root
            else self.layout.volumes_dir
        )
        remote = posixpath.join(remote_volumes, volume) + "/"
        results: dict[str, str] = {}
        for peer in peers:
            argv = [
                self.opts.rsync_command,
                "-a",
                "--update",  # a file newer here is not overwritten by an older one
                "--protect-args",  # the remote path is not split by the remote shell
                "-e",
                self.ssh().rsync_rsh(peer),
                f"{peer.destination}:{remote}",
                path + "/",
            ]
            try:
                transport.run(argv, timeout=None, what=f"sync of {volume} from {peer.spec}")
                results[peer.spec] = "ok"
            except BackendUnavailable as exc:
                results[peer.spec] = str(exc)
        return SyncResult(volume=volume, backup=backup, peers=results)

"""The ``[volume_btrfs]`` options."""

from __future__ import annotations

from oslo_config import cfg

OPTIONS: list[cfg.Opt] = [
    cfg.StrOpt(
        "root",
        default="$state_dir/btrfs",
        help="Directory on a btrfs filesystem holding volumes/, snapshots/ and received/.",
    ),
    cfg.StrOpt(
        "volumes_path",
        help="Where the volumes are (default: ROOT/volumes); on btrfs, on the filesystem of "
        "snapshots_path, and of ROOT (ROOT/.detached receives trees moved out of it).",
    ),
    cfg.StrOpt("snapshots_path", help="Where snapshots are taken (default: ROOT/snapshots)."),
    cfg.StrOpt(
        "received_path", help="Where other hosts' snapshots are received (default: ROOT/received)."
    ),
    cfg.ListOpt(
        "foreign_time_formats",
        default=["%Y-%m-%dT%H:%M:%S.%f"],
        help="strftime formats of other tools' snapshot names VOLUME@STAMP, read as local "
        "time (default: buttervolume's DTFORMAT).  stowkit's own UTC form is always read.",
    ),
    cfg.BoolOpt(
        "copyonwrite",
        default=True,
        help="Default copy-on-write setting of new volumes (true, as btrfs, Docker's local "
        "driver and buttervolume 3.13: files keep checksums and can be compressed; "
        "set false, or -o copyonwrite=false per volume, for databases and VM images).",
    ),
    cfg.StrOpt(
        "compression",
        default="none",
        choices=["none", "zstd", "lzo", "zlib"],
        help="Default compression of new volumes.",
    ),
    cfg.StrOpt("btrfs_command", default="btrfs", help="The btrfs tool (for send/receive)."),
    cfg.StrOpt("rsync_command", default="rsync", help="rsync, used by `volume sync`."),
    cfg.StrOpt("ssh_command", default="ssh", help="ssh client used to reach peers."),
    cfg.StrOpt("ssh_user", default="root", help="Remote user when a host names none."),
    cfg.PortOpt("ssh_port", default=22, help="Remote ssh port when a host names none."),
    cfg.StrOpt("ssh_key", help="Private key file for ssh (-i)."),
    cfg.ListOpt(
        "ssh_options",
        default=["BatchMode=yes", "ConnectTimeout=15"],
        help="ssh -o options, e.g. StrictHostKeyChecking=accept-new.",
    ),
    cfg.ListOpt(
        "peer_addresses",
        default=[],
        help="NAME=[user@]host[:port] items: how to reach a host named NAME (a name of the "
        "backup catalog's documents, as `volume pull` finds it, or given to `volume send`) "
        "over ssh.  A host not listed is reached by its own name.",
    ),
    cfg.StrOpt(
        "remote_root",
        help="The btrfs root on peers (default: the same path as root).",
    ),
    cfg.StrOpt(
        "remote_received_path",
        help="Where peers receive (default: REMOTE_ROOT/received if remote_root is set, "
        "else the same path as received_path).",
    ),
    cfg.StrOpt(
        "remote_snapshots_path",
        help="The peers' snapshot directory, also searched for shared parents (default: "
        "REMOTE_ROOT/snapshots if remote_root is set, else the same path as snapshots_path).",
    ),
    cfg.BoolOpt(
        "send_compression",
        default=False,
        help="Compress send streams with zstd (zstd is needed on both ends).",
    ),
    cfg.StrOpt(
        "bwlimit",
        default="0",
        help="Bandwidth limit of send streams in bytes per second (K, M, G suffixes; 0 = none).",
    ),
]

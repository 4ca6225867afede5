"""The ``[volume_btrfs]`` options."""

from __future__ import annotations

from oslo_config import cfg

OPTIONS: list[cfg.Opt] = [
    cfg.StrOpt(
        "root",
        default="$state_dir/btrfs",
        help="Directory on a btrfs filesystem holding volumes/, snapshots/ and received/.",
    ),
    cfg.BoolOpt(
        "copyonwrite",
        default=False,
        help="Default copy-on-write setting of new volumes (false, as buttervolume does: "
        "better for databases; snapshots still work).",
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
    cfg.StrOpt(
        "remote_root",
        help="The btrfs root on peers (default: the same path as root).",
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

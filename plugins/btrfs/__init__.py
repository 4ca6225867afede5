"""The btrfs VolumeDriver: subvolumes, snapshots, send/receive over ssh."""

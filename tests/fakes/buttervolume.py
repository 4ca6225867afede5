"""What buttervolume writes, as its tests need it."""

from __future__ import annotations

BV = "%Y-%m-%dT%H:%M:%S.%f"  # buttervolume's time in snapshot names (local time)

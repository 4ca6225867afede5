"""Embedded default backends on plain directories (block devices, images)."""

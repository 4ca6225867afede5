"""Sphinx configuration for stowkit's documentation (Markdown through MyST)."""

project = "stowkit"
author = "the stowkit developers"
extensions = ["myst_parser"]
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build"]
master_doc = "index"
html_theme = "alabaster"
myst_heading_anchors = 3

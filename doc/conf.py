"""Sphinx configuration for stowkit's documentation (Markdown through MyST).

The command-line and configuration references are generated from the code:
the stowkit distribution must be installed (``tox -e docs`` does it).
"""

import os
import sys
from importlib import metadata

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "_ext"))

project = "stowkit"
author = "the stowkit developers"
try:
    release = metadata.version("stowkit")
except metadata.PackageNotFoundError:
    release = "0+unknown"
version = release

extensions = [
    "myst_parser",
    # the API reference (api.md) from the docstrings of the public package
    "sphinx.ext.autodoc",
    # the diagrams (diagrams.md, doc/_diagrams/*.dot), drawn by Debian's graphviz at build time
    "sphinx.ext.graphviz",
    # autoprogram-cliff-app, autoprogram-argparse, and oslo.config's
    # show-options (it loads cliff.sphinxext and oslo_config.sphinxext)
    "cli_reference",
    # writes doc/stowkit.conf.sample on every build
    "oslo_config.sphinxconfiggen",
]
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build", "_ext", "_diagrams"]
master_doc = "index"
html_theme = "alabaster"
myst_heading_anchors = 3

# -- API reference and diagrams ----------------------------------------------

# The public names, in the order the package's __init__ lists them by job.
autodoc_member_order = "groupwise"
autodoc_typehints = "signature"
# SVG: text, no raster renderer needed; Sphinx embeds it with <object>.
graphviz_output_format = "svg"

# -- generated references --------------------------------------------------

# cliff's directives: the program name in front of every command, and the
# output-formatter options every listing command shares, described once in
# cli.md instead of under each command.
autoprogram_cliff_application = "stowkit"
autoprogram_cliff_app_dist_name = "stowkit"
autoprogram_cliff_ignored = [
    "--help",
    "--quote",
    "--noindent",
    "--max-width",
    "--fit-width",
    "--print-empty",
    "--prefix",
    "--sort-column",
    "--sort-ascending",
    "--sort-descending",
]

# oslo_config.sphinxconfiggen: <srcdir>/stowkit.conf.sample
config_generator_config_file = os.path.join(HERE, "config-generator.conf")
sample_config_basename = "stowkit"

# -- manual pages ------------------------------------------------------------

# (source document, name, description, authors, section)
man_pages = [
    ("cli", "stowkit", "storage operations for small OpenStack and Docker clusters", [], 1),
    (
        "compat/stowkit-buttervolume",
        "stowkit-buttervolume",
        "buttervolume's command line on stowkit's BTRFS volumes",
        [],
        1,
    ),
    (
        "compat/stowkit-glancesync",
        "stowkit-glancesync",
        "GlanceSync's command line on stowkit's image sync",
        [],
        1,
    ),
    (
        "compat/stowkit-swiftnbd-ctl",
        "stowkit-swiftnbd-ctl",
        "swiftnbd's control tool on stowkit's block devices",
        [],
        1,
    ),
    (
        "compat/stowkit-swiftnbd-server",
        "stowkit-swiftnbd-server",
        "swiftnbd's NBD server on stowkit's block devices",
        [],
        1,
    ),
]

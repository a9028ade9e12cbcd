"""Sphinx configuration of the socketloop documentation (``make docs``)."""

from __future__ import annotations

import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import socketloop  # noqa: E402

project = "socketloop"
author = "socketloop developers"
copyright = "socketloop developers"  # noqa: A001  (Sphinx's name)
release = version = socketloop.__version__

extensions = [
    "myst_parser",  # the guides are Markdown
    "sphinx.ext.autodoc",  # the reference comes from the docstrings
    "sphinx.ext.viewcode",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
myst_enable_extensions = ["colon_fence"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}

html_theme = "furo"
html_title = f"socketloop {release}"
html_show_sourcelink = False

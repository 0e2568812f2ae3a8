"""Sphinx configuration: Markdown pages through MyST, warnings are errors (tox -e docs)."""

project = "netproto"
author = "the netproto developers"
extensions = ["myst_parser", "sphinx.ext.autodoc"]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build"]
myst_heading_anchors = 3
html_theme = "alabaster"
autodoc_member_order = "bysource"
nitpicky = False

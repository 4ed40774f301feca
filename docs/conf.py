"""Sphinx configuration of scoop-core's documentation site.

Pages are Markdown (MyST); the API reference is generated from the
docstrings by autodoc, which reads their reST roles (``:class:`` ...).
``.ci/run`` builds it with ``-W``: a broken link, a missing anchor or a page
outside the table of contents fails CI.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The plugins' packages live under plugins/, as in an editable install.
sys.path[:0] = [str(ROOT), *(str(p) for p in sorted((ROOT / "plugins").glob("*")))]

import scoop_core  # noqa: E402

project = "scoop-core"
author = "the scoop-core developers"
copyright = "the scoop-core developers; LGPL-3.0-or-later"
release = version = scoop_core.__version__

# napoleon reads the Google-style sections of docstrings inherited from concurrent.futures.
extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.napoleon"]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

# GitHub's anchors for headings, so [x](page.md#a-heading) works on the site and on GitHub.
myst_heading_anchors = 4
myst_enable_extensions = ["colon_fence"]

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
# Names documented by the reference are those of scoop.*, scoop_core.Executor,
# scoop_core.errors and the plugin interfaces; a role naming an internal
# module in a docstring stays plain text instead of failing the build.
nitpicky = False

html_theme = "furo"
html_title = f"scoop-core {release}"

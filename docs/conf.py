"""Sphinx configuration: Markdown pages (MyST) plus an autodoc API reference.

Build: ``sphinx-build -W -b html docs docs/_build/html`` (warnings are errors, in CI too).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import supervisor  # noqa: E402

project = "trio-session-supervisor"
author = "trio-session-supervisor developers"
copyright = "2026, trio-session-supervisor developers"
release = version = supervisor.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "bench/*.json", "reliability/*.json"]

# Markdown: GitHub-style anchors so links like `timeouts.md#idle_timeout` resolve.
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]

# Docstrings are Google style; `single backticks` name Python objects (as in trio and attrs).
default_role = "py:obj"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True  # "Attributes:" as fields, not duplicate attribute entries
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": True}

# No intersphinx: the build must work offline (CI has no network).

# furo, as attrs uses: maintained, readable on phones, light and dark. Code blocks are kept
# within 76 characters (tests/test_docs.py checks the landing page and the tutorial), which
# furo's content column shows without a scroll bar.
html_theme = "furo"
html_title = "trio-session-supervisor"
html_static_path: list[str] = []
html_theme_options: dict[str, Any] = {"navigation_with_keys": True}

# Pages listed in index.md's toctrees. Any other top-level page (reliability.md, or one added
# later) is appended to a "More" toctree, so a new page never breaks the -W build.
_LISTED = {
    "index",
    "tutorial",
    "operations",
    "api",
    "reference",
    "mcp",
    "design",
    "timeouts",
    "coming-from-typescript",
    "conformance",
    "benchmarks",
}


def _append_unlisted(app: Any, docname: str, source: list[str]) -> None:
    if docname != "index":
        return
    extra = sorted(
        path.stem
        for pattern in ("*.md", "*.rst")
        for path in HERE.glob(pattern)
        if path.stem not in _LISTED
    )
    if extra:
        source[0] += (
            "\n```{toctree}\n:caption: More\n:maxdepth: 2\n\n" + "\n".join(extra) + "\n```\n"
        )


def setup(app: Any) -> None:
    app.connect("source-read", _append_unlisted)

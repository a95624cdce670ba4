"""Sphinx configuration of the course site. scripts/build_site.py copies this file into the staged source folder
(build/site-src/) together with the executed notebooks and the generated pages, and writes _site.json beside it
(the repository URL from pyproject.toml and where the offline MathJax lies)."""

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SITE = json.loads((HERE / "_site.json").read_text())
sys.path.insert(0, SITE["root"])   # lfm_core for the reference pages, from the checkout being built

project = "Flow matching in latent space"
author = "lfm-core maintainers"
copyright = "lfm-core maintainers, MIT licence"

extensions = ["myst_nb", "sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.mathjax"]   # napoleon: Args:/Returns:
exclude_patterns = ["_build", "lab/**", "_site.json", "**.ipynb_checkpoints"]
myst_enable_extensions = ["dollarmath", "amsmath", "html_image"]
myst_heading_anchors = 3
suppress_warnings = ["myst.header"]   # notebooks start their sections at ## under a # title; that is intended

# the notebooks were executed by `python3 tasks.py run`; the site shows those outputs and never runs them again
nb_execution_mode = "off"
nb_merge_streams = True
# The live controls (lfm_core.explore.slider) need a kernel; a static page cannot run them. No widget scripts are
# loaded (they would come from a CDN), and each widget shows its text instead: what it is, and that the strip
# above it, a figure, shows the same values.
nb_ipywidgets_js = {}
nb_mime_priority_overrides = [("*", "application/vnd.jupyter.widget-view+json", None)]
nb_code_prompt_show = "Show code cell {type}"

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}

# MathJax 3 served from the site itself (copied from the sphinx-mathjax-offline package), never from a CDN
mathjax_path = "mathjax/tex-chtml.js"

html_theme = "sphinx_book_theme"
html_title = "Flow matching in latent space"
html_static_path = ["_static", SITE["mathjax_parent"]]
html_css_files = ["course.css"]
html_favicon = "_static/favicon.svg"
html_context = {"default_mode": "light"}
html_last_updated_fmt = None
html_show_sourcelink = False
html_copy_source = True
html_theme_options = {
    "repository_url": SITE["repository"],
    "repository_branch": "main",
    "use_repository_button": True,
    "use_download_button": True,
    "use_fullscreen_button": False,
    "show_toc_level": 2,
    "navigation_with_keys": False,
}

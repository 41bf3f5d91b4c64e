"""Sphinx configuration of the cbackprop documentation.

Build (from the repository root, after ``pip install -e ".[docs]"``)::

    python -m sphinx -W -b html docs docs/_build/html

``-D plot_gallery=0`` skips running the examples for a fast local build (CI
runs them). The package is imported from the repository root, where the
editable install put the compiled extensions.
"""
import os
import re
import sys
from pathlib import Path

import matplotlib

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
matplotlib.use("Agg")
# Timings in the gallery are of one BLAS thread, as everywhere in the docs.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import cbackprop  # noqa: E402

project = "cbackprop"
author = "The cbackprop developers"
copyright = "2026, The cbackprop developers"
release = cbackprop.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
]
templates_path = ["_templates"]
exclude_patterns = ["_build", "sg_execution_times.rst", "**/*.ipynb", "**/*.py", "**/*.zip",
                    "**/*.codeobj.json"]
default_role = "literal"
nitpicky = False

# API reference: one page per public name, generated from the docstrings.
autosummary_generate = True
autosummary_imported_members = False
autodoc_default_options = {"members": True}
autodoc_typehints = "none"

# numpydoc renders the Parameters / Returns / Examples sections; members are
# listed by the autosummary templates, not by numpydoc (no duplicate entries).
numpydoc_show_class_members = False
numpydoc_show_inherited_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
# Docstring style is checked in the review, not by the build.
numpydoc_validation_checks = set()

sphinx_gallery_conf = {
    "examples_dirs": str(ROOT / "examples"),
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "within_subsection_order": "FileNameSortKey",
    "download_all_examples": False,
    "remove_config_comments": True,
    "matplotlib_animations": False,
    "reset_modules": ("matplotlib",),
    "doc_module": ("cbackprop",),
    "backreferences_dir": None,
    "abort_on_example_error": True,
    "show_memory": False,
    "min_reported_time": 1,
}

html_theme = "pydata_sphinx_theme"
html_title = f"cbackprop {release}"
html_static_path = []
html_theme_options = {
    "github_url": "https://github.com/cbackprop/cbackprop",
    "navbar_align": "left",
    "show_toc_level": 2,
    "secondary_sidebar_items": ["page-toc"],
}
html_show_sourcelink = False
html_context = {"default_mode": "light"}


# Names with a trailing underscore (fitted attributes such as ``network_``)
# written as plain text in a docstring, as in a type like "ndarray of shape
# (n_features_in_,)", would be read as hyperlink references: escape them
# outside inline markup, after numpydoc has rendered the sections.
_INLINE = re.compile(r"(``.+?``|`.+?`_?_?|\*\*.+?\*\*)")
_TRAILING = re.compile(r"(\w)_(?=[\s,.;:)\]]|$)")


def _escape_trailing_underscores(app, what, name, obj, options, lines):
    for i, line in enumerate(lines):
        if line.lstrip().startswith(".. "):
            continue
        parts = _INLINE.split(line)
        parts[::2] = [_TRAILING.sub(r"\1\\_", p) for p in parts[::2]]
        lines[i] = "".join(parts)


# scikit-learn's metadata-routing methods (set_fit_request, ...) are generated
# on every estimator class; their docstrings refer to scikit-learn's own docs.
def _skip_sklearn_routing(app, what, name, obj, skip, options):
    if name == "get_metadata_routing" or (name.startswith("set_") and name.endswith("_request")):
        return True
    return None


def setup(app):
    app.connect("autodoc-process-docstring", _escape_trailing_underscores, priority=600)
    app.connect("autodoc-skip-member", _skip_sklearn_routing)

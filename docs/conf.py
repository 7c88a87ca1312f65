# Sphinx configuration: pip install '.[docs]' && python -m sphinx -W docs docs/_build/html
# (the diagrams need Graphviz's dot: apt-get install graphviz)
import os
import sys

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "_ext"))
# The checkout's ockamtw, when it is not the installed one.
if os.path.isdir(os.path.join(here, "..", "ockamtw")):
    sys.path.insert(0, os.path.dirname(here))

project = "ockamtw"
extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.graphviz", "epytext"]
source_suffix = {".md": "markdown"}
master_doc = "index"
exclude_patterns = ["_build", "_ext"]
myst_heading_anchors = 3
graphviz_output_format = "svg"
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_typehints = "none"

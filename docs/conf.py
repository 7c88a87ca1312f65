# Sphinx configuration: pip install '.[docs]' && sphinx-build docs docs/_build
project = "ockamtw"
extensions = ["myst_parser"]
source_suffix = {".md": "markdown"}
master_doc = "index"
exclude_patterns = ["_build"]

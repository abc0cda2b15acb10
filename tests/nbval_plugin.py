"""pytest plugin for the nbval run of the book's notebooks (loaded with ``-p tests.nbval_plugin``).

scripts/test.sh runs::

    pytest -p tests.nbval_plugin --nbval-lax --nbval-current-env --dist loadfile -n 2 book/*.ipynb

``--nbval-lax`` executes every cell and compares the outputs only of cells that start with
``# NBVAL_CHECK_OUTPUT``. This plugin keeps stderr out of those comparisons: warnings and progress
bars (tqdm, transformers' weight loading) go to stderr and differ from run to run, while the
numbers a chapter relies on are printed to stdout. Images are never compared by nbval.
The notebooks are collected from book/, outside tests/, so tests/conftest.py does not apply here.
"""

import os

for _name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_name, "1")

IGNORED_OUTPUT_KEYS = ("stderr",)


def pytest_collection_modifyitems(session, config, items):
    notebooks = {item.parent for item in items if type(item).__name__ == "IPyNbCell"}
    for notebook in notebooks:
        notebook.skip_compare = tuple(notebook.skip_compare) + IGNORED_OUTPUT_KEYS

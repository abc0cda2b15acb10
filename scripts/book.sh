#!/usr/bin/env bash
# The README's first command: set up .venv (scripts/setup.sh), fetch MathJax and the widget
# manager from the npm registry, execute the notebooks as _config.yml says and build the HTML
# book into _build/html (open _build/html/index.html). Extra arguments go to
# scripts/build_book.py (--no-execute: show the committed outputs; --all: rebuild every page).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python scripts/build_book.py "$@"

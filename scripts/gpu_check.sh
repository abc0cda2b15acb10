#!/usr/bin/env bash
# The one-shot GPU check (issue 14): see scripts/gpu_check.py. On a GPU machine, in under 8 minutes:
#
#   bash scripts/gpu_check.sh             # writes book/data/bench/gpu_check_<date>_<gpu>.json
#   bash scripts/gpu_check.sh --dry-run   # every step on the CPU with tiny sizes (< 2 minutes)
#
# Options are passed through (--out-dir DIR, --only STEP..., --chapters CHAPTER...).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python
exec "$PY" scripts/gpu_check.py --command "bash scripts/gpu_check.sh $*" "$@"

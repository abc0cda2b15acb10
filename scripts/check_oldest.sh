#!/usr/bin/env bash
# The lower bounds of pyproject.toml, tested (issue #14): lmkit's unit tests in a separate
# environment with the oldest releases it allows of the libraries that change most under it
# (transformers 4.x and its tokenizers, NumPy 2.0), everything else as new as those allow,
# torch as locked. Part of the README's test command; never touches .venv.
#
#   bash scripts/check_oldest.sh [pytest args]
#
# Environment: VENV (default .venv-oldest), TORCH_INDEX_URL (as for setup.sh).
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv-oldest}
PY=$VENV/bin/python
# The oldest releases pyproject.toml allows (keep in step with its lower bounds; a test checks).
OLDEST=(transformers==4.45.2 tokenizers==0.20.0 numpy==2.0.2)
TORCH=$(grep -E '^torch==' requirements/torch.txt | head -n 1 | cut -d= -f3)
t0=$(date +%s)

stamp=$VENV/.oldest-stamp
want="${OLDEST[*]} torch==$TORCH $(sha256sum pyproject.toml | cut -c1-16)"
if ! { [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; }; then
  rm -rf "$VENV"
  python3 -m venv "$VENV" || exit 1
  "$PY" -m pip install -q --upgrade pip || exit 1
  "$PY" -m pip install -q --no-deps "torch==$TORCH" ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} || exit 1
  "$PY" -m pip install -q -e ".[apps,serve,test]" "torch==$TORCH" "${OLDEST[@]}" \
    ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} || exit 1
  "$PY" -m pip check || exit 1
  echo "$want" > "$stamp"
fi
"$PY" -c "import numpy, tokenizers, torch, transformers; print('check_oldest: transformers', \
transformers.__version__, '| tokenizers', tokenizers.__version__, '| numpy', numpy.__version__, \
'| torch', torch.__version__)"
echo "check_oldest: environment ready in $(( $(date +%s) - t0 )) s"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=1
# The unit tests (no notebooks, book build, browser or GPU-check runs, which need the book tools:
# those run with the locked versions).
"$PY" -m pytest -q -p no:cacheprovider tests \
  --ignore=tests/test_notebooks_papermill.py --ignore=tests/test_book_build.py \
  --ignore=tests/test_browser.py --ignore=tests/test_lock.py --ignore=tests/test_style.py \
  --ignore=tests/test_environment_yml.py --ignore=tests/test_book_conventions.py \
  --ignore=tests/test_gpu_check.py "$@"

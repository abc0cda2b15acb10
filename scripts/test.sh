#!/usr/bin/env bash
# The README's test command: every test of the project, as CI runs it (.ci/run calls this).
#
#   bash scripts/test.sh
#
# 1. set-up: .venv with exactly requirements/lock.txt (scripts/setup.sh), offline JavaScript for
#    the HTML book (scripts/fetch_static.py);
# 2. pytest: lmkit's unit tests, the book's conventions, and every notebook of _toc.yml run
#    once by papermill, which writes run time and peak memory to the status page
#    (book/status.md) and compares the outputs of `# NBVAL_CHECK_OUTPUT` cells with the
#    committed ones (tests/notebook_outputs.py);
# 3. scripts/colab_check.sh: lmkit installed non-editable from a clone of HEAD into a fresh
#    environment with a transformers 4.x (which it must keep), chapters run from a copy of book/;
#    scripts/check_oldest.sh: the unit tests with the oldest transformers, tokenizers and NumPy
#    that pyproject.toml allows;
# 4. pytest: the book build (after 2, so it shows the fresh status page; execution off, since
#    2 executed every notebook), a failing cell failing a build, and every page opened
#    offline in headless Chromium.
# All runs happen even if one fails; the exit status is non-zero if any failed, and the output
# ends with pytest's summary line (that of a failed run, if any).
#
# Environment: PYTEST_JOBS (default 2) parallel workers; LMKIT_NOTEBOOK_TIMEOUT (s, default 300)
# per notebook; LMKIT_REQUIRE_BROWSER=1 fails, rather than skips, the browser test without
# Chromium; extra arguments are passed to every pytest run (e.g. -x).
set -uo pipefail
cd "$(dirname "$0")/.."

export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} HF_DATASETS_OFFLINE=${HF_DATASETS_OFFLINE:-1}
export TRANSFORMERS_OFFLINE=${TRANSFORMERS_OFFLINE:-1}
JOBS=${PYTEST_JOBS:-2}
# One BLAS/OpenMP thread per process: two workers then fill two cores without oversubscription,
# and the notebooks re-derive their checked numbers the way they were computed (single-threaded).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
PY=.venv/bin/python
LOGS=_build/test-logs

t0=$(date +%s)
bash scripts/setup.sh || { echo "test: set-up failed"; exit 1; }
"$PY" scripts/fetch_static.py || { echo "test: fetching the book's JavaScript failed"; exit 1; }
mkdir -p "$LOGS"
mapfile -t NOTEBOOKS < <("$PY" tests/book_toc.py)
start=$(date +%s)
echo "=== test.sh: set-up took $(( start - t0 )) s; ${#NOTEBOOKS[@]} notebooks in _toc.yml"

names=() codes=() summaries=() seconds=()
run() {  # run NAME PYTEST-ARGS...: one pytest invocation, logged; remembers its summary line
  local name=$1; shift
  echo
  echo "=== [$name] $(date -u +%H:%M:%S) pytest $*"
  local t=$(date +%s)
  "$PY" -m pytest "$@" 2>&1 | tee "$LOGS/$name.log"
  local rc=${PIPESTATUS[0]}
  seconds+=("$(( $(date +%s) - t ))")
  local summary
  summary=$(grep -E '^=+ .*( in [0-9.]+s).* =+$' "$LOGS/$name.log" | tail -n 1)
  names+=("$name") codes+=("$rc") summaries+=("${summary:-(no pytest summary; exit $rc)}")
}

run_cmd() {  # run_cmd NAME COMMAND...: a non-pytest stage, logged; its last line is the summary
  local name=$1; shift
  echo
  echo "=== [$name] $(date -u +%H:%M:%S) $*"
  local t=$(date +%s)
  "$@" 2>&1 | tee "$LOGS/${name%% *}.log"
  local rc=${PIPESTATUS[0]}
  seconds+=("$(( $(date +%s) - t ))")
  names+=("$name") codes+=("$rc") summaries+=("$(tail -n 1 "$LOGS/${name%% *}.log")")
}

xdist=()
[ "$JOBS" -gt 1 ] && xdist=(-n "$JOBS")

run "unit tests, conventions, notebooks (papermill)" "${xdist[@]}" tests \
    --ignore=tests/test_book_build.py --ignore=tests/test_browser.py --durations=15 "$@"
# lmkit as a Colab user installs it (non-editable, next to a transformers 4.x), chapters run
# from a copy of book/; and the unit tests with the oldest releases pyproject.toml allows.
run_cmd "colab-like install and chapters" bash scripts/colab_check.sh
run_cmd "oldest-versions unit tests" bash scripts/check_oldest.sh "${xdist[@]}"
run "book build, browser" tests/test_book_build.py tests/test_browser.py "$@"

echo
echo "=== test.sh: $(( $(date +%s) - start )) s of tests after set-up; logs in $LOGS/"
status=0
failed_last=()
for i in "${!names[@]}"; do
  if [ "${codes[$i]}" -eq 0 ]; then
    echo "[${names[$i]}] ok (${seconds[$i]} s)"
    echo "${summaries[$i]}"
  else
    status=1
    failed_last+=("$i")
  fi
done
for i in "${failed_last[@]}"; do
  echo "[${names[$i]}] FAILED (exit ${codes[$i]}; ${seconds[$i]} s)"
  echo "${summaries[$i]}"
done
exit $status

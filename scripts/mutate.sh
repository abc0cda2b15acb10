#!/usr/bin/env bash
# Mutation testing of lmkit's core with mutmut (configured in pyproject.toml, [tool.mutmut]):
# mutmut plants one small bug at a time (a changed operator, constant or condition) in a copy of
# the modules under mutants/ and runs the tests that cover it; a mutant the tests do not notice
# "survives". Not part of CI: a full run takes hours on 2 cores. Results are kept, so a killed
# run continues where it stopped. After changing tests, start clean (`rm -rf mutants`): mutmut keeps
# which tests cover which function, and a stale map runs the wrong tests (mutants then "survive").
# Code that runs only in subprocesses (torchrun workers, the CLI) cannot be mapped: "no tests".
#
#   bash scripts/mutate.sh                      # every module of [tool.mutmut].only_mutate
#   bash scripts/mutate.sh lmkit/optim.py ...   # only these modules
#   make mutate                                 # the same as the first line
#
# Ends with the score of each module (scripts/mutation_report.py), also written to
# _build/mutation/report.txt; the surviving mutants are listed there (see one with
# `.venv/bin/mutmut show NAME`).
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null || { echo "mutate: set-up failed"; exit 1; }
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=1

patterns=()
for module in "$@"; do  # lmkit/quant/core.py -> mutants named lmkit.quant.core.*
  [ -f "$module" ] || { echo "mutate: no such module: $module" >&2; exit 2; }
  name=${module%.py}; patterns+=("${name//\//.}.*")
done
.venv/bin/mutmut run --max-children "${PYTEST_JOBS:-2}" "${patterns[@]}"
mkdir -p _build/mutation
.venv/bin/python scripts/mutation_report.py "$@" | tee _build/mutation/report.txt

#!/usr/bin/env bash
# Drift check: install the newest releases that pyproject.toml allows (not the lock; torch stays
# at the locked version) into .venv-latest, and run the unit tests and the book's conventions
# there. It shows, in a log, what the next `UPGRADE=1 make lock` would break, without touching
# the locked .venv that the book and CI use. Notebooks are not executed here.
#
#   bash scripts/check_latest.sh        # or: make check-latest
#
# Writes _build/test-logs/latest-versions.txt (each package whose newest release differs from the
# lock: "name locked -> newest") and _build/test-logs/latest.log (pytest); exits with pytest's
# status.
set -uo pipefail
cd "$(dirname "$0")/.."

VENV=.venv-latest
LOGS=_build/test-logs
mkdir -p "$LOGS"
rm -rf "$VENV"
VENV=$VENV UNLOCKED=1 bash scripts/setup.sh || { echo "check_latest: installing failed"; exit 1; }

"$VENV/bin/python" - requirements/lock.txt > "$LOGS/latest-versions.txt" <<'PYEOF'
import re, sys
from importlib.metadata import distributions
from pip._vendor.packaging.markers import Marker
from pip._vendor.packaging.utils import canonicalize_name
locked = {}
for line in open(sys.argv[1]):
    m = re.match(r"([A-Za-z0-9._-]+)==([^ ;]+)\s*(?:;(.*))?$", line.strip())
    if m and (m.group(3) is None or Marker(m.group(3)).evaluate()):
        locked[canonicalize_name(m.group(1))] = m.group(2)
installed = {canonicalize_name(d.metadata["Name"]): d.version for d in distributions()}
for name in sorted(locked):
    now = installed.get(name, "(not installed)")
    if now.split("+")[0] != locked[name]:
        print(f"{name} {locked[name]} -> {now}")
for name in sorted(set(installed) - set(locked) - {"lmkit"}):
    print(f"{name} (not in the lock) -> {installed[name]}")
PYEOF
echo "check_latest: $(wc -l < "$LOGS/latest-versions.txt") packages differ from the lock ($LOGS/latest-versions.txt):"
head -n 40 "$LOGS/latest-versions.txt"

export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=1
JOBS=${PYTEST_JOBS:-2}
"$VENV/bin/python" -m pytest -n "$JOBS" -q tests --ignore=tests/test_notebooks_papermill.py \
  --ignore=tests/test_book_build.py --ignore=tests/test_browser.py -p no:cacheprovider \
  --deselect tests/test_lock.py::test_installed_versions_are_the_locked_ones 2>&1 \
  | tee "$LOGS/latest.log"
rc=${PIPESTATUS[0]}
echo "check_latest: unit tests with the newest releases: $(tail -n 1 "$LOGS/latest.log") (exit $rc)"
exit "$rc"

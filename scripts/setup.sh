#!/usr/bin/env bash
# Create the local virtual environment .venv (if missing) and install exactly the versions of
# requirements/lock.txt: lmkit (editable) with the tools that build and test the book. Safe to
# re-run: it does nothing when neither the lock nor pyproject.toml has changed.
#
#   bash scripts/setup.sh
#   VENV=.venv-latest UNLOCKED=1 bash scripts/setup.sh   # newest allowed releases, torch as locked
#                                                        # (what scripts/check_latest.sh tests)
#
# PyTorch is installed first, at the lock's version: on a machine without an NVIDIA GPU the CPU
# build (these project machines have that wheel on local disk; elsewhere set TORCH_INDEX_URL,
# e.g. https://download.pytorch.org/whl/cpu, to avoid the multi-GB CUDA wheel on Linux); with a
# GPU (nvidia-smi works) the CUDA build from PyPI with its CUDA libraries. Everything else is
# installed from the lock without resolving (--no-deps), then checked with `pip check`.
# The lock is regenerated with `make lock` (scripts/lock.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
LOCK=requirements/lock.txt

if ! command -v "$PYTHON" >/dev/null; then
  echo "setup: $PYTHON not found; install Python 3.10 or newer" >&2; exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"

stamp="$VENV/.lmkit-setup"
want="$(cat pyproject.toml "$LOCK" | sha256sum | cut -c1-16) unlocked=${UNLOCKED:-0}"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$PY" -c "import lmkit, torch" 2>/dev/null; then
  echo "setup: $VENV is up to date with $LOCK"
  exit 0
fi

# The lock's pins that apply to this Python, as pip evaluates the markers.
pin() { "$PY" - "$LOCK" "$1" <<'PYEOF'
import re, sys
from pip._vendor.packaging.markers import Marker
for line in open(sys.argv[1]):
    m = re.match(r"(%s)==([^ ;]+)\s*(?:;(.*))?$" % re.escape(sys.argv[2]), line.strip())
    if m and (m.group(3) is None or Marker(m.group(3)).evaluate()):
        print(m.group(2)); break
PYEOF
}
TORCH=$(pin torch)
[ -n "$TORCH" ] || { echo "setup: $LOCK has no torch pin for this Python" >&2; exit 1; }

"$PY" -m pip install -q "pip==$(pin pip)"
have=$("$PY" -c "import torch; print(torch.__version__.split('+')[0])" 2>/dev/null || true)
if [ "$have" != "$TORCH" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "setup: NVIDIA GPU found: installing torch==$TORCH (CUDA build)"
    "$PY" -m pip install -q "torch==$TORCH"
  else
    echo "setup: no NVIDIA GPU: installing the CPU build of torch==$TORCH"
    "$PY" -m pip install -q --no-deps "torch==$TORCH" ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"}
  fi
fi
if [ "${UNLOCKED:-0}" = 1 ]; then
  echo "setup: installing lmkit (editable) with the newest releases pyproject.toml allows (torch==$TORCH kept)"
  echo "torch==$TORCH" > "$VENV/torch-constraint.txt"
  "$PY" -m pip install -q --upgrade --upgrade-strategy eager -c "$VENV/torch-constraint.txt" \
    -e ".[apps,serve,book,test]" pip setuptools wheel
else
  echo "setup: installing $LOCK, then lmkit (editable)"
  "$PY" -m pip install -q --no-deps -r "$LOCK"
  "$PY" -m pip install -q --no-deps --no-build-isolation -e .
fi
"$PY" -m pip check
echo "$want" > "$stamp"
"$PY" -c "import lmkit, torch, transformers; print('setup: lmkit', lmkit.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__)"

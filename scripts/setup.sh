#!/usr/bin/env bash
# Create the local virtual environment .venv (if missing) and install lmkit with the tools that
# build and test the book. Safe to re-run: it does nothing when pyproject.toml has not changed.
#
#   bash scripts/setup.sh            # extras apps,serve,book,test
#   EXTRAS=apps,book bash scripts/setup.sh
#
# PyTorch: on a machine without an NVIDIA GPU the CPU build is installed first (torch==2.13.0;
# these project machines have that wheel on local disk; elsewhere set TORCH_INDEX_URL, e.g.
# https://download.pytorch.org/whl/cpu, to avoid the multi-GB CUDA wheel on Linux). With a GPU
# (nvidia-smi works) plain `pip install torch` is used. An importable torch is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
EXTRAS=${EXTRAS:-apps,serve,book,test}
CPU_TORCH=${CPU_TORCH:-torch==2.13.0}

if ! command -v "$PYTHON" >/dev/null; then
  echo "setup: $PYTHON not found; install Python 3.10 or newer" >&2; exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"

stamp="$VENV/.lmkit-setup"
want="$(cat pyproject.toml | sha256sum | cut -c1-16) $EXTRAS"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$PY" -c "import lmkit, torch" 2>/dev/null; then
  echo "setup: $VENV is up to date"
  exit 0
fi

"$PY" -m pip install -q --upgrade pip
if ! "$PY" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "setup: NVIDIA GPU found: installing torch"
    "$PY" -m pip install torch
  else
    echo "setup: no NVIDIA GPU: installing the CPU build ($CPU_TORCH)"
    "$PY" -m pip install "$CPU_TORCH" ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"}
  fi
fi
echo "setup: installing lmkit[$EXTRAS] (editable)"
"$PY" -m pip install -q -e ".[$EXTRAS]"
echo "$want" > "$stamp"
"$PY" -c "import lmkit, torch; print('setup: lmkit', lmkit.__version__, '| torch', torch.__version__)"

#!/usr/bin/env bash
# Regenerate requirements/lock.txt, the exact versions that scripts/setup.sh installs (and so both
# README commands and CI), from pyproject.toml (every extra) and requirements/tools.in.
#
#   bash scripts/lock.sh             # keep every pin that still satisfies pyproject.toml
#   UPGRADE=1 bash scripts/lock.sh   # move every package to its newest allowed release
#   TORCH=2.14.1 bash scripts/lock.sh  # change the PyTorch release (requirements/torch.txt)
#
# The lock is universal (Python >= 3.10, Linux/macOS/Windows: uv writes environment markers where
# versions differ). PyTorch's CUDA packages (nvidia-*, triton, cuda-*) are left out: setup.sh
# installs torch itself, the CPU wheel without a GPU and the CUDA build with one, at the locked
# version. After changing the lock, re-execute the notebooks whose checked outputs move and run
# `bash scripts/test.sh`; `bash scripts/check_latest.sh` shows what the newest releases would break.
set -euo pipefail
cd "$(dirname "$0")/.."

LOCK=requirements/lock.txt
UV=${UV:-.venv/bin/uv}
[ -x "$UV" ] || UV=$(command -v uv) || { echo "lock: uv not found: run bash scripts/setup.sh first" >&2; exit 1; }
# PyTorch moves only when asked: requirements/torch.txt holds its pin.
[ -n "${TORCH:-}" ] && echo "torch==$TORCH" > requirements/torch.txt
TORCH=$(sed -nE 's/^torch==([^ ;]+).*/\1/p' requirements/torch.txt)
[ -n "$TORCH" ] || { echo "lock: requirements/torch.txt has no torch==x.y.z; set TORCH=2.x.y" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
compile=("$UV" pip compile pyproject.toml requirements/tools.in --all-extras --universal
         --python-version 3.10 -c requirements/torch.txt --quiet)
[ "${UPGRADE:-0}" = 1 ] && compile+=(--upgrade)

# Which of torch's dependencies are its CUDA runtime: resolve torch alone, keep those names.
"$UV" pip compile requirements/torch.txt --universal --python-version 3.10 --quiet --no-header \
  --no-annotate -o "$tmp/torch-deps.txt"
no_emit=()
for name in $(grep -oE '^(nvidia-[A-Za-z0-9-]+|triton|cuda-[A-Za-z-]+)' "$tmp/torch-deps.txt" | sort -u); do
  no_emit+=(--no-emit-package "$name")
done

"${compile[@]}" "${no_emit[@]}" --custom-compile-command "bash scripts/lock.sh" -o "$LOCK"
echo "lock: wrote $LOCK ($(grep -cE '^[A-Za-z0-9]' "$LOCK") pins; torch $TORCH)"

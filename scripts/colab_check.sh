#!/usr/bin/env bash
# The book as a Colab user gets it (issue #14): lmkit installed NON-editable from a clone into a
# fresh virtual environment that already has a transformers 4.x (as a Colab runtime does), the
# chapters run from a copy of book/ elsewhere, so nothing can rely on the checkout's layout.
#
#   bash scripts/colab_check.sh            # the committed HEAD, the chapters below
#   CHAPTERS="ch25_evaluating_base_models" bash scripts/colab_check.sh
#
# It fails if installing lmkit changes the runtime's transformers (pip must not upgrade it), or
# if a chapter fails to run (papermill, offline). Environment: COLAB_CHECK_DIR (work folder,
# default a new temporary one), COLAB_TRANSFORMERS (the preinstalled transformers, default
# 4.57.6), COLAB_SOURCE=worktree (the working tree's tracked files instead of HEAD; for trying a
# change before committing it), TORCH_INDEX_URL (as for setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=${COLAB_CHECK_DIR:-$(mktemp -d -t lmkit-colab-XXXXXX)}
PRE_TRANSFORMERS=${COLAB_TRANSFORMERS:-4.57.6}
# One chapter per part, and every chapter that reads the book's data files.
CHAPTERS=${CHAPTERS:-"ch00_environment ch04_self_attention ch09_gpt_model ch15_quantization
  ch18_classification_sentiment ch23_qa_summarization_dialogue ch25_evaluating_base_models
  ch27_privacy_fairness appD_errata"}
t0=$(date +%s)
mkdir -p "$WORK"
echo "colab_check: working in $WORK"

rm -rf "$WORK/clone"
if [ "${COLAB_SOURCE:-}" = worktree ]; then
  mkdir -p "$WORK/clone"
  git ls-files -z --cached --others --exclude-standard \
    | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done \
    | xargs -0 tar cf - | tar xf - -C "$WORK/clone"
else
  git clone -q --depth 1 "file://$ROOT" "$WORK/clone"
fi

PY=$WORK/venv/bin/python
[ -x "$PY" ] || python3 -m venv "$WORK/venv"
TORCH=$(grep -E '^torch==' requirements/torch.txt | head -n 1 | cut -d= -f3)
pip_q() {  # pip install, quiet; without the warnings this machine's pip config prints per package
  "$PY" -m pip install -q "$@" 2>&1 | grep -v "^WARNING: Location .* is ignored" || true
  return "${PIPESTATUS[0]}"
}
pip_q --upgrade pip
# The runtime: torch (CPU build here, as setup.sh installs it) and a transformers 4.x.
pip_q --no-deps "torch==$TORCH" ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"}
pip_q "torch==$TORCH" "transformers==$PRE_TRANSFORMERS" ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"}
# What the chapters' bootstrap cell runs on Colab, plus the notebook runner.
pip_q "$WORK/clone[apps,serve]" papermill ipykernel
have=$("$PY" -c "import transformers; print(transformers.__version__)")
if [ "$have" != "$PRE_TRANSFORMERS" ]; then
  echo "colab_check: FAILED: installing lmkit changed the runtime's transformers" \
       "$PRE_TRANSFORMERS -> $have"
  exit 1
fi
(cd "$WORK" && "$PY" - <<'EOF'
import lmkit, pathlib
where = pathlib.Path(lmkit.__file__).resolve()
assert "site-packages" in where.parts, f"lmkit is not installed non-editable: {where}"
print(f"colab_check: lmkit from {where.parent}")
EOF
)
echo "colab_check: environment ready in $(( $(date +%s) - t0 )) s (transformers $have kept)"

rm -rf "$WORK/book"
cp -r "$WORK/clone/book" "$WORK/book"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=1
failed=()
for name in $CHAPTERS; do
  nb=$WORK/book/$name.ipynb
  [ -f "$nb" ] || { echo "colab_check: no chapter $name"; failed+=("$name"); continue; }
  t=$(date +%s)
  if (cd "$WORK/book" && "$PY" "$WORK/clone/tests/papermill_run.py" "$nb" "$WORK/$name.out.ipynb" \
        --kernel python3 --cwd "$WORK/book" --execution-timeout 600 > "$WORK/$name.log" 2>&1); then
    echo "colab_check: $name ok ($(( $(date +%s) - t )) s)"
  else
    echo "colab_check: $name FAILED ($(( $(date +%s) - t )) s); the end of $WORK/$name.log:"
    grep -v "WARNING | Kernel is running over TCP" "$WORK/$name.log" | tail -n 25
    failed+=("$name")
  fi
done
echo "colab_check: $(( $(date +%s) - t0 )) s in all"
[ "${#failed[@]}" -eq 0 ] || { echo "colab_check: FAILED: ${failed[*]}"; exit 1; }
echo "colab_check: passed"

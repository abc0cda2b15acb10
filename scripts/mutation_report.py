#!/usr/bin/env python3
"""The mutation score of each module, from mutmut's results under mutants/ (scripts/mutate.sh).

    python scripts/mutation_report.py [lmkit/optim.py ...]    # default: every module with results

Score = killed / checked. A timeout counts as killed (the mutant broke the code); a mutant no test
covers ("no tests") counts as surviving: nothing would notice that bug. Mutants not checked yet
(an interrupted run) are left out and counted apart. The surviving mutants are listed by name.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = 0.80
KILLED = {1, 3, 24, -24, 36, 37, 152, 255, -11, -9}  # mutmut's exit codes: failed, timeout, crash
UNCHECKED = {None, 2, 34}  # not run yet, interrupted, skipped


def module_results(meta: Path) -> dict[str, int | None]:
    return json.loads(meta.read_text(encoding="utf-8"))["exit_code_by_key"]


def main(modules: list[str]) -> int:
    metas = (
        [ROOT / "mutants" / f"{m}.meta" for m in modules]
        if modules
        else sorted((ROOT / "mutants" / "lmkit").rglob("*.py.meta"))
    )
    below = 0
    print(f"{'module':32s} {'killed':>7s} {'checked':>8s} {'score':>6s} {'unchecked':>10s}")
    survivors = []
    for meta in metas:
        if not meta.exists():
            print(
                f"{meta.relative_to(ROOT / 'mutants').with_suffix('')}: "
                "no results (run scripts/mutate.sh)"
            )
            below += 1
            continue
        codes = module_results(meta)
        checked = {k: v for k, v in codes.items() if v not in UNCHECKED}
        killed = sum(v in KILLED for v in checked.values())
        score = killed / len(checked) if checked else 0.0
        below += score < TARGET
        name = str(meta.relative_to(ROOT / "mutants").with_suffix(""))
        print(
            f"{name:32s} {killed:7d} {len(checked):8d} {score:6.0%} {len(codes) - len(checked):10d}"
            + ("" if score >= TARGET else f"  below {TARGET:.0%}")
        )
        survivors += sorted(k for k, v in checked.items() if v not in KILLED)
    if survivors:
        print(f"\nsurviving mutants ({len(survivors)}; see one with: .venv/bin/mutmut show NAME):")
        print("\n".join(f"  {s}" for s in survivors))
    return 1 if below else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

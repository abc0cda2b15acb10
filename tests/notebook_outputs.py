"""The checked outputs of a notebook: what a re-execution must reproduce exactly.

A code cell whose first line is ``# NBVAL_CHECK_OUTPUT`` (the marker of nbval, whose comparison
this follows) prints numbers the chapter's text relies on. tests/test_notebooks_papermill.py runs
every notebook once and compares the executed copy's checked cells with the committed ones:

- stdout is compared as one text (how ``print`` calls split it into stream outputs varies);
- stderr is not: warnings and progress bars differ from run to run;
- rich outputs are compared per MIME type, except images and widget views (their bytes and model
  ids change with every run);
- an error is compared by its name and value, not its traceback.
"""

from __future__ import annotations

import difflib

MARKER = "# NBVAL_CHECK_OUTPUT"
UNCOMPARED = (
    "image/png",
    "image/jpeg",
    "image/svg+xml",
    "application/vnd.jupyter.widget-view+json",
)


def _text(value) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


def is_checked(cell) -> bool:
    return cell["cell_type"] == "code" and _text(cell["source"]).lstrip().startswith(MARKER)


def comparable(outputs) -> dict[str, list[str]]:
    """``{"stdout": [text], mime type: [text, ...], "error": ["Name: value"]}`` of a cell."""
    out: dict[str, list[str]] = {}
    stdout = "".join(
        _text(o["text"]) for o in outputs if o["output_type"] == "stream" and o["name"] == "stdout"
    )
    if stdout:
        out["stdout"] = [stdout]
    for o in outputs:
        if o["output_type"] in ("execute_result", "display_data"):
            for mime, value in o.get("data", {}).items():
                if mime not in UNCOMPARED:
                    out.setdefault(mime, []).append(_text(value))
        elif o["output_type"] == "error":
            out.setdefault("error", []).append(f"{o['ename']}: {o['evalue']}")
    return out


def differences(committed, executed) -> list[str]:
    """One message per checked cell of ``committed`` whose outputs ``executed`` does not reproduce
    (both notebooks as nbformat dicts, with the same cells)."""
    if len(committed["cells"]) != len(executed["cells"]):
        return [f"{len(executed['cells'])} cells executed, {len(committed['cells'])} committed"]
    found = []
    for i, (ref, new) in enumerate(zip(committed["cells"], executed["cells"])):
        if not is_checked(ref):
            continue
        want, got = comparable(ref.get("outputs", [])), comparable(new.get("outputs", []))
        for key in sorted(set(want) | set(got)):
            if want.get(key) != got.get(key):
                diff = difflib.unified_diff(
                    "\n".join(want.get(key, [])).splitlines(),
                    "\n".join(got.get(key, [])).splitlines(),
                    "committed",
                    "executed",
                    lineterm="",
                )
                found.append(f"cell {i} ({key}) differs:\n" + "\n".join(diff))
    return found

"""The whole tree is formatted and lint-clean with ruff (settings in pyproject.toml).

Fix a failure with `make format` (ruff format, then ruff check --fix), then read what is left.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def ruff(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ruff", *args], cwd=cwd, capture_output=True, text=True
    )


@pytest.mark.parametrize("args", [("format", "--check", "."), ("check", ".")], ids=" ".join)
def test_ruff_passes_on_the_tree(args):
    result = ruff(*args)
    assert result.returncode == 0, (
        f"ruff {' '.join(args)} failed; run `make format`:\n{result.stdout}{result.stderr}"
    )


def test_ruff_uses_the_projects_settings_and_fails_on_bad_code(tmp_path):
    """The settings reach a file (line length 100), so the checks above can fail."""
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nx = [" + ", ".join(["1"] * 40) + "]\n")
    settings = ["--config", str(ROOT / "pyproject.toml")]
    assert ruff("format", "--check", *settings, str(bad), cwd=tmp_path).returncode == 1
    lint = ruff("check", *settings, str(bad), cwd=tmp_path)
    assert lint.returncode == 1 and "F401" in lint.stdout

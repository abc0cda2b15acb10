"""scripts/check_oldest.sh tests the lower bounds that pyproject.toml declares, not others."""

from __future__ import annotations

import re
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def oldest_pins() -> dict[str, Version]:
    text = (ROOT / "scripts" / "check_oldest.sh").read_text()
    line = re.search(r"^OLDEST=\((.*)\)$", text, re.M).group(1)
    return {name: Version(v) for name, v in (pin.split("==") for pin in line.split())}


def lower_bounds() -> dict[str, Version]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    bounds = {}
    for dep in map(Requirement, deps):
        for spec in dep.specifier:
            if spec.operator == ">=":
                bounds[dep.name] = Version(spec.version)
    return bounds


def test_each_pinned_oldest_release_is_the_declared_lower_bounds_series():
    pins, bounds = oldest_pins(), lower_bounds()
    assert {"transformers", "tokenizers", "numpy"} <= set(pins)
    for name, pin in pins.items():
        assert name in bounds, f"{name} is pinned in check_oldest.sh but has no lower bound"
        assert pin >= bounds[name], f"{name}=={pin} is below the declared >={bounds[name]}"
        assert pin.release[:2] == bounds[name].release[:2], (
            f"{name}=={pin} does not test the declared lower bound >={bounds[name]}: "
            "move the pin or the bound"
        )

"""environment.yml (conda, for readers) and pyproject.toml agree on the dependencies.

Every requirement of lmkit and of its apps, serve and book extras appears in environment.yml with
the same version range (from conda-forge under its conda name, or in the pip section), and
environment.yml asks for nothing else except Python, pip, Node.js and lmkit itself. lmkit's own
requirements are loose ranges (a lower bound, at most an upper bound on the next major version),
so that Colab's preinstalled packages satisfy them.
"""

from __future__ import annotations

import re

import pytest
import tomllib
import yaml
from book_toc import ROOT
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

EXTRAS_IN_ENV = ("apps", "serve", "book")
CONDA_TO_PYPI = {"pytorch": "torch"}
CONDA_ONLY = {"python", "pip", "nodejs"}
CONDA_SPEC = re.compile(r"^([A-Za-z0-9_.-]+)\s*(.*)$")


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def environment() -> dict:
    return yaml.safe_load((ROOT / "environment.yml").read_text(encoding="utf-8"))


def project_requirements() -> dict[str, SpecifierSet]:
    project = pyproject()["project"]
    reqs = list(project["dependencies"])
    for extra in EXTRAS_IN_ENV:
        reqs += project["optional-dependencies"][extra]
    out = {}
    for text in reqs:
        req = Requirement(text)
        out[canonicalize_name(req.name)] = req.specifier
    return out


def environment_requirements() -> tuple[dict[str, SpecifierSet], list[str], dict[str, str]]:
    """(requirements by PyPI name, pip lines that are not requirements, conda-only specs)."""
    reqs, other, conda_only = {}, [], {}
    for dep in environment()["dependencies"]:
        if isinstance(dep, dict):
            for line in dep.get("pip", []):
                if line.startswith("-"):
                    other.append(line)
                    continue
                req = Requirement(line)
                reqs[canonicalize_name(req.name)] = req.specifier
            continue
        name, spec = CONDA_SPEC.match(dep.strip()).groups()
        if name in CONDA_ONLY:
            conda_only[name] = spec
            continue
        reqs[canonicalize_name(CONDA_TO_PYPI.get(name, name))] = SpecifierSet(spec.replace(" ", ""))
    return reqs, other, conda_only


def test_environment_yml_shape():
    env = environment()
    assert env["name"]
    assert "conda-forge" in env["channels"]
    _, other, conda_only = environment_requirements()
    assert other == ["-e ."], "the pip section installs lmkit itself with '-e .'"
    assert "pip" in conda_only and "python" in conda_only


def test_python_versions_agree():
    _, _, conda_only = environment_requirements()
    requires = SpecifierSet(pyproject()["project"]["requires-python"])
    conda_python = SpecifierSet(conda_only["python"].replace(" ", ""))
    lower = {s.version for s in requires if s.operator == ">="}
    assert lower == {s.version for s in conda_python if s.operator == ">="}, (
        f"requires-python {requires} vs environment.yml python{conda_python}"
    )


def test_same_packages_and_ranges():
    project = project_requirements()
    env, _, _ = environment_requirements()
    assert sorted(set(project) - set(env)) == [], "in pyproject.toml, missing from environment.yml"
    assert sorted(set(env) - set(project)) == [], "in environment.yml, missing from pyproject.toml"
    different = {
        name: (str(project[name]), str(env[name])) for name in project if project[name] != env[name]
    }
    assert not different, f"version ranges differ (pyproject, environment.yml): {different}"


@pytest.mark.parametrize("name,spec", sorted(project_requirements().items()))
def test_lmkit_requirements_are_loose(name, spec):
    operators = {s.operator for s in spec}
    assert ">=" in operators, f"{name}: give a lower bound (>=)"
    assert operators <= {">=", "<", "!="}, f"{name}{spec}: no pins (==, ~=) in lmkit's requirements"

"""requirements/lock.txt (scripts/lock.sh) pins what
pyproject.toml asks for, and setup.sh installed it.

The lock is universal: a line may carry an environment marker (`; python_full_version >= '3.11'`);
only the lines whose marker holds for this interpreter apply here. PyTorch's CUDA packages are left
out of it on purpose (setup.sh installs torch itself: the CPU build without a GPU).
"""

from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, version

import pytest
import tomllib
from book_toc import ROOT
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

LOCK = ROOT / "requirements" / "lock.txt"
PIN = re.compile(r"^([A-Za-z0-9._-]+)==([^\s;]+)\s*(?:;(.*))?$")


def parse_lock(text: str) -> dict[str, str]:
    """The pins of a lock file that apply to this interpreter, {canonical name: version}."""
    pins: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = PIN.match(line)
        assert m, f"lock.txt line {number} is not 'name==version [; marker]': {line!r}"
        name, pinned, marker = m.groups()
        if marker is None or Marker(marker).evaluate():
            assert canonicalize_name(name) not in pins, f"{name} is pinned twice for this Python"
            pins[canonicalize_name(name)] = pinned
    return pins


def project_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs += extra
    return [Requirement(r) for r in reqs]


@pytest.fixture(scope="module")
def pins() -> dict[str, str]:
    return parse_lock(LOCK.read_text(encoding="utf-8"))


def test_every_requirement_is_pinned_within_its_range(pins):
    for req in project_requirements():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} (pyproject.toml) has no pin in lock.txt: run make lock"
        assert req.specifier.contains(Version(pins[name]), prereleases=True), (
            f"lock.txt pins {req.name}=={pins[name]}, outside pyproject.toml's {req.specifier}: "
            "run make lock"
        )


def test_tools_and_torch_are_pinned_and_cuda_is_not(pins):
    for name in ("torch", "pip", "setuptools", "uv", "transformers"):
        assert name in pins, f"lock.txt must pin {name}"
    cuda = [n for n in pins if n.startswith("nvidia-") or n == "triton" or n.startswith("cuda-")]
    assert not cuda, (
        f"lock.txt pins PyTorch's CUDA packages {cuda}; setup.sh installs those with torch"
    )


def test_installed_versions_are_the_locked_ones(pins):
    """What setup.sh installed is exactly the lock (torch may carry a build tag such as +cpu)."""
    wrong = []
    for name, pinned in sorted(pins.items()):
        try:
            have = version(name)
        except PackageNotFoundError:
            wrong.append(f"{name}: not installed (locked {pinned})")
            continue
        if Version(have).public != Version(pinned).public:
            wrong.append(f"{name}: {have} installed, {pinned} locked")
    assert not wrong, "the environment is not the lock; run bash scripts/setup.sh:\n" + "\n".join(
        wrong
    )


def test_parse_lock_applies_markers_and_refuses_garbage():
    text = (
        "# header\nfoo==1.0 ; python_version < '3'\nfoo==2.0 ; python_version >= '3'\n"
        "bar==0.1\n    # via foo\n"
    )
    assert parse_lock(text) == {"foo": "2.0", "bar": "0.1"}
    with pytest.raises(AssertionError, match="line 1"):
        parse_lock("foo>=1.0\n")

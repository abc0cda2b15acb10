#!/usr/bin/env python3
"""Fetch the book's offline JavaScript (MathJax 3, RequireJS, the ipywidgets HTML manager).

The default Jupyter Book HTML loads MathJax and the widget manager from CDNs, so the built book
would show raw TeX and empty widgets without internet. This script takes pinned releases from the
npm registry (with ``npm pack``, which checks the registry's integrity hash; without npm, the same
tarball over HTTPS with the same check) and unpacks the files the book needs into
``_vendor/offline/`` (git-ignored; _config.yml points Sphinx at it; the build serves it
as ``_static/offline/``). It does nothing when the
pinned versions are already there.

    python scripts/fetch_static.py [--force]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# html_static_path entry (copied into _build/html/_static/). Not `_static/`: Jupyter Book adds
# every .js file under the static paths to every page once a `_static/` folder exists at the root.
VENDOR = ROOT / "_vendor" / "offline"
REGISTRY = "https://registry.npmjs.org"

# name, version, {member prefix inside the tarball: destination under _vendor/offline}
PACKAGES = [
    ("mathjax", "3.2.2", {"package/es5/": "mathjax/", "package/LICENSE": "mathjax/LICENSE"}),
    ("requirejs", "2.3.8", {"package/require.js": "requirejs/require.js"}),
    (
        "@jupyter-widgets/html-manager",
        "1.0.15",
        {
            "package/dist/embed-amd.js": "html-manager/embed-amd.js",
            "package/dist/embed.js.LICENSE.txt": "html-manager/LICENSE.txt",
            # fonts (Font Awesome) that the bundle's CSS loads relative to the script
            **{
                f"package/dist/*.{ext}": "html-manager/"
                for ext in ("woff2", "woff", "ttf", "eot", "svg")
            },
        },
    ),
]
STAMP = VENDOR / "versions.json"


def wanted() -> dict[str, str]:
    return {name: version for name, version, _ in PACKAGES}


def tarball_with_npm(spec: str, workdir: Path) -> bytes:
    out = subprocess.run(
        ["npm", "pack", spec, "--json", "--pack-destination", str(workdir)],
        check=True,
        capture_output=True,
        text=True,
        cwd=workdir,
    ).stdout
    return (workdir / json.loads(out)[0]["filename"]).read_bytes()


def tarball_over_https(name: str, version: str) -> bytes:
    meta_url = f"{REGISTRY}/{name.replace('/', '%2F')}/{version}"
    with urllib.request.urlopen(meta_url, timeout=60) as resp:
        dist = json.load(resp)["dist"]
    with urllib.request.urlopen(dist["tarball"], timeout=300) as resp:
        data = resp.read()
    algo, _, digest = dist["integrity"].partition("-")
    if base64.b64encode(hashlib.new(algo, data).digest()).decode() != digest:
        raise RuntimeError(f"integrity check failed for {name}@{version}")
    return data


def matches(member: str, pattern: str) -> bool:
    if "*" in pattern:
        prefix, _, suffix = pattern.partition("*")
        return (
            member.startswith(prefix)
            and member.endswith(suffix)
            and "/" not in member[len(prefix) :]
        )
    return member == pattern or (pattern.endswith("/") and member.startswith(pattern))


def unpack(data: bytes, mapping: dict[str, str]) -> int:
    count = 0
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar.getmembers():
            if not member.isfile():
                continue
            for pattern, dest in mapping.items():
                if not matches(member.name, pattern):
                    continue
                if pattern.endswith("/"):
                    target = VENDOR / dest / member.name[len(pattern) :]
                elif dest.endswith("/"):
                    target = VENDOR / dest / Path(member.name).name
                else:
                    target = VENDOR / dest
                target.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                count += 1
                break
    return count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--force", action="store_true", help="fetch even if up to date")
    args = parser.parse_args()
    if not args.force and STAMP.exists() and json.loads(STAMP.read_text()) == wanted():
        print(f"fetch_static: up to date ({STAMP.relative_to(ROOT)})")
        return 0
    shutil.rmtree(VENDOR, ignore_errors=True)
    VENDOR.mkdir(parents=True)
    use_npm = shutil.which("npm") is not None
    with tempfile.TemporaryDirectory() as tmp:
        for name, version, mapping in PACKAGES:
            spec = f"{name}@{version}"
            data = (
                tarball_with_npm(spec, Path(tmp)) if use_npm else tarball_over_https(name, version)
            )
            n = unpack(data, mapping)
            if n == 0:
                raise RuntimeError(f"{spec}: no files matched {list(mapping)}")
            print(
                f"fetch_static: {spec}: {n} files -> _vendor/offline/ "
                f"({'npm pack' if use_npm else 'registry over https'})"
            )
    STAMP.write_text(json.dumps(wanted(), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

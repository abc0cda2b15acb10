"""lmkit's layering, read from the source: no import
cycle, no import from a lower layer to a higher.

The layers (docs/CONTRIBUTING.md, "Architecture"): a module may import lmkit modules of its own
layer or of a lower one. Imports inside functions count as much as imports at the top, because
a function-local import only hides a cycle until the function runs.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "lmkit"

LAYERS = [
    {"lmkit", "env", "assets", "claims"},  # where things are, what the machine has, claims
    {"nn", "optim", "sampling", "data"},  # building blocks, update rules, tokens and corpora
    {"models"},  # every model of the book
    {"checkpoint", "generate", "train"},  # saving, decoding, training a model
    {"pretrained", "metrics", "tuning", "quant", "distributed"},  # what is done with trained models
    {"serve", "bench", "apps", "frontiers", "viz"},  # chapters' applications, figures, services
    {"cli", "__main__"},  # the command line
]
LAYER = {part: i for i, parts in enumerate(LAYERS) for part in parts}

# Function-local lmkit imports are allowed only here: `python -m lmkit --help` stays fast.
LOCAL_IMPORTS_ALLOWED = {"lmkit.cli"}


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def lmkit_modules(root: Path = ROOT) -> dict[str, Path]:
    return {
        module_name(p, root): p
        for p in sorted(root.rglob("*.py"))
        if "checkpoints" not in p.parts and "__pycache__" not in p.parts
    }


def imports_of(path: Path, known: set[str]) -> list[tuple[str, int, bool]]:
    """(imported lmkit module, line, at top level?) for every import statement in ``path``.

    ``from lmkit.a import b`` imports ``lmkit.a`` and, when ``b`` is a module, ``lmkit.a.b``.
    Importing ``lmkit.a.b`` also runs ``lmkit/a/__init__.py``, so ``lmkit.a`` is an edge too.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = {id(n) for n in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in targets:
            if name != "lmkit" and not name.startswith("lmkit."):
                continue
            parts = name.split(".")
            for i in range(1, len(parts) + 1):
                prefix = ".".join(parts[:i])
                if prefix in known:
                    found.append((prefix, node.lineno, id(node) in top))
    return found


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the lmkit modules it imports (a package's own ancestors left out: Python
    initializes them before the module, so they cannot form a cycle through it)."""
    modules = lmkit_modules(root)
    graph = {}
    for name, path in modules.items():
        ancestors = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        graph[name] = {
            m for m, _, _ in imports_of(path, set(modules)) if m != name and m not in ancestors
        }
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def layer_of(module: str) -> int:
    part = module.split(".")[1] if "." in module else module
    if part not in LAYER:
        raise KeyError(f"{module} is in no layer: add lmkit.{part} to LAYERS in {__file__}")
    return LAYER[part]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return [
        f"{a} (layer {layer_of(a)}) imports {b} (layer {layer_of(b)})"
        for a, targets in sorted(graph.items())
        for b in sorted(targets)
        if layer_of(b) > layer_of(a)
    ]


def test_lmkit_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_every_module_has_a_layer_and_imports_only_downward():
    graph = import_graph()
    for module in graph:
        layer_of(module)
    assert upward_imports(graph) == []


def test_lmkit_imports_sit_at_the_top_of_each_module():
    modules = lmkit_modules()
    local = [
        f"{name}:{line} imports {target} inside a function"
        for name, path in modules.items()
        if name not in LOCAL_IMPORTS_ALLOWED
        for target, line, at_top in imports_of(path, set(modules))
        if not at_top
    ]
    assert local == []


# The checks above must fail on the bugs they are for: plant each in a copy of a small package.


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "lmkit"
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


def test_a_planted_cycle_is_found_even_through_a_function_local_import(tmp_path):
    root = _package(
        tmp_path,
        {
            "__init__.py": "",
            "generate.py": "from lmkit.models.gpt import GPT\n",
            "models/__init__.py": "from lmkit.models.rnn import RNN\n",
            "models/gpt.py": "",
            "models/rnn.py": "def f():\n    from lmkit.generate import next_token\n",
        },
    )
    cycle = find_cycle(import_graph(root))
    assert cycle is not None and set(cycle) == {
        "lmkit.generate",
        "lmkit.models",
        "lmkit.models.rnn",
    }


def test_a_package_importing_its_own_submodules_is_no_cycle(tmp_path):
    root = _package(
        tmp_path,
        {
            "__init__.py": "",
            "quant/__init__.py": (
                "from lmkit.quant.core import q\nfrom lmkit.quant.layers import L\n"
            ),
            "quant/core.py": "",
            "quant/layers.py": "from lmkit.quant.core import q\n",
        },
    )
    assert find_cycle(import_graph(root)) is None


@pytest.mark.parametrize(
    "source, expected",
    [
        (
            "from lmkit.apps.classify import x\n",
            [
                "lmkit.models (layer 2) imports lmkit.apps",
                "lmkit.models (layer 2) imports lmkit.apps.classify",
            ],
        ),
        ("import lmkit.viz\n", ["lmkit.models (layer 2) imports lmkit.viz"]),
        ("from lmkit import nn\n", []),
    ],
)
def test_an_upward_import_is_reported(tmp_path, source, expected):
    root = _package(
        tmp_path,
        {
            "__init__.py": "",
            "nn.py": "",
            "models/__init__.py": source,
            "apps/__init__.py": "",
            "apps/classify.py": "",
            "viz/__init__.py": "",
        },
    )
    found = upward_imports(import_graph(root))
    assert [f.split(" (layer 5)")[0] for f in found] == expected

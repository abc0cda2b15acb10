"""The raw text sources that need no download: Python's documentation topics, the standard
library's source, and the docstrings and comments in it. Chapter 8 (corpora) and chapter 23
(the instruction data) read them."""

from __future__ import annotations

import ast
import io
import sysconfig
import tokenize
from pathlib import Path


def pydoc_documents() -> dict[str, str]:
    import pydoc_data.topics

    return {k: v.strip() + "\n" for k, v in sorted(pydoc_data.topics.topics.items())}


def stdlib_documents(max_files: int | None = None) -> dict[str, str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in stdlib.glob("*.py") if not p.name.startswith("_"))
    docs = {}
    for p in files[:max_files]:
        try:
            docs[p.name] = p.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
    return docs


def prose_of(source: str) -> str:
    """The docstrings (module, class, function) and comments of a Python source, in source order."""
    pieces = []
    try:
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc:
                    pieces.append((getattr(node, "lineno", 0), doc))
        for t in tokenize.generate_tokens(io.StringIO(source).readline):
            if t.type == tokenize.COMMENT and t.string.lstrip("#!").strip():
                pieces.append((t.start[0], t.string.lstrip("#!").strip()))
    except (SyntaxError, tokenize.TokenError):
        return ""
    return "\n".join(text for _, text in sorted(pieces, key=lambda p: p[0])) + "\n"

"""An instruction-tuning dataset built offline, and the chat template it is written in. Chapter 23.

A base model continues text; a chat model has been fine-tuned on conversations that end where the
answer ends. :func:`build_instructions` writes such conversations without any model or download,
from two sources already on every machine with Python:

* **the documentation topics** (``pydoc_data.topics``): each section's title becomes a question
  ("What is the "break" statement?") and the first sentences of its first paragraph the answer;
* **the standard library's docstrings**: ``What does json.dumps() do?`` answered by the
  docstring's first sentence;

plus two kinds that teach behaviour rather than facts: *reading* examples, whose prompt starts with
``Context: <passage>`` and whose answer is copied from the passage (what retrieval-augmented
generation needs), and *refusals*, questions outside the corpus answered with :data:`REFUSAL`.
Every example is ``{"id", "kind", "source", "context", "question", "answer"}``; the split into
train and validation is by source (a held-out example asks about a topic or function that no
training example asks about). The book ships the result as ``book/data/chat/`` with a data card.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from lmkit.assets import book_data
from lmkit.data.sources import pydoc_documents, stdlib_documents

REFUSAL = "I don't know. I can only answer questions about Python and its standard library."
END_OF_TURN = "<|endoftext|>"  # the special token of lmkit's BPE tokenizer (as in GPT-2)


@dataclass
class ChatTemplate:
    """How turns are written into one prompt string. Explained in chapter 23.

    ``User: ...`` and ``Assistant: ...`` lines under a system line; a finished assistant turn ends
    with ``end_of_turn``, which a tuned model learns to write when its answer is done.
    """

    system: str = (
        "A conversation between a user and an assistant that answers questions about Python."
    )
    user_prefix: str = "User: "
    assistant_prefix: str = "Assistant: "
    separator: str = "\n"
    end_of_turn: str = END_OF_TURN

    def render(self, history: list[tuple[str, str]], message: str) -> str:
        """The prompt for ``message`` after ``history`` [(user, assistant), ...], ending in the
        assistant prefix (with its trailing space removed so that the model writes the space)."""
        parts = [self.system] if self.system else []
        for user, assistant in history:
            parts.append(self.user_prefix + user)
            parts.append(self.assistant_prefix + assistant + self.end_of_turn)
        parts.append(self.user_prefix + message)
        parts.append(self.assistant_prefix.rstrip())
        return self.separator.join(parts)

    def stop_strings(self) -> list[str]:
        """Where a reply ends in text: at the next turn marker (or a blank line)."""
        return [
            self.separator + self.user_prefix.strip(),
            self.separator + self.assistant_prefix.strip(),
            "\n\n",
        ]

    def example_text(self, example: dict) -> str:
        """One training example as the text the model learns from: prompt, answer, end of turn."""
        system = f"Context: {example['context']}" if example.get("context") else self.system
        prompt = ChatTemplate(system, self.user_prefix, self.assistant_prefix, self.separator)
        return prompt.render([], example["question"]) + " " + example["answer"] + self.end_of_turn


def _sentences(text: str, n: int, max_chars: int = 300) -> str:
    """The first ``n`` sentences of a paragraph (whitespace normalised), at most ``max_chars``."""
    flat = " ".join(text.split())
    parts = re.split(r"(?<=[.!?])\s+(?=[A-Z\"'(])", flat)
    out = ""
    for s in parts[:n]:
        if out and len(out) + 1 + len(s) > max_chars:
            break
        out = f"{out} {s}".strip()
    return out if len(out) <= max_chars else out[: max_chars - 3].rsplit(" ", 1)[0] + "..."


def _pick(key: str, options: list):
    """A deterministic choice among ``options`` from a string (stable across runs and machines)."""
    return options[int(hashlib.sha256(key.encode()).hexdigest(), 16) % len(options)]


def pydoc_sections(text: str) -> list[tuple[str, str]]:
    """(title, first prose paragraph) for each section of a pydoc topic (titles are underlined)."""
    lines = text.split("\n")
    sections, title, paragraph, found = [], None, [], False

    def close():
        if title and paragraph:
            sections.append((title, " ".join(paragraph)))

    for i, line in enumerate(lines):
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if line.strip() and re.fullmatch(r"[*=\-~^]{3,}", nxt.strip()):
            close()
            title, paragraph, found = line.strip(), [], False
            continue
        if re.fullmatch(r"[*=\-~^]{3,}", line.strip()) or found:
            continue
        if not line.strip():
            found = bool(paragraph)
            continue
        if line.startswith(" ") or "::=" in line or line.startswith(">>>"):
            if paragraph:
                found = True
            continue
        paragraph.append(line.strip())
    close()
    return sections


_TOPIC_QUESTIONS = [
    "Tell me about {t}.",
    "Explain {t}.",
    "What should I know about {t}?",
    "What does the documentation say about {t}?",
]
_FUNCTION_QUESTIONS = [
    "What does {q}() do?",
    "What is {q}() for?",
    "Explain {q}().",
    "What does the function {q} do?",
]
_CLASS_QUESTIONS = ["What is {q}?", "What is the class {q} for?", "Explain the {q} class."]
_OFF_TOPIC = [
    "What is the capital of {x}?",
    "Who won the football world cup in {y}?",
    "How do I bake {f}?",
    "What will the weather be like in {c} tomorrow?",
    "How many people live in {c}?",
    "Who painted the most famous picture of {f}?",
    "What is the best restaurant in {c}?",
    "Can you recommend a film about {f}?",
]
_FILLERS = {
    "x": ["France", "Peru", "Kenya", "Japan", "Canada", "Norway", "Chile", "Egypt", "Vietnam"],
    "y": ["1966", "1982", "1998", "2006", "2014", "2022"],
    "f": ["bread", "a chocolate cake", "apple pie", "sourdough", "pancakes", "a lemon tart"],
    "c": ["Lisbon", "Osaka", "Nairobi", "Montreal", "Oslo", "Lima", "Hanoi", "Cairo"],
}


def _topic_examples() -> list[dict]:
    out = []
    for topic, text in pydoc_documents().items():
        for title, paragraph in pydoc_sections(text):
            answer = _sentences(paragraph, 2)
            if len(answer.split()) < 6 or answer.endswith("..."):
                continue
            t = "the" + title[3:] if title.startswith("The ") else title
            source = f"pydoc:{topic}:{title}"
            out.append(_example(source, _pick(source, _TOPIC_QUESTIONS).format(t=t), answer))
            out.append(
                _example(
                    source,
                    _pick(source + "?", _TOPIC_QUESTIONS).format(t=t),
                    answer,
                    context=_sentences(paragraph, 4, 500),
                )
            )
    return out


def _docstring_examples() -> list[dict]:
    out = []
    for name, source in stdlib_documents().items():
        module = name.removesuffix(".py")
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        for node in tree.body:
            if not isinstance(node, (ast.FunctionDef, ast.ClassDef)) or node.name.startswith("_"):
                continue
            doc = ast.get_docstring(node)
            if not doc:
                continue
            first = doc.split("\n\n")[0]
            if first.lstrip().startswith(f"{node.name}("):  # a signature line, not a sentence
                continue
            answer = _sentences(first, 1)
            if len(answer.split()) < 4 or not answer[0].isupper() or answer.endswith("..."):
                continue
            q = f"{module}.{node.name}"
            templates = _CLASS_QUESTIONS if isinstance(node, ast.ClassDef) else _FUNCTION_QUESTIONS
            src = f"stdlib:{q}"
            out.append(_example(src, _pick(src, templates).format(q=q), answer))
            if _pick(src + "ctx", [True, False]):
                out.append(
                    _example(
                        src,
                        _pick(src + "?", templates).format(q=q),
                        answer,
                        context=_sentences(doc, 3, 500),
                    )
                )
    return out


def _refusal_examples() -> list[dict]:
    out = []
    for template in _OFF_TOPIC:
        key = re.search(r"\{(\w)\}", template).group(1)
        for value in _FILLERS[key]:
            q = template.format(**{key: value})
            out.append(_example(f"refusal:{q}", q, REFUSAL, kind="refusal"))
    return out


def _example(source, question, answer, context=None, kind=None) -> dict:
    kind = kind or ("reading" if context else "fact")
    ident = hashlib.sha256(f"{kind}|{source}|{question}".encode()).hexdigest()[:12]
    return {
        "id": ident,
        "kind": kind,
        "source": source,
        "context": context,
        "question": question,
        "answer": answer,
    }


def build_instructions(val_fraction: float = 0.05) -> dict[str, list[dict]]:
    """{"train": [...], "val": [...]}: every example, split by source (hash of the source name)."""
    examples = _topic_examples() + _docstring_examples() + _refusal_examples()
    splits = {"train": [], "val": []}
    for e in examples:
        bucket = int(hashlib.sha256(e["source"].encode()).hexdigest(), 16) % 1000
        splits["val" if bucket < 1000 * val_fraction else "train"].append(e)
    return splits


def write_instructions(directory) -> dict[str, int]:
    """Write ``train.jsonl`` and ``val.jsonl`` into ``directory``; returns the example counts."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split, rows in build_instructions().items():
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        (d / f"{split}.jsonl").write_text(text, encoding="utf-8")
        counts[split] = len(rows)
    return counts


def load_instructions(split: str) -> list[dict]:
    """The shipped examples of ``split`` ("train" or "val") from the book's ``data/chat``."""
    path = book_data(f"chat/{split}.jsonl")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def instruction_text(split: str, template: ChatTemplate | None = None) -> str:
    """The shipped examples of ``split`` written with the chat template, one after another."""
    template = template or ChatTemplate()
    return "\n".join(template.example_text(e) for e in load_instructions(split)) + "\n"

"""Retrieval for question answering: passages, dense top-k retrieval, a TF-IDF baseline, hit rate@k.

Explained in chapter 23. A question and every passage are embedded by the pretrained sentence
encoder (:func:`lmkit.pretrained.embed_sentences`, all-MiniLM-L6-v2, unit vectors of 384 numbers);
the passages whose embeddings have the largest cosine similarity with the question's are returned.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from lmkit.pretrained import embed_sentences, load_encoder

_HEADING = re.compile(r"^\s{0,3}#{1,6}\s")
_FENCE = re.compile(r"^\s*(```|:::)")


def load_jsonl(path) -> list[dict]:
    """Read a JSON-lines file (one object a line, blank lines skipped). Chapter 23."""
    rows = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not JSON ({e.msg})") from e
    return rows


def split_passages(text: str, max_words: int = 120, min_words: int = 25) -> list[str]:
    """Cut a markdown text into passages of about ``min_words``..``max_words`` words. Chapter 23.

    Paragraphs (blocks separated by blank lines) are the units; code fences, admonition markers and
    headings are dropped; short paragraphs are merged with the next; a paragraph longer than
    ``max_words`` is cut into pieces of at most ``max_words`` words. Returns the passages in order.
    """
    if min_words < 1 or max_words < min_words:
        raise ValueError(f"need 1 <= min_words <= max_words, got {min_words}, {max_words}")
    paragraphs, in_fence, current = [], False, []
    for line in text.splitlines():
        if _FENCE.match(line):
            in_fence = not in_fence if line.strip().startswith("```") else in_fence
            continue
        if in_fence or _HEADING.match(line):
            if current:
                paragraphs.append(" ".join(current))
                current = []
            continue
        if line.strip():
            current.append(line.strip())
        elif current:
            paragraphs.append(" ".join(current))
            current = []
    if current:
        paragraphs.append(" ".join(current))
    passages, buffer = [], []
    for para in paragraphs:
        words = para.split()
        buffer.extend(words)
        while len(buffer) > max_words:
            passages.append(" ".join(buffer[:max_words]))
            buffer = buffer[max_words:]
        if len(buffer) >= min_words:
            passages.append(" ".join(buffer))
            buffer = []
    if buffer:
        if (
            passages
            and len(buffer) < min_words
            and len(passages[-1].split()) + len(buffer) <= max_words
        ):
            passages[-1] = passages[-1] + " " + " ".join(buffer)
        else:
            passages.append(" ".join(buffer))
    return passages


def corpus_passages(
    documents: dict[str, str], max_words: int = 120, min_words: int = 25
) -> list[dict]:
    """Passages of every document: ``[{"id": "doc#i", "doc": doc, "text": ...}, ...]``. Chapter 23.

    ``documents`` is what :func:`lmkit.data.corpus_documents` returns (e.g. for ``"book"``).
    """
    out = []
    for doc, text in documents.items():
        for i, p in enumerate(split_passages(text, max_words, min_words)):
            out.append({"id": f"{doc}#{i}", "doc": doc, "text": p})
    return out


def cosine_scores(queries: torch.Tensor, passages: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every query (Q, d) with every passage (N, d): (Q, N). Chapter 23."""
    q = torch.nn.functional.normalize(queries.float(), dim=-1)
    p = torch.nn.functional.normalize(passages.float(), dim=-1)
    return q @ p.T


def top_k(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best passages per query: (values (Q, k), indices (Q, k)); ties: lower index first."""
    k = min(k, scores.size(-1))
    order = torch.sort(scores, dim=-1, descending=True, stable=True)
    return order.values[:, :k], order.indices[:, :k]


@dataclass
class DenseRetriever:
    """Top-k retrieval by cosine similarity of sentence embeddings. Explained in chapter 23.

    ``embed`` maps a list of N strings to an (N, d) tensor; by default the pretrained encoder
    (:func:`lmkit.pretrained.embed_sentences`). The passages are embedded once, at construction.
    """

    passages: list[str]
    embed: object = None

    def __post_init__(self):
        if self.embed is None:
            model, tok = load_encoder()
            self.embed = lambda texts: embed_sentences(texts, model, tok)
        self.embeddings = self.embed(list(self.passages))  # (N, d)

    def scores(self, queries: list[str]) -> torch.Tensor:
        """(Q, N) cosine similarities of the queries with every passage."""
        return cosine_scores(self.embed(list(queries)), self.embeddings)

    def search(self, queries: list[str], k: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores (Q, k), passage indices (Q, k)), best first."""
        return top_k(self.scores(queries), k)


class TfidfRetriever:
    """The lexical baseline: TF-IDF vectors (scikit-learn) and cosine similarity. Chapter 23."""

    def __init__(self, passages: list[str]):
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.passages = list(passages)
        self.vectorizer = TfidfVectorizer(sublinear_tf=True, stop_words="english")
        self.matrix = self.vectorizer.fit_transform(
            self.passages
        )  # (N, vocabulary), rows unit length

    def scores(self, queries: list[str]) -> torch.Tensor:
        q = self.vectorizer.transform(list(queries))
        return torch.tensor((q @ self.matrix.T).toarray(), dtype=torch.float32)

    def search(self, queries: list[str], k: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
        return top_k(self.scores(queries), k)


def hit_rate_at_k(
    ranked: torch.Tensor, gold: list[int] | torch.Tensor, ks=(1, 3, 5)
) -> dict[int, float]:
    """Share of queries whose gold passage is among the first k retrieved, for each k. Chapter 23.

    ``ranked`` (Q, K) holds passage indices best first (K >= max(ks)); ``gold`` (Q,) the right one.
    With one relevant passage per query this is recall@k.
    """
    gold = torch.as_tensor(gold).view(-1, 1)
    if ranked.size(0) != gold.size(0):
        raise ValueError(f"{ranked.size(0)} rankings but {gold.size(0)} gold passages")
    if max(ks) > ranked.size(1):
        raise ValueError(
            f"k = {max(ks)} needs at least {max(ks)} ranked passages, got {ranked.size(1)}"
        )
    return {k: float((ranked[:, :k] == gold).any(dim=1).float().mean()) for k in ks}


def mean_reciprocal_rank(ranked: torch.Tensor, gold: list[int] | torch.Tensor) -> float:
    """Mean of 1/rank of the gold passage (0 when it is not among the ranked). Chapter 23."""
    gold = torch.as_tensor(gold).view(-1, 1)
    hits = ranked == gold  # (Q, K)
    ranks = torch.where(hits.any(1), hits.float().argmax(1) + 1, torch.zeros_like(gold[:, 0]))
    rr = torch.where(ranks > 0, 1.0 / ranks.clamp(min=1).float(), torch.zeros(len(ranks)))
    return float(rr.mean())

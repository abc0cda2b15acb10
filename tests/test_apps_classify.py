import numpy as np
import pytest
import torch

from lmkit.apps import hub
from lmkit.apps.classify import (
    EncoderClassifier,
    GRUClassifier,
    bow_logreg,
    classification_metrics,
    finetune_encoder,
    gru_vocab,
    load_sentiment,
    predict_encoder,
    predict_gru,
    review_words,
    train_gru,
    vader_predict,
    vader_scores,
)

L = ["negative", "positive"]
POS = ["great film, loved it", "wonderful and fun", "excellent food", "really good value"]
NEG = ["awful film, hated it", "boring and dull", "terrible food", "really bad value"]


def test_load_sentiment_card_numbers():
    d = load_sentiment()
    assert {k: len(v[0]) for k, v in d.items()} == {"train": 200, "val": 40, "test": 80}
    for _, labels in d.values():
        assert labels.count("positive") == labels.count("negative")
    assert not set(d["train"][0]) & set(d["test"][0])


def test_metrics_match_hand_computation():
    m = classification_metrics(
        ["positive", "positive", "negative", "negative"],
        ["positive", "negative", "negative", "negative"],
        L,
    )
    assert m["accuracy"] == 0.75
    # negative: P = 2/3, R = 1 -> F1 0.8; positive: P = 1, R = 1/2 -> F1 2/3
    assert m["macro_f1"] == pytest.approx((0.8 + 2 / 3) / 2)
    assert m["confusion"].tolist() == [[2, 0], [1, 1]]


def test_vader_and_bow():
    assert vader_predict(["I love it, wonderful!", "This is terrible and sad."]) == [
        "positive",
        "negative",
    ]
    assert vader_predict(["The table is brown."], threshold=0.05, neutral=True) == ["neutral"]
    assert -1 <= vader_scores(["ok"])[0] <= 1
    model = bow_logreg(POS + NEG, ["positive"] * 4 + ["negative"] * 4)
    assert list(model.predict(["great value", "awful value"])) == ["positive", "negative"]


def test_gru_shapes_and_learning():
    assert review_words("Didn't like it, 2 stars!") == [
        "did",
        "n't",
        "like",
        "it",
        "2",
        "stars",
        "!",
    ]
    v = gru_vocab(POS + NEG)
    assert v.itos[:2] == ["<pad>", "<unk>"] and v.itos[2:] == sorted(v.itos[2:])
    ids, lens = v.encode_batch(["great film", "unknownword"])
    assert ids.shape == (2, 2) and lens.tolist() == [2, 1] and ids[1, 0] == 1 and ids[1, 1] == 0
    m = GRUClassifier(len(v), 2, d_emb=8, d_hidden=8)
    assert m(ids, lens).shape == (2, 2)
    model, vocab, losses = train_gru(
        POS + NEG,
        ["positive"] * 4 + ["negative"] * 4,
        L,
        epochs=30,
        d_emb=16,
        d_hidden=16,
        dropout=0.0,
    )
    assert losses[-1] < losses[0]
    assert predict_gru(model, vocab, POS + NEG, L) == ["positive"] * 4 + ["negative"] * 4


def test_gru_ignores_padding():
    torch.manual_seed(0)
    v = gru_vocab(POS + NEG)
    m = GRUClassifier(len(v), 2, d_emb=8, d_hidden=8, dropout=0.0).eval()
    ids, lens = v.encode_batch(["great film", "really good value and fun"])
    alone, _ = v.encode_batch(["great film"])
    assert torch.allclose(m(ids, lens)[0], m(alone, torch.tensor([2]))[0], atol=1e-6)


def test_encoder_finetune_runs_and_pools_like_embed_sentences():
    from lmkit.pretrained import embed_sentences, load_encoder

    enc, tok = load_encoder()
    clf = EncoderClassifier(enc, 2)
    b = tok(POS[:2], padding=True, return_tensors="pt")
    pooled = torch.nn.functional.normalize(clf.pool(b["input_ids"], b["attention_mask"]), dim=-1)
    assert torch.allclose(pooled, embed_sentences(POS[:2], enc, tok), atol=1e-5)
    model, tok, losses = finetune_encoder(
        POS + NEG,
        ["positive"] * 4 + ["negative"] * 4,
        L,
        epochs=1,
        batch_size=8,
        encoder=enc,
        tokenizer=tok,
    )
    pred, probs = predict_encoder(model, tok, POS, L, return_probs=True)
    assert probs.shape == (4, 2) and np.allclose(probs.sum(-1).numpy(), 1, atol=1e-5)
    assert len(losses) == 1 and set(pred) <= set(L)


def test_hub_loaders_shape_records(monkeypatch):
    import datasets

    fake_train = datasets.Dataset.from_dict(
        {"sentence": [f"s{i}" for i in range(20)], "label": [i % 2 for i in range(20)]}
    )
    fake_val = datasets.Dataset.from_dict({"sentence": ["a", "b"], "label": [0, 1]})
    monkeypatch.setattr(
        datasets, "load_dataset", lambda *a, **k: {"train": fake_train, "validation": fake_val}
    )
    d = hub.load_hub_sentiment("sst2", max_per_split=5)
    assert len(d["train"][0]) == 5 and len(d["val"][0]) == 2 and sorted(d["test"][1]) == L
    fake_par = datasets.Dataset.from_dict(
        {"translation": [{"en": f"e{i}", "fr": f"f{i}"} for i in range(10)]}
    )
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: {"train": fake_par})
    p = hub.load_hub_parallel("opus_books", "en-fr")
    assert (
        len(p["train"]) == 8 and p["test"][0][0].startswith("e") and p["test"][0][1].startswith("f")
    )
    with pytest.raises(ValueError):
        hub.load_hub_sentiment("nope")

from functools import partial

import pytest
import sacrebleu
import torch

from lmkit.apps.seq2seq import (
    SPECIALS,
    Seq2SeqConfig,
    Seq2SeqTransformer,
    beam_decode,
    bleu_from_scratch,
    char_tokens,
    cross_attention,
    exact_match,
    greedy_decode,
    make_batch,
    train_seq2seq,
    translate,
)
from lmkit.data import Vocab, pad_batch, tokenize_words
from lmkit.data.tasks import number_translation_splits
from lmkit.metrics import bleu

WORDS = partial(tokenize_words, digits=True, punctuation=True)  # the source side of chapter 19


def _vocab(texts, tokenize=WORDS, join=" "):
    return Vocab.from_texts(
        texts, specials=SPECIALS, order="alphabetical", tokenize=tokenize, join=join
    )


def _setup():
    sp = number_translation_splits(99, seed=0)
    sv = _vocab([s for s, _ in sp["train"]])
    tv = _vocab([t for _, t in sp["train"]], char_tokens, "")
    torch.manual_seed(0)
    model = Seq2SeqTransformer(
        Seq2SeqConfig(len(sv), len(tv), d_model=32, n_head=2, d_ff=64, n_enc=1, n_dec=1)
    )
    return sp, sv, tv, model


def test_vocab_roundtrip_and_padding():
    assert WORDS("Forty-two") == ["forty", "-", "two"]
    v = _vocab(["one two", "two three"])
    assert v.itos == ["<pad>", "<bos>", "<eos>", "<unk>", "one", "three", "two"]
    ids = v.encode("two three", bos=True, eos=True)
    assert ids == [1, 6, 5, 2]
    assert v.decode(ids + [0, 0]) == "two three"
    assert v.encode("four") == [v.unk_id]
    assert pad_batch([[1, 2], [3]]).tolist() == [[1, 2], [3, 0]]


def test_make_batch_layout_and_the_models_special_ids():
    v = _vocab(["one two", "two three"])
    src, tgt = make_batch([("one two", "two"), ("three", "one three")], v, v)
    assert src.tolist() == [[4, 6, 2], [5, 2, 0]]  # source <eos> <pad>
    assert tgt.tolist() == [[1, 6, 2, 0], [1, 4, 5, 2]]  # <bos> target <eos> <pad>
    wrong = Vocab.from_texts(["one two"], specials=("<pad>", "<unk>", "<bos>", "<eos>"))
    with pytest.raises(ValueError, match="SPECIALS"):
        make_batch([("one", "two")], wrong, v)
    with pytest.raises(ValueError, match="block_size"):
        model = Seq2SeqTransformer(Seq2SeqConfig(len(v), len(v), d_model=8, n_head=2, block_size=3))
        model(torch.tensor([[4, 5, 6, 2]]), torch.tensor([[1]]))


def test_shapes_loss_and_training_reduces_loss():
    sp, sv, tv, model = _setup()
    src, tgt = make_batch(sp["train"][:8], sv, tv)
    assert model(src, tgt[:, :-1]).shape == (8, tgt.size(1) - 1, len(tv))
    losses = train_seq2seq(model, sp["train"], sv, tv, steps=60, batch_size=32, warmup=5)
    assert losses[-1] < losses[0] * 0.6
    w = cross_attention(model, "forty-two", "四十二", sv, tv)
    assert w.shape == (1, 2, 4, 4)  # (layers, heads, 3 chars + <bos> step, 3 tokens + <eos>)
    assert torch.allclose(w.sum(-1), torch.ones(1, 2, 4))


def test_beam_of_one_equals_greedy_and_padding_does_not_change_results():
    sp, sv, tv, model = _setup()
    train_seq2seq(model, sp["train"], sv, tv, steps=30, batch_size=32, warmup=5)
    srcs = [s for s, _ in sp["test"][:6]]
    batch = pad_batch([sv.encode(s, eos=True) for s in srcs])
    greedy = greedy_decode(model, batch)
    for s, g in zip(srcs, greedy):
        alone = greedy_decode(model, torch.tensor([sv.encode(s, eos=True)]))[0]
        assert alone == g
        ids, _ = beam_decode(model, torch.tensor([sv.encode(s, eos=True)]), num_beams=1)
        assert ids == g
    assert len(translate(model, srcs, sv, tv, num_beams=3)) == len(srcs)
    assert all(len(ids) <= 2 for ids in greedy_decode(model, batch, max_new_tokens=2))


def test_bleu_from_scratch_matches_sacrebleu():
    hyps = ["三百一十二", "四十五", "一百零五", "九十"]
    refs = ["三百一十二", "四十二", "一百零五", "九十九"]
    ours = bleu_from_scratch([char_tokens(h) for h in hyps], [char_tokens(r) for r in refs])
    theirs = sacrebleu.corpus_bleu(hyps, [refs], tokenize="zh", smooth_method="none").score
    assert ours == pytest.approx(theirs, abs=1e-9)
    assert bleu(refs, refs, tokenize="zh") == pytest.approx(100.0)
    assert exact_match(hyps, refs) == 0.5

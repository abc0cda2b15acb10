import pytest
import sacrebleu
import torch

from lmkit.apps.seq2seq import (
    Seq2SeqConfig,
    Seq2SeqTransformer,
    Vocab,
    beam_decode,
    bleu_from_scratch,
    char_tokens,
    corpus_bleu,
    cross_attention,
    exact_match,
    greedy_decode,
    make_batch,
    pad_batch,
    train_seq2seq,
    translate,
    word_tokens,
)
from lmkit.data.tasks import number_translation_splits


def _setup():
    sp = number_translation_splits(99, seed=0)
    sv = Vocab.from_texts([s for s, _ in sp["train"]])
    tv = Vocab.from_texts([t for _, t in sp["train"]], char_tokens, "")
    torch.manual_seed(0)
    model = Seq2SeqTransformer(
        Seq2SeqConfig(len(sv), len(tv), d_model=32, n_head=2, d_ff=64, n_enc=1, n_dec=1)
    )
    return sp, sv, tv, model


def test_vocab_roundtrip_and_padding():
    assert word_tokens("Forty-two") == ["forty", "-", "two"]
    v = Vocab.from_texts(["one two", "two three"])
    ids = v.encode("two three", bos=True)
    assert ids[0] == v.bos_id and ids[-1] == v.eos_id
    assert v.decode(ids) == "two three"
    assert v.encode("four")[0] == v.unk_id
    assert pad_batch([[1, 2], [3]]).tolist() == [[1, 2], [3, 0]]


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
    batch = pad_batch([sv.encode(s) for s in srcs])
    greedy = greedy_decode(model, batch)
    for s, g in zip(srcs, greedy):
        alone = greedy_decode(model, torch.tensor([sv.encode(s)]))[0]
        assert alone == g
        ids, _ = beam_decode(model, torch.tensor([sv.encode(s)]), beam_size=1)
        assert ids == g
    assert translate(model, srcs, sv, tv, beam_size=3) is not None


def test_bleu_from_scratch_matches_sacrebleu():
    hyps = ["三百一十二", "四十五", "一百零五", "九十"]
    refs = ["三百一十二", "四十二", "一百零五", "九十九"]
    ours = bleu_from_scratch([char_tokens(h) for h in hyps], [char_tokens(r) for r in refs])
    theirs = sacrebleu.corpus_bleu(hyps, [refs], tokenize="zh", smooth_method="none").score
    assert ours == pytest.approx(theirs, abs=1e-9)
    assert corpus_bleu(refs, refs) == pytest.approx(100.0)
    assert exact_match(hyps, refs) == 0.5

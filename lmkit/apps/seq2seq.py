"""An encoder-decoder Transformer for translation, greedy and beam decoding, BLEU.

Explained in chapter 19. The model follows Vaswani et al. (2017) with pre-norm layers: an encoder
(bidirectional self-attention over the source) and a decoder (causal self-attention over the
target prefix, then **cross-attention** to the encoder's states). Every decoder layer keeps the
weights of its last cross-attention so that alignments can be plotted.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmkit.data import BOS, EOS, PAD, UNK, Vocab, pad_batch
from lmkit.nn import FeedForward, sinusoidal_positions
from lmkit.optim import optimizer_step

# The special tokens of both vocabularies, in id order: <pad> = 0, <bos> = 1, <eos> = 2,
# <unk> = 3. The model reads id 0 as padding; the decoders default to bos_id 1 and eos_id 2.
SPECIALS = (PAD, BOS, EOS, UNK)


def _check_specials(*vocabs: Vocab) -> None:
    for v in vocabs:
        if (v.pad_id, v.bos_id, v.eos_id) != (0, 1, 2):
            raise ValueError(
                f"the model needs <pad> = 0, <bos> = 1, <eos> = 2, got {v!r}: "
                "build the vocabulary with specials=SPECIALS"
            )


def char_tokens(text: str) -> list[str]:
    """One token per non-space character (how Chinese text is tokenized here)."""
    return [c for c in text if not c.isspace()]


@dataclass
class Seq2SeqConfig:
    """Sizes of :class:`Seq2SeqTransformer`."""

    src_vocab: int
    tgt_vocab: int
    d_model: int = 64
    n_head: int = 4
    n_enc: int = 2
    n_dec: int = 2
    d_ff: int = 128
    block_size: int = 64  # the longest source, and the longest target, the model accepts
    dropout: float = 0.1


class EncoderLayer(nn.Module):
    """Pre-norm self-attention + feed-forward; ``pad_mask`` (B, S) is True at padding."""

    def __init__(self, c: Seq2SeqConfig):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(c.d_model), nn.LayerNorm(c.d_model)
        self.attn = nn.MultiheadAttention(c.d_model, c.n_head, dropout=c.dropout, batch_first=True)
        self.ff = FeedForward(c.d_model, c.d_ff, dropout=c.dropout)
        self.drop = nn.Dropout(c.dropout)

    def forward(self, x, pad_mask):
        h = self.ln1(x)
        x = x + self.drop(self.attn(h, h, h, key_padding_mask=pad_mask, need_weights=False)[0])
        return x + self.ff(self.ln2(x))


class DecoderLayer(nn.Module):
    """Pre-norm causal self-attention, cross-attention to the memory, feed-forward.

    After each call ``self.cross_weights`` holds the cross-attention weights (B, H, T, S).
    """

    def __init__(self, c: Seq2SeqConfig):
        super().__init__()
        self.ln1, self.ln2, self.ln3 = (nn.LayerNorm(c.d_model) for _ in range(3))
        self.self_attn = nn.MultiheadAttention(
            c.d_model, c.n_head, dropout=c.dropout, batch_first=True
        )
        self.cross_attn = nn.MultiheadAttention(
            c.d_model, c.n_head, dropout=c.dropout, batch_first=True
        )
        self.ff = FeedForward(c.d_model, c.d_ff, dropout=c.dropout)
        self.drop = nn.Dropout(c.dropout)
        self.cross_weights = None

    def forward(self, y, memory, src_pad_mask, tgt_pad_mask=None):
        t = y.size(1)
        causal = torch.ones(t, t, dtype=torch.bool, device=y.device).triu(1)  # True = blocked
        h = self.ln1(y)
        y = y + self.drop(
            self.self_attn(
                h, h, h, attn_mask=causal, key_padding_mask=tgt_pad_mask, need_weights=False
            )[0]
        )
        h = self.ln2(y)
        out, w = self.cross_attn(
            h,
            memory,
            memory,
            key_padding_mask=src_pad_mask,
            need_weights=True,
            average_attn_weights=False,
        )
        self.cross_weights = w.detach()
        y = y + self.drop(out)
        return y + self.ff(self.ln3(y))


class Seq2SeqTransformer(nn.Module):
    """Encoder-decoder Transformer. Explained in chapter 19.

    ``forward(src (B, S), tgt_in (B, T)) -> logits (B, T, tgt_vocab)``; id 0 is padding in both.
    """

    def __init__(self, config: Seq2SeqConfig):
        super().__init__()
        c = self.config = config
        self.src_emb = nn.Embedding(c.src_vocab, c.d_model, padding_idx=0)
        self.tgt_emb = nn.Embedding(c.tgt_vocab, c.d_model, padding_idx=0)
        self.register_buffer("pos", sinusoidal_positions(c.block_size, c.d_model), persistent=False)
        self.enc = nn.ModuleList(EncoderLayer(c) for _ in range(c.n_enc))
        self.dec = nn.ModuleList(DecoderLayer(c) for _ in range(c.n_dec))
        self.ln_enc, self.ln_dec = nn.LayerNorm(c.d_model), nn.LayerNorm(c.d_model)
        self.head = nn.Linear(c.d_model, c.tgt_vocab)
        self.drop = nn.Dropout(c.dropout)

    def _embed(self, emb, ids):
        if ids.size(1) > self.config.block_size:
            raise ValueError(
                f"sequence of {ids.size(1)} tokens is longer than "
                f"block_size={self.config.block_size}"
            )
        return self.drop(emb(ids) * math.sqrt(self.config.d_model) + self.pos[: ids.size(1)])

    def encode(self, src):
        """src (B, S) -> (memory (B, S, d_model), src_pad_mask (B, S))."""
        mask = src.eq(0)
        x = self._embed(self.src_emb, src)
        for layer in self.enc:
            x = layer(x, mask)
        return self.ln_enc(x), mask

    def decode(self, tgt_in, memory, src_mask):
        """tgt_in (B, T) -> logits (B, T, tgt_vocab)."""
        y = self._embed(self.tgt_emb, tgt_in)
        tmask = tgt_in.eq(0)
        for layer in self.dec:
            y = layer(y, memory, src_mask, tmask)
        return self.head(self.ln_dec(y))

    def forward(self, src, tgt_in):
        memory, mask = self.encode(src)
        return self.decode(tgt_in, memory, mask)

    def loss(self, src, tgt):
        """Teacher-forced cross-entropy; ``tgt`` (B, T) = <bos> y_1 .. y_n <eos> <pad>..."""
        logits = self(src, tgt[:, :-1])
        return F.cross_entropy(
            logits.reshape(-1, logits.size(-1)), tgt[:, 1:].reshape(-1), ignore_index=0
        )

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def make_batch(pairs, src_vocab: Vocab, tgt_vocab: Vocab):
    """(src (B, S), tgt (B, T)) tensors for a list of (source text, target text) pairs.

    src = source ids <eos> <pad>...; tgt = <bos> target ids <eos> <pad>...
    """
    _check_specials(src_vocab, tgt_vocab)
    src = pad_batch([src_vocab.encode(s, eos=True) for s, _ in pairs], src_vocab.pad_id)
    tgt = pad_batch([tgt_vocab.encode(t, bos=True, eos=True) for _, t in pairs], tgt_vocab.pad_id)
    return src, tgt


def train_seq2seq(
    model,
    pairs,
    src_vocab: Vocab,
    tgt_vocab: Vocab,
    steps: int = 600,
    batch_size: int = 64,
    lr: float = 3e-3,
    warmup: int = 50,
    seed: int = 0,
    device="cpu",
) -> list[float]:
    """Train with AdamW and a warmup-cosine schedule on random mini-batches.

    Returns the loss of each step. Explained in chapter 19.
    """
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
        ),
    )
    losses = []
    for _ in range(steps):
        idx = torch.randint(len(pairs), (batch_size,), generator=g).tolist()
        src, tgt = make_batch([pairs[i] for i in idx], src_vocab, tgt_vocab)
        loss = model.loss(src.to(device), tgt.to(device))
        losses.append(optimizer_step(loss, opt, model.parameters(), scheduler=sched))
    model.eval()
    return losses


@torch.no_grad()
def greedy_decode(
    model, src: torch.Tensor, max_new_tokens: int = 16, bos_id: int = 1, eos_id: int = 2
) -> list[list[int]]:
    """Greedy decoding of a batch src (B, S): at each step the most likely next token.

    Produces at most ``max_new_tokens`` tokens per source (``<eos>`` included). Returns one list
    of ids per source (without <bos>, cut at <eos>). Explained in chapter 19.
    """
    model.eval()
    memory, mask = model.encode(src)
    ys = torch.full((src.size(0), 1), bos_id, dtype=torch.long, device=src.device)
    done = torch.zeros(src.size(0), dtype=torch.bool, device=src.device)
    for _ in range(max_new_tokens):
        nxt = model.decode(ys, memory, mask)[:, -1].argmax(-1)
        nxt = torch.where(done, torch.zeros_like(nxt), nxt)
        ys = torch.cat([ys, nxt[:, None]], 1)
        done |= nxt.eq(eos_id)
        if done.all():
            break
    out = []
    for row in ys[:, 1:].tolist():
        out.append(row[: row.index(eos_id)] if eos_id in row else [t for t in row if t != 0])
    return out


@torch.no_grad()
def beam_decode(
    model,
    src: torch.Tensor,
    num_beams: int = 4,
    max_new_tokens: int = 16,
    bos_id: int = 1,
    eos_id: int = 2,
    length_penalty: float = 1.0,
) -> tuple[list[int], float]:
    """Beam search for ONE source src (1, S): keep the ``num_beams`` best prefixes by log-prob.

    At most ``max_new_tokens`` tokens (``<eos>`` included); finished hypotheses are ranked by
    log p / len**length_penalty. Returns (ids, score). With num_beams = 1 this equals
    :func:`greedy_decode`. Explained in chapter 19.
    """
    model.eval()
    memory, mask = model.encode(src)
    beams = [([bos_id], 0.0)]
    finished = []
    for _ in range(max_new_tokens):
        ys = torch.tensor([b[0] for b in beams], dtype=torch.long, device=src.device)
        k = len(beams)
        logp = model.decode(ys, memory.expand(k, -1, -1), mask.expand(k, -1))[:, -1].log_softmax(-1)
        scores = torch.tensor([b[1] for b in beams], device=src.device)[:, None] + logp
        top = scores.flatten().topk(min(num_beams * 2, scores.numel()))
        new = []
        for s, flat in zip(top.values.tolist(), top.indices.tolist()):
            b, tok = divmod(flat, logp.size(-1))
            seq = beams[b][0] + [tok]
            if tok == eos_id:
                finished.append((seq[1:-1], s / (len(seq) - 1) ** length_penalty))
            else:
                new.append((seq, s))
            if len(new) == num_beams:
                break
        beams = new
        if not beams or (
            len(finished) >= num_beams
            and max(f[1] for f in finished)
            >= max(s / (len(q) - 1) ** length_penalty for q, s in beams)
        ):
            break
    if not finished:
        finished = [(q[1:], s / max(1, len(q) - 1) ** length_penalty) for q, s in beams]
    return max(finished, key=lambda f: f[1])


def translate(
    model,
    sources: list[str],
    src_vocab: Vocab,
    tgt_vocab: Vocab,
    num_beams: int = 1,
    max_new_tokens: int = 16,
    batch_size: int = 256,
    device="cpu",
) -> list[str]:
    """Translate a list of strings; num_beams 1 is greedy (batched). Explained in chapter 19."""
    _check_specials(src_vocab, tgt_vocab)
    out = []
    if num_beams == 1:
        for i in range(0, len(sources), batch_size):
            src = pad_batch(
                [src_vocab.encode(s, eos=True) for s in sources[i : i + batch_size]],
                src_vocab.pad_id,
            ).to(device)
            out += [
                tgt_vocab.decode(ids)
                for ids in greedy_decode(model, src, max_new_tokens=max_new_tokens)
            ]
    else:
        for s in sources:
            ids, _ = beam_decode(
                model,
                torch.tensor([src_vocab.encode(s, eos=True)], device=device),
                num_beams=num_beams,
                max_new_tokens=max_new_tokens,
            )
            out.append(tgt_vocab.decode(ids))
    return out


@torch.no_grad()
def cross_attention(
    model, source: str, target: str, src_vocab: Vocab, tgt_vocab: Vocab
) -> torch.Tensor:
    """Cross-attention weights while reading ``target`` (teacher forced): (n_dec, H, T, S).

    Row t is the attention of the step that predicts target token t (the last row predicts <eos>);
    column s is source token s (the last column is the source's <eos>). Explained in chapter 19.
    """
    model.eval()
    src = torch.tensor([src_vocab.encode(source, eos=True)])
    tgt = torch.tensor([tgt_vocab.encode(target, bos=True)])
    model(src, tgt)
    return torch.stack([layer.cross_weights[0] for layer in model.dec])


def exact_match(hyps: list[str], refs: list[str]) -> float:
    """Share of hypotheses identical to their reference (after stripping spaces)."""
    return sum(h.replace(" ", "") == r.replace(" ", "") for h, r in zip(hyps, refs)) / len(refs)


def bleu_from_scratch(hyps: list[list[str]], refs: list[list[str]], max_n: int = 4) -> float:
    """Corpus BLEU (Papineni et al. 2002) on pre-tokenized text, one reference, no smoothing, 0-100.

    BLEU = BP * exp(mean_n log p_n); p_n = clipped n-gram matches / hypothesis n-grams (summed over
    the corpus); BP = min(1, exp(1 - r / c)). Equals ``sacrebleu`` with ``smooth_method="none"``.
    Explained in chapter 19.
    """
    match, total = [0] * max_n, [0] * max_n
    c = r = 0
    for h, ref in zip(hyps, refs):
        c, r = c + len(h), r + len(ref)
        for n in range(1, max_n + 1):
            hc = Counter(tuple(h[i : i + n]) for i in range(len(h) - n + 1))
            rc = Counter(tuple(ref[i : i + n]) for i in range(len(ref) - n + 1))
            match[n - 1] += sum(min(v, rc[g]) for g, v in hc.items())
            total[n - 1] += max(len(h) - n + 1, 0)
    if c == 0 or min(match) == 0:
        return 0.0
    log_p = sum(math.log(m / t) for m, t in zip(match, total)) / max_n
    bp = 1.0 if c > r else math.exp(1 - r / c)
    return 100 * bp * math.exp(log_p)

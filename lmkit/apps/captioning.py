"""Image captioning on generated shape scenes: data, a patch-Transformer captioner, metrics.

A scene is a small RGB image (32x32 by default) with one or two coloured shapes and a
compositional caption such as ``"a red circle left of a blue square"``. The captioner embeds
image patches (a ViT-style patch embedding + Transformer encoder) and writes the caption with a
Transformer decoder whose cross-attention over the patches can be plotted. Explained in chapter 22.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from lmkit.apps.seq2seq import DecoderLayer, EncoderLayer, Seq2SeqConfig
from lmkit.data import BOS, EOS, PAD, Vocab, pad_batch
from lmkit.nn import device_of
from lmkit.optim import optimizer_step

COLOURS = {
    "red": (0.9, 0.1, 0.1),
    "green": (0.1, 0.8, 0.2),
    "blue": (0.15, 0.3, 0.95),
    "yellow": (0.95, 0.85, 0.1),
}
SHAPES = ["circle", "square", "triangle"]
RELATIONS = ["left of", "right of", "above", "below"]


def _draw(img: np.ndarray, shape: str, cx: float, cy: float, r: float, rgb) -> None:
    size = img.shape[0]
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    if shape == "circle":
        mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    elif shape == "square":
        mask = (np.abs(xx - cx) <= r * 0.85) & (np.abs(yy - cy) <= r * 0.85)
    elif shape == "triangle":  # apex up
        top, bottom = cy - r, cy + r
        half = (yy - top) / (2 * r) * r
        mask = (yy >= top) & (yy <= bottom) & (np.abs(xx - cx) <= half)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    img[mask] = rgb


@dataclass
class Scene:
    """An image (H, W, 3) float32 in [0, 1], its caption and its objects [(colour, shape)]."""

    image: np.ndarray
    caption: str
    objects: list
    relation: str | None


def make_scene(
    rng: random.Random, size: int = 32, p_two: float = 0.75, noise: float = 0.05
) -> Scene:
    """One seeded scene. Explained in chapter 22.

    With probability ``p_two`` two shapes of different (colour, shape) are placed side by side
    (horizontal relation) or one above the other (vertical relation); the caption names the object
    whose colour comes first in red, green, blue, yellow (then circle, square, triangle), the
    relation, then the other: "a red circle left of a blue square", so that each image has exactly
    one correct caption. Otherwise one shape anywhere: "a green triangle".
    """
    img = np.zeros((size, size, 3), dtype=np.float32)
    r = size * rng.uniform(0.14, 0.19)
    c1, s1 = rng.choice(list(COLOURS)), rng.choice(SHAPES)
    if rng.random() >= p_two:
        cx, cy = rng.uniform(r + 1, size - r - 1), rng.uniform(r + 1, size - r - 1)
        _draw(img, s1, cx, cy, r, COLOURS[c1])
        objects, rel = [(c1, s1)], None
        caption = f"a {c1} {s1}"
    else:
        while True:
            c2, s2 = rng.choice(list(COLOURS)), rng.choice(SHAPES)
            if (c2, s2) != (c1, s1):
                break
        if (list(COLOURS).index(c2), SHAPES.index(s2)) < (
            list(COLOURS).index(c1),
            SHAPES.index(s1),
        ):
            c1, s1, c2, s2 = (
                c2,
                s2,
                c1,
                s1,
            )  # canonical order: the caption names the earlier colour first
        rel = rng.choice(RELATIONS)
        lo, hi = (r + 1, max(r + 1, size / 2 - r)), (min(size - r - 1, size / 2 + r), size - r - 1)
        a, b = (
            rng.uniform(*lo),
            rng.uniform(*hi),
        )  # along the relation's axis: first < second, no overlap
        if rel in ("right of", "below"):
            a, b = b, a
        o1, o2 = rng.uniform(r + 1, size - r - 1), rng.uniform(r + 1, size - r - 1)  # other axis
        if rel in ("left of", "right of"):
            p1, p2 = (a, o1), (b, o2)
        else:
            p1, p2 = (o1, a), (o2, b)
        _draw(img, s1, *p1, r, COLOURS[c1])
        _draw(img, s2, *p2, r, COLOURS[c2])
        objects = [(c1, s1), (c2, s2)]
        caption = f"a {c1} {s1} {rel} a {c2} {s2}"
    if noise:
        nrng = np.random.default_rng(rng.randrange(2**32))
        img = np.clip(img + noise * nrng.standard_normal(img.shape).astype(np.float32), 0, 1)
    return Scene(img.astype(np.float32), caption, objects, rel)


def make_scenes(
    n: int, size: int = 32, seed: int = 0, p_two: float = 0.75, noise: float = 0.05
) -> list[Scene]:
    """``n`` seeded scenes. Chapter 22."""
    rng = random.Random(seed)
    return [make_scene(rng, size, p_two, noise) for _ in range(n)]


def caption_vocab() -> Vocab:
    """The word vocabulary of the scene captions: ``<pad>`` = 0, ``<bos>`` = 1, ``<eos>`` = 2, then
    "a", the colours, the shapes and the relation words ("left of" is two words). Chapter 22."""
    words = ["a", *COLOURS, *SHAPES, "left", "right", "of", "above", "below"]
    return Vocab(words, specials=(PAD, BOS, EOS))


def images_tensor(scenes) -> torch.Tensor:
    """Scenes -> images (B, 3, H, W) float32."""
    return torch.from_numpy(np.stack([s.image for s in scenes])).permute(0, 3, 1, 2).contiguous()


def captions_tensor(scenes, vocab: Vocab) -> torch.Tensor:
    """Scenes -> padded caption ids (B, T) = <bos> words <eos> <pad>..."""
    seqs = [vocab.encode(s.caption, bos=True, eos=True) for s in scenes]
    return pad_batch(seqs, vocab.pad_id)


@dataclass
class CaptionerConfig:
    """Sizes of :class:`Captioner`."""

    vocab_size: int
    image_size: int = 32
    patch: int = 8
    d_model: int = 64
    n_head: int = 4
    n_enc: int = 1
    n_dec: int = 2
    d_ff: int = 128
    block_size: int = 16  # the longest caption (<bos> and <eos> included) the decoder accepts
    dropout: float = 0.0
    stem: str = "conv"  # "conv": 3x3 convolution then patchify; "linear": ViT patch embedding only


class Captioner(nn.Module):
    """Patch-embedding + Transformer encoder over image patches, Transformer decoder over words.

    ``forward(images (B, 3, H, W), tokens_in (B, T)) -> logits (B, T, vocab)``. After a forward pass
    each ``self.dec[l].cross_weights`` is (B, H, T, P) with P = (image_size / patch)**2 patches.
    Explained in chapter 22.
    """

    def __init__(self, config: CaptionerConfig):
        super().__init__()
        c = self.config = config
        if c.image_size % c.patch:
            raise ValueError("image_size must be a multiple of patch")
        self.n_patches = (c.image_size // c.patch) ** 2
        sc = Seq2SeqConfig(
            1, c.vocab_size, c.d_model, c.n_head, c.n_enc, c.n_dec, c.d_ff, c.block_size, c.dropout
        )
        patchify = nn.Conv2d(
            5 if c.stem == "linear" else 32, c.d_model, kernel_size=c.patch, stride=c.patch
        )
        if c.stem == "linear":
            self.patch_embed = patchify
        elif c.stem == "conv":
            self.patch_embed = nn.Sequential(nn.Conv2d(5, 32, 3, padding=1), nn.GELU(), patchify)
        else:
            raise ValueError("stem must be 'conv' or 'linear'")
        self.patch_pos = nn.Parameter(torch.randn(1, self.n_patches, c.d_model) * 0.02)
        self.enc = nn.ModuleList(EncoderLayer(sc) for _ in range(c.n_enc))
        self.tok_emb = nn.Embedding(c.vocab_size, c.d_model, padding_idx=0)
        self.tok_pos = nn.Parameter(torch.randn(1, c.block_size, c.d_model) * 0.02)
        self.dec = nn.ModuleList(DecoderLayer(sc) for _ in range(c.n_dec))
        self.ln_enc, self.ln_dec = nn.LayerNorm(c.d_model), nn.LayerNorm(c.d_model)
        self.head = nn.Linear(c.d_model, c.vocab_size)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) -> memory (B, P, d_model): one vector per patch.

        Two coordinate channels (x and y in [-1, 1], as in CoordConv) are appended to the RGB
        channels, so that every patch vector knows where it is before any attention."""
        b, _, h, w = images.shape
        ys = torch.linspace(-1, 1, h, device=images.device).view(1, 1, h, 1).expand(b, 1, h, w)
        xs = torch.linspace(-1, 1, w, device=images.device).view(1, 1, 1, w).expand(b, 1, h, w)
        x = (
            self.patch_embed(torch.cat([images, xs, ys], 1)).flatten(2).transpose(1, 2)
            + self.patch_pos
        )
        for layer in self.enc:
            x = layer(x, None)
        return self.ln_enc(x)

    def decode(self, tokens_in: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """tokens_in (B, T) -> logits (B, T, vocab); T is at most ``config.block_size``."""
        if tokens_in.size(1) > self.config.block_size:
            raise ValueError(
                f"caption of {tokens_in.size(1)} tokens is longer than "
                f"block_size={self.config.block_size}"
            )
        y = self.tok_emb(tokens_in) + self.tok_pos[:, : tokens_in.size(1)]
        for layer in self.dec:
            y = layer(y, memory, None, tokens_in.eq(0))
        return self.head(self.ln_dec(y))

    def forward(self, images, tokens_in):
        return self.decode(tokens_in, self.encode(images))

    def loss(self, images, tokens):
        """Teacher-forced cross-entropy over caption words; ``tokens`` (B, T) with padding 0."""
        logits = self(images, tokens[:, :-1])
        return F.cross_entropy(
            logits.reshape(-1, logits.size(-1)), tokens[:, 1:].reshape(-1), ignore_index=0
        )

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def train_captioner(
    model: Captioner,
    scenes,
    vocab: Vocab,
    steps: int = 300,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    device: str = "cpu",
) -> list[float]:
    """AdamW with warmup + cosine decay on random mini-batches; returns the loss per step.

    Chapter 22."""
    torch.manual_seed(seed)
    model.to(device).train()
    images, tokens = images_tensor(scenes).to(device), captions_tensor(scenes, vocab).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    g = torch.Generator().manual_seed(seed)
    warm = max(1, steps // 20)
    losses = []
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = (
                lr
                * min(1.0, (step + 1) / warm)
                * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
            )
        idx = torch.randint(0, len(scenes), (batch_size,), generator=g).to(device)
        loss = model.loss(images[idx], tokens[idx])
        losses.append(optimizer_step(loss, opt, model.parameters()))
    model.eval()
    return losses


@torch.no_grad()
def greedy_caption(
    model: Captioner, images: torch.Tensor, vocab: Vocab, max_new_tokens: int = 12
) -> list[str]:
    """Greedy decoding: images (B, 3, H, W) -> B captions of at most ``max_new_tokens`` tokens
    (``<eos>`` included). Explained in chapter 22."""
    model.eval()
    dev = device_of(model)
    memory = model.encode(images.to(dev))
    ys = torch.full((images.size(0), 1), vocab.bos_id, dtype=torch.long, device=dev)
    done = torch.zeros(images.size(0), dtype=torch.bool, device=dev)
    for _ in range(max_new_tokens):
        nxt = model.decode(ys, memory)[:, -1].argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, vocab.pad_id), nxt)
        ys = torch.cat([ys, nxt[:, None]], 1)
        done |= nxt.eq(vocab.eos_id)
        if done.all():
            break
    return [vocab.decode(row[1:]) for row in ys.tolist()]


@torch.no_grad()
def cross_attention_maps(
    model: Captioner, image: torch.Tensor, caption: str, vocab: Vocab
) -> torch.Tensor:
    """Cross-attention while reading ``caption`` (teacher forced), averaged over heads.

    Returns (n_dec, T, gh, gw): row t is the step that predicts word t (the last predicts <eos>).
    Chapter 22."""
    model.eval()
    dev = device_of(model)
    tokens = torch.tensor([vocab.encode(caption, bos=True)], device=dev)
    model(image[None].to(dev), tokens)
    g = model.config.image_size // model.config.patch
    return (
        torch.stack([layer.cross_weights[0].mean(0) for layer in model.dec])
        .reshape(len(model.dec), -1, g, g)
        .cpu()
    )


def parse_caption(caption: str) -> dict:
    """Caption -> {"objects": [(colour|None, shape|None), ...], "relation": str|None}.

    Tolerant of errors: a missing colour or shape is None."""
    words = caption.split()
    rel = None
    for r in RELATIONS:
        rw = r.split()
        for i in range(len(words) - len(rw) + 1):
            if words[i : i + len(rw)] == rw:
                rel, words = r, words[:i] + ["|"] + words[i + len(rw) :]
                break
        if rel:
            break
    objects = []
    for part in " ".join(words).split("|"):
        ws = part.split()
        colour = next((w for w in ws if w in COLOURS), None)
        shape = next((w for w in ws if w in SHAPES), None)
        objects.append((colour, shape))
    return {"objects": objects, "relation": rel}


def attribute_accuracy(hyps: list[str], refs: list[str]) -> dict:
    """Per-attribute accuracy of generated captions against references. Explained in chapter 22.

    colour / shape: share of reference objects (first, second) whose colour / shape is named at the
    same place in the hypothesis; relation: share of two-object references whose relation is right;
    count: share with the right number of objects; exact: identical captions.
    """
    col = shp = n_obj = rel_ok = n_rel = cnt = 0
    for h, r in zip(hyps, refs):
        ph, pr = parse_caption(h), parse_caption(r)
        cnt += len(ph["objects"]) == len(pr["objects"])
        for k, (c, s) in enumerate(pr["objects"]):
            hc, hs = ph["objects"][k] if k < len(ph["objects"]) else (None, None)
            col += hc == c
            shp += hs == s
            n_obj += 1
        if pr["relation"]:
            n_rel += 1
            rel_ok += ph["relation"] == pr["relation"]
    return {
        "colour": col / max(1, n_obj),
        "shape": shp / max(1, n_obj),
        "relation": rel_ok / max(1, n_rel),
        "count": cnt / max(1, len(refs)),
        "exact": sum(h == r for h, r in zip(hyps, refs)) / max(1, len(refs)),
    }


def chance_accuracy() -> dict:
    """Accuracy of guessing uniformly: colour 1/4, shape 1/3, relation 1/4."""
    return {"colour": 1 / len(COLOURS), "shape": 1 / len(SHAPES), "relation": 1 / len(RELATIONS)}


def plot_scenes(scenes_or_images, titles=None, ncols: int = 4, size: float = 2.2):
    """Static small multiples of images (H, W, 3) with titles (e.g. reference and generated
    captions)."""
    import matplotlib.pyplot as plt

    imgs = [s.image if isinstance(s, Scene) else s for s in scenes_or_images]
    nrows = math.ceil(len(imgs) / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(size * ncols * 1.25, size * nrows * 1.2), squeeze=False
    )
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < len(imgs):
            ax.imshow(imgs[k], interpolation="nearest")
            if titles:
                ax.set_title(titles[k], fontsize=7, wrap=True)
    fig.tight_layout()
    return fig

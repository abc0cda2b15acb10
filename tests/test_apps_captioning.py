"""Unit tests for lmkit.apps.captioning (chapter 22): fast and offline."""

import random

import numpy as np
import pytest
import torch

from lmkit.apps import captioning as C


def test_scenes_are_seeded_and_well_formed():
    a, b = C.make_scenes(20, size=16, seed=3), C.make_scenes(20, size=16, seed=3)
    assert [s.caption for s in a] == [s.caption for s in b]
    assert np.array_equal(a[0].image, b[0].image)
    vocab = C.caption_vocab()
    assert vocab.itos[:3] == ["<pad>", "<bos>", "<eos>"] and vocab.unk_id is None
    for s in C.make_scenes(200, size=24, seed=0):
        assert s.image.shape == (24, 24, 3) and s.image.dtype == np.float32
        assert 0 <= s.image.min() and s.image.max() <= 1
        ids = vocab.encode(s.caption, bos=True, eos=True)
        # every caption word is in the vocabulary (none left out), between <bos> and <eos>
        assert ids[0] == vocab.bos_id and ids[-1] == vocab.eos_id
        assert len(ids) == len(s.caption.split()) + 2
        assert vocab.decode(ids + [vocab.pad_id]) == s.caption
        p = C.parse_caption(s.caption)
        assert p["objects"] == s.objects and p["relation"] == s.relation
        if len(s.objects) == 2:  # canonical order: earlier colour (then shape) first
            (c1, s1), (c2, s2) = s.objects
            key1 = (list(C.COLOURS).index(c1), C.SHAPES.index(s1))
            assert key1 < (list(C.COLOURS).index(c2), C.SHAPES.index(s2))


def test_relation_geometry():
    rng = random.Random(0)
    for _ in range(100):
        s = C.make_scene(rng, size=24, noise=0.0)
        if s.relation is None:
            continue
        c1 = np.array(C.COLOURS[s.objects[0][0]], dtype=np.float32)
        c2 = np.array(C.COLOURS[s.objects[1][0]], dtype=np.float32)
        if np.allclose(c1, c2):
            continue
        ys1, xs1 = np.nonzero(np.all(np.isclose(s.image, c1), -1))
        ys2, xs2 = np.nonzero(np.all(np.isclose(s.image, c2), -1))
        if len(xs1) == 0 or len(xs2) == 0:
            continue
        if s.relation == "left of":
            assert xs1.mean() < xs2.mean()
        elif s.relation == "right of":
            assert xs1.mean() > xs2.mean()
        elif s.relation == "above":
            assert ys1.mean() < ys2.mean()
        else:
            assert ys1.mean() > ys2.mean()


def test_tensors_and_model_shapes():
    vocab = C.caption_vocab()
    scenes = C.make_scenes(5, size=16, seed=0)
    imgs, toks = C.images_tensor(scenes), C.captions_tensor(scenes, vocab)
    assert imgs.shape == (5, 3, 16, 16) and toks.shape[0] == 5 and toks[0, 0] == vocab.bos_id
    for stem in ("conv", "linear"):
        torch.manual_seed(0)
        m = C.Captioner(
            C.CaptionerConfig(len(vocab), image_size=16, patch=4, d_model=32, n_head=2, stem=stem)
        )
        logits = m(imgs, toks[:, :-1])
        assert logits.shape == (5, toks.shape[1] - 1, len(vocab))
        assert m.loss(imgs, toks).item() > 0
        maps = C.cross_attention_maps(m, imgs[0], scenes[0].caption, vocab)
        assert maps.shape == (2, len(scenes[0].caption.split()) + 1, 4, 4)
        assert torch.allclose(maps.sum((-1, -2)), torch.ones(2, maps.shape[1]), atol=1e-5)
    with pytest.raises(ValueError):
        C.Captioner(C.CaptionerConfig(len(vocab), image_size=15, patch=4))
    short = C.Captioner(C.CaptionerConfig(len(vocab), image_size=16, patch=4, block_size=4))
    with pytest.raises(ValueError, match="block_size"):
        short(imgs, toks[:, :5])


def test_training_reduces_loss_and_greedy_captions():
    vocab = C.caption_vocab()
    scenes = C.make_scenes(64, size=16, seed=1)
    torch.manual_seed(0)
    m = C.Captioner(
        C.CaptionerConfig(
            len(vocab), image_size=16, patch=4, d_model=32, n_head=2, n_dec=1, d_ff=64
        )
    )
    losses = C.train_captioner(m, scenes, vocab, steps=40, batch_size=16, lr=3e-3)
    assert np.mean(losses[-5:]) < losses[0]
    caps = C.greedy_caption(m, C.images_tensor(scenes[:4]), vocab, max_new_tokens=12)
    assert len(caps) == 4 and all(isinstance(c, str) for c in caps)
    short = C.greedy_caption(m, C.images_tensor(scenes[:4]), vocab, max_new_tokens=2)
    assert all(len(c.split()) <= 2 for c in short)
    assert all(w in vocab.stoi for c in caps for w in c.split())


def test_parse_and_attribute_accuracy():
    p = C.parse_caption("a red circle left of a blue square")
    assert p == {"objects": [("red", "circle"), ("blue", "square")], "relation": "left of"}
    assert C.parse_caption("a green triangle") == {
        "objects": [("green", "triangle")],
        "relation": None,
    }
    refs = ["a red circle left of a blue square", "a green triangle"]
    hyps = ["a red square above a blue square", "a green triangle"]
    acc = C.attribute_accuracy(hyps, refs)
    assert acc["colour"] == pytest.approx(3 / 3)
    assert acc["shape"] == pytest.approx(2 / 3)
    assert acc["relation"] == 0.0 and acc["count"] == 1.0 and acc["exact"] == 0.5
    assert C.attribute_accuracy(refs, refs)["exact"] == 1.0
    assert C.chance_accuracy() == {"colour": 0.25, "shape": 1 / 3, "relation": 0.25}


def test_plot_scenes():
    import matplotlib.pyplot as plt

    fig = C.plot_scenes(C.make_scenes(3, size=16, seed=0), titles=["a", "b", "c"], ncols=2)
    assert len(fig.axes) == 4
    plt.close(fig)

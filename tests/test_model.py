"""GPT model: config validation, shapes, loss, explicit vs fused attention, init, KV cache."""

import math

import pytest
import torch
import torch.nn.functional as F

from lmkit.models import GPT, GPTConfig, KVCache
from lmkit.nn import attention


def tiny(**kw):
    base = dict(vocab_size=37, block_size=24, n_layer=2, n_head=2, n_embd=16)
    base.update(kw)
    return GPTConfig(**base)


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(n_embd=30, n_head=4), "divisible by n_head"),
        (dict(n_layer=0), "n_layer must be a positive integer"),
        (dict(dropout=1.5), "dropout"),
        (dict(pos_emb="alibi"), "pos_emb"),
        (dict(attn_impl="flash"), "attn_impl"),
        (dict(n_embd=18, n_head=2, pos_emb="rope"), "even head size"),
    ],
)
def test_config_rejects_invalid_settings(kw, message):
    with pytest.raises(ValueError, match=message):
        tiny(**kw)


def test_forward_shapes_and_loss():
    torch.manual_seed(0)
    model = GPT(tiny())
    idx = torch.randint(0, 37, (3, 10))
    logits, loss = model(idx)
    assert logits.shape == (3, 10, 37) and loss is None
    _, loss = model(idx, idx)
    # a freshly initialised model predicts nearly uniformly: loss ~ log(vocab)
    assert abs(loss.item() - math.log(37)) < 0.3


def test_ignore_index():
    torch.manual_seed(0)
    model = GPT(tiny())
    idx = torch.randint(0, 37, (2, 8))
    targets = idx.clone()
    targets[:, :4] = -100
    logits, loss = model(idx, targets)
    expected = F.cross_entropy(logits[:, 4:].reshape(-1, 37), idx[:, 4:].reshape(-1))
    assert torch.allclose(loss, expected, atol=1e-6)


@pytest.mark.parametrize("pos_emb", ["learned", "rope"])
def test_explicit_attention_matches_sdpa(pos_emb):
    torch.manual_seed(0)
    fused = GPT(tiny(pos_emb=pos_emb)).eval()
    explicit = GPT(tiny(pos_emb=pos_emb, attn_impl="math")).eval()
    explicit.load_state_dict(fused.state_dict())
    idx = torch.randint(0, 37, (2, 24))
    assert torch.allclose(fused(idx)[0], explicit(idx)[0], atol=1e-5)


def test_attention_function_matches_sdpa_with_masks():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 8) for _ in range(3))
    assert torch.allclose(
        attention(q, k, v, is_causal=True),
        F.scaled_dot_product_attention(q, k, v, is_causal=True),
        atol=1e-6,
    )
    mask = torch.rand(5, 5) > 0.3
    mask[:, 0] = True
    assert torch.allclose(
        attention(q, k, v, mask=mask),
        F.scaled_dot_product_attention(q, k, v, attn_mask=mask),
        atol=1e-6,
    )


def test_causality_future_tokens_do_not_change_past_logits():
    torch.manual_seed(0)
    model = GPT(tiny()).eval()
    a = torch.randint(0, 37, (1, 12))
    b = a.clone()
    b[0, 8:] = (b[0, 8:] + 1) % 37
    assert torch.allclose(model(a)[0][:, :8], model(b)[0][:, :8], atol=1e-6)


def test_tied_embeddings_and_gpt2_init():
    torch.manual_seed(0)
    model = GPT(tiny(n_layer=4, n_embd=64, n_head=4, vocab_size=500))
    assert model.lm_head.weight is model.transformer.wte.weight
    assert abs(model.transformer.wte.weight.std().item() - 0.02) < 0.002
    proj = model.transformer.h[0].attn.c_proj.weight
    assert abs(proj.std().item() - 0.02 / math.sqrt(8)) < 0.002
    # parameters counted once although shared
    assert model.num_params() == sum(p.numel() for p in set(model.parameters()))


def test_tied_embedding_is_one_matrix_trained_by_both_uses():
    """Kills: an untied (copied) output head; a head that reads a detached copy of the embedding, so
    the embedding's gradient misses the output-layer term; the shared matrix counted twice.

    The gradient of the tied matrix must be the sum of the gradients its two uses get when they are
    separate parameters (an untied twin built here with the same values)."""
    torch.manual_seed(0)
    model = GPT(tiny())
    wte, head = model.transformer.wte.weight, model.lm_head.weight
    assert head is wte and head.data_ptr() == wte.data_ptr()
    names = [n for n, p in model.named_parameters() if p is wte]
    assert names == ["transformer.wte.weight"]  # one Parameter, listed once
    assert model.num_params() == sum(p.numel() for p in model.parameters())
    assert model.num_params() == sum(
        p.numel() for n, p in model.state_dict().items() if n != "lm_head.weight"
    )

    idx = torch.randint(0, 37, (2, 10), generator=torch.Generator().manual_seed(1))
    _, loss = model(idx, idx)
    loss.backward()
    twin = GPT(tiny())
    twin.load_state_dict(model.state_dict())
    twin.lm_head.weight = torch.nn.Parameter(
        model.transformer.wte.weight.detach().clone()
    )  # untied
    assert (
        twin.num_params() == model.num_params() + 37 * 16
    )  # untied, the head is a second V x d matrix
    # the twin's head applied by hand (not through GPT.forward): logits = ln_f(h) @ W_head.T
    h = twin.transformer.ln_f(twin.hidden_states(idx)[-1])
    loss_twin = F.cross_entropy((h @ twin.lm_head.weight.T).view(-1, 37), idx.view(-1))
    loss_twin.backward()
    assert torch.allclose(loss, loss_twin)
    emb_grad, head_grad = twin.transformer.wte.weight.grad, twin.lm_head.weight.grad
    assert head_grad.abs().max() > 1e-3 and emb_grad.abs().max() > 1e-3  # both terms matter
    torch.testing.assert_close(wte.grad, emb_grad + head_grad, atol=1e-7, rtol=1e-5)

    # one optimizer step moves the embedding and the head together, and the tie survives copies
    before = wte.detach().clone()
    torch.optim.SGD(model.parameters(), lr=1.0).step()
    assert (model.transformer.wte.weight - before).abs().max() > 1e-3
    assert torch.equal(model.lm_head.weight, model.transformer.wte.weight)
    import copy

    for other in (copy.deepcopy(model), model.double()):
        assert other.lm_head.weight is other.transformer.wte.weight


def test_attention_maps_equal_an_independent_computation():
    """Kills: attention maps taken before the softmax, without the 1/sqrt(head_dim) scale, with the
    mask on the wrong side, or with heads / q and k split in the wrong order.

    Layer 0 worked out here from the model's weights: x = wte + wpe, q, k from ln_1(x) @ c_attn."""
    torch.manual_seed(0)
    model = GPT(tiny()).eval()
    idx = torch.randint(0, 37, (2, 7), generator=torch.Generator().manual_seed(2))
    maps = model.attention_maps(idx)
    blk, C, H = model.transformer.h[0], 16, 2
    x = model.transformer.wte.weight[idx] + model.transformer.wpe.weight[:7]
    h = F.layer_norm(x, (C,), blk.ln_1.weight, blk.ln_1.bias, blk.ln_1.eps)
    qkv = h @ blk.attn.c_attn.weight.T + blk.attn.c_attn.bias
    q, k = qkv[..., :C], qkv[..., C : 2 * C]
    q = q.reshape(2, 7, H, C // H).transpose(1, 2)
    k = k.reshape(2, 7, H, C // H).transpose(1, 2)
    scores = q @ k.transpose(-1, -2) / math.sqrt(C // H)
    scores = scores.masked_fill(torch.ones(7, 7, dtype=torch.bool).triu(1), float("-inf"))
    torch.testing.assert_close(maps[0], torch.softmax(scores, -1), atol=1e-6, rtol=1e-5)
    assert (
        maps[0] - maps[1]
    ).abs().max() > 1e-3  # the two layers differ: layer 0 is not a stand-in


def test_parameter_count_formula():
    c = tiny(n_layer=3, n_embd=32, n_head=4, vocab_size=50, block_size=16)
    d, L = c.n_embd, c.n_layer
    per_block = 12 * d * d + 13 * d  # qkv + proj + mlp weights and biases + 2 LayerNorms
    expected = c.vocab_size * d + c.block_size * d + L * per_block + 2 * d
    assert GPT(c).num_params() == expected


def test_sequence_longer_than_context_gives_clear_error():
    model = GPT(tiny())
    with pytest.raises(ValueError, match="context window"):
        model(torch.zeros(1, 25, dtype=torch.long))


@pytest.mark.parametrize("pos_emb", ["learned", "rope"])
def test_kv_cache_logits_equal_full_forward(pos_emb):
    torch.manual_seed(0)
    model = GPT(tiny(pos_emb=pos_emb)).eval()
    idx = torch.randint(0, 37, (2, 15))
    full, _ = model(idx)
    cache = KVCache(model.config, 2)
    prefix, _ = model(idx[:, :6], cache=cache)  # prefill
    chunk, _ = model(idx[:, 6:9], cache=cache)  # several tokens after a prefix
    steps = [model(idx[:, t : t + 1], cache=cache)[0] for t in range(9, 15)]
    cached = torch.cat([prefix, chunk, *steps], dim=1)
    assert torch.allclose(full, cached, atol=1e-5)


def test_attention_maps_rows_sum_to_one_and_are_causal():
    torch.manual_seed(0)
    model = GPT(tiny()).eval()
    maps = model.attention_maps(torch.randint(0, 37, (1, 7)))
    assert maps.shape == (2, 1, 2, 7, 7)
    assert torch.allclose(maps.sum(-1), torch.ones(2, 1, 2, 7), atol=1e-5)
    assert maps.triu(diagonal=1).abs().max() == 0


def _hand_counts(V, T, L, C, rope=False):
    """GPT's parameter groups counted by hand from the configuration (bias=True, tied head)."""
    attn = (C * 3 * C + 3 * C) + (C * C + C)  # c_attn, c_proj: weights and biases
    mlp = (C * 4 * C + 4 * C) + (4 * C * C + C)  # fc, proj
    block = attn + mlp + 2 * 2 * C  # ln_1, ln_2: scale and shift
    counts = dict(wte=V * C, wpe=0 if rope else T * C, blocks=L * block, ln_f=2 * C, lm_head=0)
    counts["total"] = sum(counts.values())
    return counts


@pytest.mark.parametrize("pos_emb", ["learned", "rope"])
def test_param_counts_by_hand(pos_emb):
    """Kills: the tied head counted twice (lm_head = V*C or total + V*C), RoPE models given a wpe
    count, a group that misses the final norm or a block, groups that do not add up to total."""
    V, T, L, H, C = 11, 16, 3, 2, 8
    model = GPT(
        GPTConfig(vocab_size=V, block_size=T, n_layer=L, n_head=H, n_embd=C, pos_emb=pos_emb)
    )
    expected = _hand_counts(V, T, L, C, rope=pos_emb == "rope")
    assert model.param_counts() == expected
    assert model.num_params() == expected["total"] == sum(p.numel() for p in model.parameters())
    with torch.device("meta"):  # shapes only, as chapter 9 counts GPT-2 small
        assert GPT(model.config).param_counts() == expected


def test_param_counts_untied_head_and_no_bias():
    """Kills: an untied head left out of the count (or counted as 0 because it used to be tied), and
    biases counted that bias=False models do not have."""
    V, T, L, H, C = 11, 16, 2, 2, 8
    model = GPT(GPTConfig(vocab_size=V, block_size=T, n_layer=L, n_head=H, n_embd=C))
    tied = model.param_counts()
    model.lm_head.weight = torch.nn.Parameter(model.transformer.wte.weight.detach().clone())
    untied = model.param_counts()
    assert untied == {**tied, "lm_head": V * C, "total": tied["total"] + V * C}
    assert untied["total"] == sum(untied[k] for k in ("wte", "wpe", "blocks", "ln_f", "lm_head"))

    nb = GPT(GPTConfig(vocab_size=V, block_size=T, n_layer=L, n_head=H, n_embd=C, bias=False))
    block = C * 3 * C + C * C + C * 4 * C + 4 * C * C + 2 * C  # weights and two norm scales
    assert nb.param_counts() == dict(
        wte=V * C,
        wpe=T * C,
        blocks=L * block,
        ln_f=C,
        lm_head=0,
        total=V * C + T * C + L * block + C,
    )


def test_flops_per_token_by_hand():
    """Kills: a changed flops_per_token formula or seq_len default (mutmut found both unchecked), N
    taken with the position table, or with the token table counted a second time once untied.

    N is what every token multiplies: the blocks, the final norm and the V x C output matrix."""
    V, T, L, H, C = 11, 16, 2, 2, 8
    c = _hand_counts(V, T, L, C)
    n = c["blocks"] + c["ln_f"] + V * C  # = total - wpe with the tied head (nanoGPT's N)
    attn = 12 * L * H * (C // H)
    for pos_emb in ("learned", "rope"):
        m = GPT(
            GPTConfig(vocab_size=V, block_size=T, n_layer=L, n_head=H, n_embd=C, pos_emb=pos_emb)
        )
        assert m.flops_per_token() == 6 * n + attn * T
        assert m.flops_per_token(seq_len=5) == 6 * n + attn * 5
    m.lm_head.weight = torch.nn.Parameter(m.transformer.wte.weight.detach().clone())  # untied
    assert m.flops_per_token() == 6 * n + attn * T  # the lookup table costs no multiply-adds

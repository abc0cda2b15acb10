"""Pruning with ``torch.nn.utils.prune``: magnitude (unstructured) and structured; sparsity report.

Explained in chapter 16.

Unstructured pruning zeroes individual weights of smallest magnitude; the matrices keep their shape,
so without sparse kernels nothing gets faster or smaller in memory (the zeros are still stored).
Structured pruning zeroes whole rows (output neurons) or columns (input features) by their L-n norm;
those rows/columns could then be removed to make a genuinely smaller dense layer.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
import torch.nn as nn
import torch.nn.utils.prune as prune

from lmkit.quant.layers import DEFAULT_SKIP, linear_layers


def _check_amount(amount: float) -> None:
    if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not 0.0 <= amount <= 1.0:
        raise ValueError(f"amount is the fraction of weights to prune, in [0, 1]; got {amount!r}")


def magnitude_prune(
    model: nn.Module,
    amount: float,
    scope: str = "layer",
    skip: Iterable[str] = DEFAULT_SKIP,
    permanent: bool = True,
    inplace: bool = False,
) -> nn.Module:
    """Zero the ``amount`` fraction of smallest-|w| weights of every ``nn.Linear``. Chapter 16.

    Args:
        model: the model (weights (out, in) of each linear layer are pruned; biases are kept).
        amount: fraction in [0, 1].
        scope: ``"layer"`` prunes each layer to the same sparsity (``prune.l1_unstructured``);
            ``"global"`` ranks all weights together (``prune.global_unstructured``), so layers end
            with different sparsities.
        skip: layers to leave alone; the default keeps the GPT's ``lm_head``, which is tied to the
            token embedding (pruning it would prune the embedding too).
        permanent: call ``prune.remove`` so that ``weight`` is a plain parameter holding zeros (no
            ``weight_orig``/``weight_mask``); ``False``
            keeps the mask (fine-tuning keeps zeros zero).
        inplace: prune ``model`` itself instead of a deep copy.
    """
    _check_amount(amount)
    if scope not in ("layer", "global"):
        raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
    if not inplace:
        model = copy.deepcopy(model)
    layers = linear_layers(model, skip)
    if scope == "global":
        prune.global_unstructured(
            [(m, "weight") for _, m in layers], pruning_method=prune.L1Unstructured, amount=amount
        )
    else:
        for _, m in layers:
            prune.l1_unstructured(m, "weight", amount=amount)
    if permanent:
        for _, m in layers:
            prune.remove(m, "weight")
    return model


def structured_prune(
    model: nn.Module,
    amount: float,
    n: int | float = 2,
    dim: int = 0,
    skip: Iterable[str] = DEFAULT_SKIP,
    permanent: bool = True,
    inplace: bool = False,
) -> nn.Module:
    """Zero whole rows (``dim=0``: output neurons) or columns (``dim=1``: inputs) of each linear
    weight (out, in), those with the smallest L-``n`` norm (``prune.ln_structured``). Chapter 16.

    Other arguments as in :func:`magnitude_prune`. The bias of a pruned output row is kept, so the
    neuron still outputs its bias; remove the row and bias together to shrink the layer for real.
    """
    _check_amount(amount)
    if dim not in (0, 1, -1, -2):
        raise ValueError(
            f"dim must be 0 (rows, output neurons) or 1 (columns, inputs), got {dim!r}"
        )
    if not inplace:
        model = copy.deepcopy(model)
    layers = linear_layers(model, skip)
    for _, m in layers:
        prune.ln_structured(m, "weight", amount=amount, n=n, dim=dim)
        if permanent:
            prune.remove(m, "weight")
    return model


@torch.no_grad()
def sparsity_report(model: nn.Module, skip: Iterable[str] = DEFAULT_SKIP) -> dict:
    """Fraction of exactly-zero weights in each ``nn.Linear`` and overall. Explained in chapter 16.

    ``skip`` defaults to the layers the pruning functions leave alone (the tied ``lm_head``), so
    that the report covers exactly what they prune; pass ``skip=()`` to count every linear layer.

    Uses the effective weight (``weight`` is ``weight_orig * weight_mask`` while a pruning mask is
    attached). Returns ``{"zeros", "total", "sparsity", "layers": [{"name", "zeros", "total",
    "sparsity", "zero_rows", "zero_cols"}, ...]}``; a row is an output neuron, a column an input.
    """
    layers = []
    for name, m in linear_layers(model, skip):
        w = m.weight.detach()
        zero = w == 0
        layers.append(
            {
                "name": name,
                "zeros": int(zero.sum()),
                "total": w.numel(),
                "sparsity": float(zero.float().mean()) if w.numel() else 0.0,
                "zero_rows": int(zero.all(dim=1).sum()),
                "zero_cols": int(zero.all(dim=0).sum()),
            }
        )
    zeros = sum(r["zeros"] for r in layers)
    total = sum(r["total"] for r in layers)
    return {
        "zeros": zeros,
        "total": total,
        "sparsity": zeros / total if total else 0.0,
        "layers": layers,
    }

"""Exact model-size accounting in bytes, for float, lmkit-quantized and library-quantized models.

Explained in chapter 15.

What is counted: every parameter and buffer, once (tied weights such as the GPT's ``lm_head`` /
``wte`` share one tensor and count once), at ``numel * element_size`` of its dtype; the packed
weights of PyTorch dynamic-quantized layers (which are neither parameters nor buffers) with their
quantization parameters (per-tensor: one float64 scale and one int64 zero point, as PyTorch keeps
them; per-channel: the scale and zero-point tensors); ``torchao`` tensor subclasses through their
inner tensors (``qdata``, ``scale``, ``zero_point``...). Python attributes and library-internal
repacking for a particular CPU kernel are not counted.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from lmkit.quant.layers import QuantLinear


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes held by one tensor: ``numel * element_size``, with quantized tensors and tensor
    subclasses (torchao) counted through what they store. Explained in chapter 15."""
    if isinstance(t, nn.Parameter):
        t = t.data
    if getattr(t, "is_quantized", False):
        n = t.numel() * t.element_size()
        if t.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric):
            return n + 8 + 8  # double scale + int64 zero point
        s, z = t.q_per_channel_scales(), t.q_per_channel_zero_points()
        return n + s.numel() * s.element_size() + z.numel() * z.element_size()
    if type(t) is not torch.Tensor and hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(getattr(t, name)) for name in names)
    return t.numel() * t.element_size()


def _packed_tensors(module: nn.Module) -> list[torch.Tensor]:
    """Weight and bias of a PyTorch dynamic-quantized linear layer (torch.ao ``_packed_params``)."""
    packed = getattr(module, "_packed_params", None)
    if packed is None or not hasattr(packed, "_weight_bias"):
        return []
    return [t for t in packed._weight_bias() if t is not None]


def model_size_bytes(model: nn.Module) -> int:
    """Total bytes of a model's parameters, buffers and packed quantized weights, each tensor once.

    Explained in chapter 15. For an fp32 model this is ``4 * num_params`` plus buffers.
    """
    seen: set[int] = set()
    total = 0
    tensors = list(model.parameters()) + list(model.buffers())
    for m in model.modules():
        tensors += _packed_tensors(m)
    for t in tensors:  # parameters() already yields a tied parameter once; this also catches
        key = id(t)  # the same tensor registered twice as a buffer
        if key in seen:
            continue
        seen.add(key)
        total += tensor_bytes(t)
    return total


def is_quantized_module(module: nn.Module) -> bool:
    """True for lmkit's :class:`QuantLinear`, PyTorch dynamic-quantized linears and ``nn.Linear``
    layers whose weight torchao replaced by a quantized tensor subclass. Chapter 15."""
    if isinstance(module, QuantLinear) or _packed_tensors(module):
        return True
    w = getattr(module, "weight", None)
    if isinstance(module, nn.Linear) and w is not None:
        data = w.data if isinstance(w, nn.Parameter) else w
        return type(data) is not torch.Tensor and hasattr(data, "__tensor_flatten__")
    return False


def quantized_layer_bytes(original: nn.Module, quantized: nn.Module) -> dict:
    """Bytes of just the layers that were quantized, before and after. Explained in chapter 15.

    Args:
        original: the floating-point model.
        quantized: a quantized copy of it (lmkit, PyTorch dynamic or torchao), same module names.
    Returns:
        ``{"n_layers", "before_bytes", "after_bytes", "ratio", "layers": [{"name", "before_bytes",
        "after_bytes"}, ...]}``; ``ratio = after / before``.
    """
    layers = []
    for name, module in quantized.named_modules():
        if not is_quantized_module(module):
            continue
        before = model_size_bytes(original.get_submodule(name))
        after = model_size_bytes(module)
        layers.append({"name": name, "before_bytes": before, "after_bytes": after})
    before = sum(r["before_bytes"] for r in layers)
    after = sum(r["after_bytes"] for r in layers)
    return {
        "n_layers": len(layers),
        "before_bytes": before,
        "after_bytes": after,
        "ratio": after / before if before else float("nan"),
        "layers": layers,
    }

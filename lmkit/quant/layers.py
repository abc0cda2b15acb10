"""Weight-only quantized linear layers and the function that puts them into a model.

Explained in chapter 15.

Weight-only quantization stores the weights of ``nn.Linear`` layers as small integers plus
scales and turns them back into floats inside ``forward`` (activations stay in floating
point). It saves memory and memory bandwidth, which is what limits token-by-token decoding;
on a CPU without fused int4/int8 kernels it does not make the matrix multiply itself faster.
"""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmkit.quant.core import (
    check_group_size,
    dequantize_groups,
    pack_int4,
    quantize_groups,
    unpack_int4,
)

DEFAULT_SKIP = ("lm_head",)


class QuantLinear(nn.Module):
    """A linear layer whose weight is stored as int8 or packed int4 plus float scales.

    Explained in chapter 15. ``forward`` maps (..., in_features) -> (..., out_features) by
    dequantizing the weight on the fly and calling ``F.linear``.

    Buffers:
        qweight: bits=8: (out, in) int8 (absmax) or uint8 (zeropoint);
            bits=4: (out, ceil(in / 2)) uint8, two 4-bit values per byte (see :func:`pack_int4`).
        scale: (out, in // group_size) in ``scale_dtype`` (float32 by default).
        zero_point: (out, in // group_size) uint8 for ``scheme="zeropoint"``, else absent (None).
    Parameter:
        bias: (out,) float32 (not trained; ``requires_grad=False``), or None.

    Build one from a trained layer with :meth:`from_linear`.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        bits: int = 8,
        group_size: int | None = None,
        scheme: str = "absmax",
        scale_dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        if bits not in (4, 8):
            raise ValueError(f"QuantLinear stores 8-bit or 4-bit weights, got bits={bits!r}")
        if scheme not in ("absmax", "zeropoint"):
            raise ValueError(f"scheme must be 'absmax' or 'zeropoint', got {scheme!r}")
        g = check_group_size(in_features, group_size)
        self.in_features, self.out_features = in_features, out_features
        self.bits, self.group_size, self.scheme = bits, group_size, scheme
        n_groups = in_features // g
        if bits == 8:
            qdtype = torch.int8 if scheme == "absmax" else torch.uint8
            self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=qdtype))
        else:
            self.register_buffer(
                "qweight", torch.zeros(out_features, (in_features + 1) // 2, dtype=torch.uint8)
            )
        self.register_buffer("scale", torch.ones(out_features, n_groups, dtype=scale_dtype))
        if scheme == "zeropoint":
            self.register_buffer(
                "zero_point", torch.zeros(out_features, n_groups, dtype=torch.uint8)
            )
        else:
            self.zero_point = None
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        bits: int = 8,
        group_size: int | None = None,
        scheme: str = "absmax",
        scale_dtype: torch.dtype = torch.float32,
    ) -> QuantLinear:
        """Quantize a trained ``nn.Linear`` (weight (out, in)) into a new :class:`QuantLinear`."""
        w = linear.weight.detach()
        layer = cls(
            linear.in_features,
            linear.out_features,
            linear.bias is not None,
            bits,
            group_size,
            scheme,
            scale_dtype,
        )
        q, scale, zero = quantize_groups(w, bits, group_size, scheme)
        if bits == 4:
            # absmax int4 is signed [-7, 7]; zero-point int4 is unsigned [0, 15]
            q = pack_int4(q)
        layer.qweight.copy_(q)
        layer.scale.copy_(scale.to(scale_dtype))
        if zero is not None:
            layer.zero_point.copy_(zero)
        if linear.bias is not None:
            layer.bias.data.copy_(linear.bias.detach().float())
        return layer.to(w.device)

    def int_weight(self) -> torch.Tensor:
        """The integer weight (out, in), unpacked: int8 (absmax) or uint8 (zeropoint)."""
        if self.bits == 4:
            return unpack_int4(self.qweight, self.in_features, signed=self.scheme == "absmax")
        return self.qweight

    def dequantize_weight(self) -> torch.Tensor:
        """The float32 weight (out, in) that ``forward``
        uses: (q - zero_point) * scale per group."""
        return dequantize_groups(self.int_weight(), self.scale, self.zero_point)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.dequantize_weight().to(x.dtype)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, w, bias)

    def extra_repr(self) -> str:
        g = "per-channel" if self.group_size is None else f"group_size={self.group_size}"
        return (
            f"in_features={self.in_features}, "
            f"out_features={self.out_features}, bias={self.bias is not None}, "
            f"bits={self.bits}, {g}, scheme={self.scheme}"
        )


def _skipped(name: str, skip: Iterable[str]) -> bool:
    """A module name matches a skip entry if equal,
    ending with '.' + entry, or matching it as a glob."""
    return any(name == s or name.endswith("." + s) or fnmatch.fnmatchcase(name, s) for s in skip)


def linear_layers(model: nn.Module, skip: Iterable[str] = ()) -> list[tuple[str, nn.Linear]]:
    """The (name, module) pairs of the ``nn.Linear`` layers of ``model`` not matched by ``skip``."""
    skip = tuple(skip)
    return [
        (n, m)
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and not _skipped(n, skip)
    ]


def quantize_model(
    model: nn.Module,
    bits: int = 8,
    group_size: int | None = None,
    skip: Iterable[str] = DEFAULT_SKIP,
    scheme: str = "absmax",
    scale_dtype: torch.dtype = torch.float32,
    inplace: bool = False,
) -> nn.Module:
    """Replace every ``nn.Linear`` of ``model`` by a :class:`QuantLinear`. Explained in chapter 15.

    Args:
        model: any module (a GPT, a ``transformers`` model, a single ``nn.Linear``).
        bits: 8 or 4.
        group_size: ``None`` for per-channel scales, else the group size (must divide every
            quantized layer's ``in_features``; a ``ValueError`` names the layer that it does not).
        skip: names of layers to keep in floating point: exact names, name suffixes after a dot, or
            glob patterns. The default keeps ``lm_head``: in lmkit's GPT it is *tied* to the token
            embedding ``transformer.wte`` (one shared fp32 matrix), so quantizing it would add an
            int copy while the fp32 embedding stays. Embeddings and LayerNorms are never touched.
        scheme: ``"absmax"`` or ``"zeropoint"``.
        scale_dtype: dtype of the stored scales (float32; float16 saves 2 bytes per group).
        inplace: modify ``model`` itself; by default a deep copy is quantized and returned.
    Returns:
        The quantized model (in the mode ``model`` was in).
    """
    if not inplace:
        model = copy.deepcopy(model)
    if isinstance(model, nn.Linear):
        return QuantLinear.from_linear(model, bits, group_size, scheme, scale_dtype)
    targets = linear_layers(model, skip)
    for name, lin in targets:  # validate all before changing anything
        try:
            check_group_size(lin.in_features, group_size)
        except ValueError as e:
            raise ValueError(f"layer {name!r} (in_features={lin.in_features}): {e}") from None
    for name, lin in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, QuantLinear.from_linear(lin, bits, group_size, scheme, scale_dtype))
    return model

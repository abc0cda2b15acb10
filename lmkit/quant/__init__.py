"""Quantization (chapter 15), pruning and distillation (chapter 16).

* :mod:`lmkit.quant.core`: absmax / zero-point
  quantization, per-channel and group-wise, int4 packing.
* :mod:`lmkit.quant.layers`: :class:`QuantLinear` and
  :func:`quantize_model` (weight-only int8/int4).
* :mod:`lmkit.quant.size`: exact size accounting in bytes.
* :mod:`lmkit.quant.libs`: PyTorch dynamic quantization and torchao weight-only, for comparison.
* :mod:`lmkit.quant.prune`: magnitude and structured pruning, sparsity report (chapter 16).
* :mod:`lmkit.quant.distill`: knowledge-distillation loss (chapter 16).
"""

from lmkit.quant.core import (
    absmax_dequantize,
    absmax_quantize,
    check_group_size,
    dequantize_groups,
    pack_int4,
    qrange,
    quantize_groups,
    unpack_int4,
    zeropoint_dequantize,
    zeropoint_quantize,
)
from lmkit.quant.distill import distillation_loss, distillation_objective
from lmkit.quant.layers import DEFAULT_SKIP, QuantLinear, linear_layers, quantize_model
from lmkit.quant.libs import (
    FullRangeDynamicLinear,
    dynamic_quantize,
    import_torchao,
    quantized_engine,
    torchao_quantize,
)
from lmkit.quant.prune import magnitude_prune, sparsity_report, structured_prune
from lmkit.quant.size import (
    is_quantized_module,
    model_size_bytes,
    quantized_layer_bytes,
    tensor_bytes,
)

__all__ = [
    "absmax_quantize",
    "absmax_dequantize",
    "zeropoint_quantize",
    "zeropoint_dequantize",
    "qrange",
    "check_group_size",
    "quantize_groups",
    "dequantize_groups",
    "pack_int4",
    "unpack_int4",
    "QuantLinear",
    "quantize_model",
    "linear_layers",
    "DEFAULT_SKIP",
    "tensor_bytes",
    "model_size_bytes",
    "quantized_layer_bytes",
    "is_quantized_module",
    "dynamic_quantize",
    "FullRangeDynamicLinear",
    "quantized_engine",
    "torchao_quantize",
    "import_torchao",
    "magnitude_prune",
    "structured_prune",
    "sparsity_report",
    "distillation_loss",
    "distillation_objective",
]

"""Thin wrappers over the libraries' quantization, to compare with lmkit's own. Chapter 15.

* PyTorch **dynamic quantization** (``torch.ao.quantization.quantize_dynamic``): ``nn.Linear``
  weights become qint8 (per-tensor affine), activations are quantized on the fly per batch,
  and the matrix multiply runs in int8 (fbgemm/x86/onednn kernels on x86, qnnpack on ARM).
  Faster on CPU. PyTorch marks ``torch.ao.quantization`` deprecated in favour of torchao but
  still ships it (torch 2.13); the wrapper silences those deprecation warnings.
* **torchao** weight-only: ``torchao.quantization.quantize_(model, Int8WeightOnlyConfig())`` swaps
  each linear weight for an ``Int8Tensor`` (int8 per-row + scales) and runs on CPU. For int4,
  ``Int4WeightOnlyConfig`` needs CUDA kernels (torchao 0.18 raises ``ImportError: Requires mslk``
  on CPU); the CPU path is ``IntxWeightOnlyConfig(weight_dtype=torch.int4, PerGroup(g))``, which
  stores the 4-bit values *unpacked*, one per int8 byte, so it saves no memory over int8.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from collections.abc import Iterable

import torch
import torch.nn as nn

from lmkit.quant.layers import DEFAULT_SKIP, _skipped, quantize_model
from lmkit.quant.size import is_quantized_module

try:  # PyTorch's eager dynamic-quantized linear (kept importable even if torch drops it one day)
    from torch.ao.nn.quantized.dynamic import Linear as _DynamicLinear
except ImportError:  # pragma: no cover
    _DynamicLinear = None


if _DynamicLinear is not None:

    class FullRangeDynamicLinear(_DynamicLinear):
        """PyTorch's dynamic int8 linear with activations quantized to the full 8 bits. Chapter 15.

        ``torch.ao.nn.quantized.dynamic.Linear`` calls its kernel with ``reduce_range=True``: each
        batch of activations is mapped onto 0..127 (7 bits), because on x86 CPUs without VNNI the
        int8 dot product (``vpmaddubsw``) adds pairs of u8 x s8 products in int16 and two full-range
        products can saturate. This subclass passes ``reduce_range=False`` (0..255): twice the
        resolution, at the price of that (rare) saturation risk on such CPUs. Shapes as nn.Linear.
        """

        def forward(self, x):
            if self._packed_params.dtype != torch.qint8:
                return super().forward(x)
            y = torch.ops.quantized.linear_dynamic(
                x, self._packed_params._packed_params, reduce_range=False
            )
            return y.to(x.dtype)

        def _get_name(self):
            return "DynamicQuantizedLinear(reduce_range=False)"
else:  # pragma: no cover
    FullRangeDynamicLinear = None


@contextlib.contextmanager
def quantized_engine(name: str | None):
    """Temporarily set ``torch.backends.quantized.engine`` ("x86", "fbgemm", "onednn", "qnnpack").

    ``None`` leaves it unchanged. Dynamic-quantized weights are packed for the engine active when
    they are created, so create *and* run the model inside the same engine. Chapter 15.
    """
    old = torch.backends.quantized.engine
    if name is not None:
        supported = torch.backends.quantized.supported_engines
        if name not in supported:
            raise ValueError(
                f"quantized engine {name!r} is not available here; choose one of {supported}"
            )
        torch.backends.quantized.engine = name
    try:
        yield
    finally:
        torch.backends.quantized.engine = old


def dynamic_quantize(
    model: nn.Module,
    dtype: torch.dtype = torch.qint8,
    skip: Iterable[str] = (),
    engine: str | None = None,
    per_channel: bool = False,
    reduce_range: bool = True,
    inplace: bool = False,
) -> nn.Module:
    """PyTorch dynamic quantization of every ``nn.Linear``
    (except ``skip``). Explained in chapter 15.

    Args:
        model: a float model on the CPU (dynamic quantization kernels are CPU-only).
        dtype: ``torch.qint8`` (int8 weights and activations) or ``torch.float16``.
        skip: layer names to leave alone (same matching rules as :func:`quantize_model`). For an
            lmkit GPT pass ``skip=("lm_head",)`` to keep the tied output layer in fp32.
        engine: quantized engine to pack the weights for (see :func:`quantized_engine`); it is set
            only while converting, so run the model under the same engine.
        per_channel: one weight scale per output row (``per_channel_dynamic_qconfig``) instead of
            one per tensor (the default qconfig). Activations are always quantized per tensor,
            per batch, to quint8 -- and on the x86/fbgemm engines with ``reduce_range=True`` (7
            bits, to avoid int16 overflow on CPUs without VNNI), which hurts layers whose inputs
            have outliers (a BERT FFN's down-projection sees GELU outputs with max/std near 90).
        reduce_range: ``True`` is PyTorch's behaviour (7-bit activations); ``False`` uses
            :class:`FullRangeDynamicLinear` (8-bit activations). On all-MiniLM-L6-v2,
            per-channel weights with ``reduce_range=False`` lift the mean cosine of sentence
            embeddings to fp32 from 0.945 (defaults) to 0.992 at the same speed (chapter 15).
        inplace: quantize ``model`` itself instead of a deep copy.
    Returns:
        The model with ``torch.ao.nn.quantized.dynamic.Linear``
        layers; input/output shapes unchanged.
    """
    from torch.ao.quantization import (
        default_dynamic_qconfig,
        float16_dynamic_qconfig,
        per_channel_dynamic_qconfig,
        quantize_dynamic,
    )

    skip = tuple(skip)
    if dtype == torch.qint8:
        qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
    elif dtype == torch.float16:
        qconfig = float16_dynamic_qconfig
    else:
        raise ValueError(
            f"dynamic quantization supports dtype torch.qint8 or torch.float16, got {dtype}"
        )
    if skip or per_channel:
        spec = {
            n: qconfig
            for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and not _skipped(n, skip)
        }
    else:
        spec = {nn.Linear}
    mapping = None
    if not reduce_range and dtype == torch.qint8:
        from torch.ao.quantization.quantization_mappings import (
            get_default_dynamic_quant_module_mappings,
        )

        mapping = {**get_default_dynamic_quant_module_mappings(), nn.Linear: FullRangeDynamicLinear}
    with quantized_engine(engine), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.ao\.quantization is deprecated.*")
        warnings.filterwarnings(
            "ignore", message=r".*quantized tensor creation functions.*deprecated.*"
        )
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.ao")
        return quantize_dynamic(model, spec, dtype=dtype, mapping=mapping, inplace=inplace)


def import_torchao():
    """Import torchao quietly: on a CPU-only machine it logs 'Failed to load ..._C_mxfp8...so' for
    its optional CUDA extensions (harmless), and torch logs a pytree deprecation note about one of
    its enums. Returns the module, or raises ImportError. Chapter 15."""
    loggers = [logging.getLogger(n) for n in ("torchao", "torch.utils._pytree")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import torchao
            import torchao.quantization  # noqa: F401
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
    return torchao


def torchao_quantize(
    model: nn.Module,
    bits: int = 8,
    group_size: int | None = None,
    skip: Iterable[str] = DEFAULT_SKIP,
    inplace: bool = False,
    fallback: bool = True,
) -> tuple[nn.Module, str]:
    """torchao weight-only quantization of the ``nn.Linear`` layers. Explained in chapter 15.

    bits=8 uses ``Int8WeightOnlyConfig`` (per-row, or ``PerGroup(group_size)``), which works on CPU.
    bits=4 (group-wise; ``group_size=None`` means 32) tries ``Int4WeightOnlyConfig(group_size)``
    (CUDA only in torchao 0.18), then the CPU path
    ``IntxWeightOnlyConfig(torch.int4, PerGroup)`` (int4 values stored unpacked in int8 bytes). If
    torchao is missing or every torchao path fails and ``fallback`` is true, a warning says why and
    lmkit's own :func:`quantize_model` is used instead; with ``fallback=False`` the error is raised.

    Returns:
        (quantized model, description of the path that
        was used, e.g. "torchao Int8WeightOnlyConfig").
    """
    if bits not in (4, 8):
        raise ValueError(f"torchao_quantize supports bits=8 or bits=4, got {bits!r}")
    skip = tuple(skip)
    base = model
    if bits == 4 and group_size is None:
        group_size = 32  # torchao's int4 weight-only quantization is group-wise

    def lmkit_fallback(reason: str):
        if not fallback:
            raise RuntimeError(reason)
        fallback_call = f"lmkit.quant.quantize_model(bits={bits}, group_size={group_size})"
        msg = f"{reason}; falling back to {fallback_call}"
        warnings.warn(msg, RuntimeWarning, stacklevel=3)
        return quantize_model(
            base, bits, group_size, skip, inplace=inplace
        ), f"lmkit fallback ({reason})"

    try:
        import_torchao()
        from torchao.quantization import (
            Int4WeightOnlyConfig,
            Int8WeightOnlyConfig,
            IntxWeightOnlyConfig,
            quantize_,
        )
        from torchao.quantization.granularity import PerGroup, PerRow
    except ImportError as e:
        return lmkit_fallback(f"torchao is not importable ({e})")

    def keep(module, fqn):
        return isinstance(module, nn.Linear) and not _skipped(fqn, skip)

    if bits == 8:
        gran = PerRow() if group_size is None else PerGroup(group_size)
        attempts = [
            ("torchao Int8WeightOnlyConfig", lambda: Int8WeightOnlyConfig(granularity=gran))
        ]
    else:
        g = group_size
        attempts = [
            (
                f"torchao Int4WeightOnlyConfig(group_size={g})",
                lambda: Int4WeightOnlyConfig(group_size=g),
            ),
            (
                f"torchao IntxWeightOnlyConfig(int4, PerGroup({g})) "
                "[int4 values stored unpacked in int8]",
                lambda: IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(g)),
            ),
        ]
    errors = []
    for label, make_config in attempts:
        target = model if inplace else copy.deepcopy(model)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                quantize_(target, make_config(), filter_fn=keep)
            if errors:
                warnings.warn(f"{'; '.join(errors)}; using {label}", RuntimeWarning, stacklevel=2)
            return target, label
        except (
            Exception
        ) as e:  # torchao raises ImportError/RuntimeError/NotImplementedError by path
            errors.append(
                f"{label.split(' [')[0]} failed on {_device_of(model)}: {type(e).__name__}: {e}"
            )
            if inplace and any(is_quantized_module(m) for m in model.modules()):
                raise RuntimeError(
                    f"{errors[-1]}; the model was changed part-way (inplace=True): "
                    "reload it, or call with inplace=False"
                ) from e
    return lmkit_fallback("; ".join(errors))


def _device_of(model: nn.Module) -> str:
    p = next(iter(model.parameters()), None)
    return str(p.device) if p is not None else "cpu"

"""Quantization by hand: absmax and zero-point; per-tensor, per-channel, group-wise; int4 packing.

Explained in chapter 15.

Conventions (used throughout :mod:`lmkit.quant`):

* **absmax** (symmetric): ``scale = max|x| / qmax`` with ``qmax = 2**(bits-1) - 1``;
  ``q = round(x / scale)`` is a signed integer in ``[-qmax, qmax]`` (int8 storage);
  ``x ~ q * scale``. Zero maps to zero exactly. Error per element <= scale / 2.
* **zero-point** (asymmetric, affine): the range ``[min(x, 0), max(x, 0)]`` is mapped onto the
  unsigned integers ``[0, 2**bits - 1]`` (uint8 storage): ``scale = (max - min) / (2**bits - 1)``,
  ``zero_point = round(-min / scale)``, ``q = clamp(round(x / scale) + zero_point)``,
  ``x ~ (q - zero_point) * scale``. Zero is exactly representable; error per element <= scale / 2.
* Scales and zero points are kept with ``keepdim=True`` so that they broadcast against ``q``.
* **Group-wise** quantization splits the last dimension (a weight's input features) into groups of
  ``group_size`` consecutive values, each group with its own scale: ``q`` keeps the shape of the
  weight (out, in); ``scale`` is (out, in // group_size). Per-channel = one group per row.
"""

from __future__ import annotations

import torch

# Scales are never smaller than this, so an all-zero row or group quantizes to zeros without 0 / 0.
_EPS = 1e-12


def _check_bits(bits: int) -> None:
    if not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ValueError(f"bits must be an integer from 2 to 8, got {bits!r}")


def qrange(bits: int, signed: bool = True) -> tuple[int, int]:
    """Integer range used for ``bits``: signed (absmax)
    ``(-(2**(b-1)-1), 2**(b-1)-1)``, restricted to
    be symmetric; unsigned (zero-point) ``(0, 2**b - 1)``. Explained in chapter 15."""
    _check_bits(bits)
    if signed:
        qmax = 2 ** (bits - 1) - 1
        return -qmax, qmax
    return 0, 2**bits - 1


def absmax_quantize(
    x: torch.Tensor, bits: int = 8, dim: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric (absmax) quantization. Explained in chapter 15.

    Args:
        x: float tensor of any shape.
        bits: 2..8.
        dim: ``None`` for one scale for the whole tensor (per-tensor);
            an int for one scale per slice along the other dimensions,
            the max being taken over ``dim`` (for a weight (out, in),
            ``dim=-1`` gives one scale per output channel).
    Returns:
        q: int8 tensor shaped like ``x``, values in ``[-qmax, qmax]``.
        scale: float32, shape ``()`` (per-tensor) or ``x``'s shape with ``dim`` reduced to 1.
    """
    _, qmax = qrange(bits, signed=True)
    x = x.detach().float()
    amax = x.abs().amax() if dim is None else x.abs().amax(dim=dim, keepdim=True)
    scale = amax.clamp(min=_EPS) / qmax
    q = torch.round(x / scale).clamp(-qmax, qmax).to(torch.int8)
    return q, scale


def absmax_dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`absmax_quantize`: ``q * scale`` as float32 (shape of ``q``). Chapter 15."""
    return q.float() * scale.float()


def zeropoint_quantize(
    x: torch.Tensor, bits: int = 8, dim: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric (zero-point, affine) quantization onto
    ``[0, 2**bits - 1]``. Explained in chapter 15.

    Args and shapes as in :func:`absmax_quantize`.
    Returns:
        q: uint8 tensor shaped like ``x``.
        scale: float32, per-tensor ``()`` or with ``dim`` reduced to 1.
        zero_point: uint8, same shape as ``scale``; the integer that represents 0.0.
    """
    qmin, qmax = qrange(bits, signed=False)
    x = x.detach().float()
    if dim is None:
        lo, hi = x.amin(), x.amax()
    else:
        lo, hi = x.amin(dim=dim, keepdim=True), x.amax(dim=dim, keepdim=True)
    lo, hi = lo.clamp(max=0.0), hi.clamp(min=0.0)  # the range must contain 0
    scale = (hi - lo).clamp(min=_EPS) / (qmax - qmin)
    zero_point = torch.round(-lo / scale).clamp(qmin, qmax)
    q = (torch.round(x / scale) + zero_point).clamp(qmin, qmax).to(torch.uint8)
    return q, scale, zero_point.to(torch.uint8)


def zeropoint_dequantize(
    q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor
) -> torch.Tensor:
    """Inverse of :func:`zeropoint_quantize`: ``(q -
    zero_point) * scale`` as float32. Chapter 15."""
    return (q.float() - zero_point.float()) * scale.float()


def check_group_size(n: int, group_size: int | None) -> int:
    """Validate a group size for a last dimension of ``n`` values and return it (``None`` -> ``n``).

    Raises ``ValueError`` naming valid choices when ``group_size``
    is not a positive divisor of ``n``. Explained in chapter 15.
    """
    if group_size is None:
        return n
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(
            f"group_size must be a positive integer or None (per-channel), got {group_size!r}"
        )
    if n % group_size:
        divisors = [d for d in (16, 32, 64, 128, 256) if n % d == 0] or [
            d for d in range(1, n + 1) if n % d == 0
        ][-4:]
        raise ValueError(
            f"group_size={group_size} does not divide the {n} input features; "
            f"use a divisor of {n} (for example {divisors}) or group_size=None for per-channel"
        )
    return group_size


def quantize_groups(
    w: torch.Tensor, bits: int = 8, group_size: int | None = None, scheme: str = "absmax"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Group-wise (or per-channel) quantization of a weight along its last dimension. Chapter 15.

    Args:
        w: (..., in) float weight, typically an ``nn.Linear`` weight (out, in).
        bits: 2..8.
        group_size: values sharing one scale; must divide ``in``. ``None`` = per-channel (one scale
            per row, i.e. per output feature).
        scheme: ``"absmax"`` (symmetric, int8 storage) or ``"zeropoint"`` (asymmetric, uint8).
    Returns:
        q: (..., in) integers (int8 for absmax, uint8 for zeropoint).
        scale: (..., in // group_size) float32.
        zero_point: (..., in // group_size) uint8, or ``None`` for absmax.
    """
    if w.dim() < 1:
        raise ValueError("quantize_groups needs a tensor with at least one dimension")
    n = w.size(-1)
    g = check_group_size(n, group_size)
    grouped = w.reshape(*w.shape[:-1], n // g, g)
    if scheme == "absmax":
        q, scale = absmax_quantize(grouped, bits, dim=-1)
        zero = None
    elif scheme == "zeropoint":
        q, scale, zero = zeropoint_quantize(grouped, bits, dim=-1)
        zero = zero.squeeze(-1)
    else:
        raise ValueError(f"scheme must be 'absmax' or 'zeropoint', got {scheme!r}")
    return q.reshape(w.shape), scale.squeeze(-1), zero


def dequantize_groups(
    q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None = None
) -> torch.Tensor:
    """Inverse of :func:`quantize_groups`: q (..., in),
    scale (..., G) -> float32 (..., in). Chapter 15.

    The group size is ``in // G``.
    """
    n, n_groups = q.size(-1), scale.size(-1)
    if n_groups < 1 or n % n_groups:
        raise ValueError(f"{n_groups} scales per row do not split {n} values into equal groups")
    grouped = q.reshape(*q.shape[:-1], n_groups, n // n_groups).float()
    if zero_point is not None:
        grouped = grouped - zero_point.float().unsqueeze(-1)
    return (grouped * scale.float().unsqueeze(-1)).reshape(q.shape)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Pack 4-bit integers two per byte along the last dimension. Explained in chapter 15.

    Args:
        q: (..., n) integer tensor with values in [-8, 7] (signed, two's complement nibbles) or,
           for uint8 input, in [0, 15]. ``n`` may be odd: a zero nibble pads the last byte.
    Returns:
        (..., ceil(n / 2)) uint8: element ``2i`` in the low nibble, ``2i + 1`` in the high nibble.
    """
    if q.dtype.is_floating_point or q.dtype == torch.bool or q.is_complex():
        raise ValueError(f"pack_int4 takes an integer tensor, got {q.dtype}")
    if q.dim() < 1:
        raise ValueError("pack_int4 needs a tensor with at least one dimension")
    lo, hi = (0, 15) if q.dtype == torch.uint8 else (-8, 7)
    if q.numel() and (int(q.min()) < lo or int(q.max()) > hi):
        raise ValueError(
            f"pack_int4: values must lie in [{lo}, {hi}] for "
            f"{q.dtype}, got [{int(q.min())}, {int(q.max())}]"
        )
    nib = (q.to(torch.int16) & 0xF).to(torch.uint8)
    if nib.size(-1) % 2:
        nib = torch.cat([nib, nib.new_zeros(*nib.shape[:-1], 1)], dim=-1)
    return nib[..., 0::2] | (nib[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor, n: int, signed: bool = True) -> torch.Tensor:
    """Inverse of :func:`pack_int4`. Explained in chapter 15.

    Args:
        packed: (..., ceil(n / 2)) uint8.
        n: number of 4-bit values per row before packing.
        signed: return int8 in [-8, 7] (True) or uint8 in [0, 15] (False).
    Returns:
        (..., n) int8 or uint8.
    """
    if packed.dtype != torch.uint8:
        raise ValueError(f"unpack_int4 takes a uint8 tensor, got {packed.dtype}")
    if (n + 1) // 2 != packed.size(-1):
        raise ValueError(
            f"unpack_int4: {packed.size(-1)} bytes per row hold {2 * packed.size(-1) - 1} or "
            f"{2 * packed.size(-1)} values, not n={n}"
        )
    lo, hi = packed & 0xF, packed >> 4
    out = torch.stack((lo, hi), dim=-1).flatten(-2)[..., :n]
    if signed:
        out = out.to(torch.int8)
        out = torch.where(out > 7, out - 16, out)
    return out

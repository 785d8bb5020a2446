"""Fold arithmetic: small pure functions on tensors, each exact up to rounding.

They compute in the dtype they are given; callers pass float64 and cast once at the end.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bn_scale_shift(
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    eps: float,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BatchNorm as ``a * z + c``: ``a = gamma / sqrt(var + eps)``, ``c = beta - mean * a``.

    ``weight``/``bias`` are ``None`` for ``affine=False`` (gamma 1, beta 0).
    """
    scale = torch.rsqrt(running_var + eps)
    if weight is not None:
        scale = weight * scale
    shift = -running_mean * scale
    if bias is not None:
        shift = shift + bias
    return scale, shift


def fuse_bn(
    kernel: torch.Tensor, conv_bias: torch.Tensor | None, scale: torch.Tensor, shift: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold ``BN(conv(x)) = a * conv(x) + c`` into the conv: ``W' = a W``, ``b' = c + a b``."""
    fused_kernel = kernel * scale.reshape(-1, *([1] * (kernel.dim() - 1)))
    fused_bias = shift if conv_bias is None else shift + scale * conv_bias
    return fused_kernel, fused_bias


def pad_kernel(kernel: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad a square ``k x k`` kernel to ``size x size``, centred (``size - k`` must be even)."""
    k = kernel.shape[-1]
    if kernel.shape[-2] != k or size < k or (size - k) % 2:
        raise ValueError(f"cannot centre a {tuple(kernel.shape[-2:])} kernel in {size}x{size}")
    p = (size - k) // 2
    return F.pad(kernel, (p, p, p, p))


def dilate_kernel(kernel: torch.Tensor, dilation: int) -> torch.Tensor:
    """The dense kernel of a dilated one: ``d - 1`` zeros between taps, ``k -> d(k-1) + 1``."""
    if dilation == 1:
        return kernel
    kh, kw = kernel.shape[-2:]
    dense = kernel.new_zeros(*kernel.shape[:-2], dilation * (kh - 1) + 1, dilation * (kw - 1) + 1)
    dense[..., ::dilation, ::dilation] = kernel
    return dense


def add_branches(*branches: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum parallel convs of identical geometry: kernels add, biases add."""
    kernels, biases = zip(*branches, strict=True)
    return torch.stack(kernels).sum(0), torch.stack(biases).sum(0)


def concat_1x1(*kernels: torch.Tensor) -> torch.Tensor:
    """Stack 1x1 convs that read the same input into one conv (outputs concatenated in order)."""
    return torch.cat(kernels, dim=0)

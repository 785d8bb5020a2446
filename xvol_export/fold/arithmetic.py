"""Fold arithmetic: small pure functions on tensors, each exact up to rounding.

They compute in the dtype they are given; callers pass float64 and cast once at the end. The few that read a
module (``bn_affine64``, ``conv_bn64``, ``kernel_bn64``) take its tensors in float64; :func:`assign` is the one
cast at the end.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


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
    if kernel.shape[-2] != kernel.shape[-1]:
        raise ValueError(f"cannot centre a {tuple(kernel.shape[-2:])} kernel in {size}x{size}: it is not square")
    return pad_kernel_to(kernel, size, size)


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


def identity_kernel(channels: int, groups: int, kernel_size: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The ``k x k`` kernel of a grouped conv (``channels`` in and out) that returns its input unchanged."""
    if channels % groups or kernel_size % 2 == 0:
        raise ValueError(f"identity needs channels divisible by groups and an odd kernel, got {channels}, "
                         f"{groups}, {kernel_size}")
    per_group = channels // groups
    kernel = torch.zeros(channels, per_group, kernel_size, kernel_size, dtype=dtype)
    centre = kernel_size // 2
    kernel[torch.arange(channels), torch.arange(channels) % per_group, centre, centre] = 1
    return kernel


def pad_kernel_to(kernel: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Zero-pad a ``kh x kw`` kernel to ``height x width``, centred (e.g. a ``1 x k`` or ``k x 1`` kernel into
    ``k x k``); both differences must be even and non-negative."""
    kh, kw = kernel.shape[-2:]
    dh, dw = height - kh, width - kw
    if dh < 0 or dw < 0 or dh % 2 or dw % 2:
        raise ValueError(f"cannot centre a {kh}x{kw} kernel in {height}x{width}")
    return F.pad(kernel, (dw // 2, dw // 2, dh // 2, dh // 2))


def merge_1x1_kxk(
    k1: torch.Tensor, b1: torch.Tensor, k2: torch.Tensor, b2: torch.Tensor, groups: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """One ``k x k`` conv equal to a 1x1 conv ``(k1, b1)`` followed by an unpadded ``k x k`` conv ``(k2, b2)``,
    both with ``groups``, when the intermediate is padded with ``b1`` (the 1x1's output for a zero input, as
    DBB's BN-and-pad layer does): ``W = k2 . k1`` per group, ``b = b2 + sum(k2 * b1)``. The merged conv
    zero-pads the input by the amount the intermediate was padded."""
    out_ch, mid_per_group = k2.shape[:2]
    mid, in_per_group = k1.shape[:2]
    if k1.shape[-2:] != (1, 1) or mid % groups or out_ch % groups or mid // groups != mid_per_group:
        raise ValueError(f"cannot chain a {tuple(k1.shape)} 1x1 kernel into a {tuple(k2.shape)} kernel "
                         f"with {groups} groups")
    w1 = k1.reshape(groups, mid // groups, in_per_group)
    w2 = k2.reshape(groups, out_ch // groups, mid_per_group, *k2.shape[-2:])
    kernel = torch.einsum("gomhw,gmi->goihw", w2, w1).reshape(out_ch, in_per_group, *k2.shape[-2:])
    bias = b2 + torch.einsum("gomhw,gm->go", w2, b1.reshape(groups, mid_per_group)).reshape(out_ch)
    return kernel, bias


def avg_pool_kernel(
    channels: int, kernel_size: int | tuple[int, int], groups: int = 1, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """The kernel of a grouped conv (``channels`` in and out) that computes average pooling with zero
    padding counted (``count_include_pad=True``): ``1 / (kh kw)`` on each channel's own input."""
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    if channels % groups or kh < 1 or kw < 1:
        raise ValueError(f"average pooling needs channels divisible by groups and a positive kernel, got "
                         f"{channels}, {groups}, {kh}x{kw}")
    per_group = channels // groups
    kernel = torch.zeros(channels, per_group, kh, kw, dtype=dtype)
    kernel[torch.arange(channels), torch.arange(channels) % per_group] = 1.0 / (kh * kw)
    return kernel


def merge_dilated(
    branches: list[tuple[torch.Tensor, torch.Tensor, int]], size: int | tuple[int, int] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum centred parallel convs ``(kernel, bias, dilation)`` of any sizes and dilations into one undilated
    conv: each kernel is dilated, then centre-padded to ``size`` (default: the largest dilated size)."""
    branches = list(branches)
    if not branches:
        raise ValueError("merge_dilated needs at least one branch")
    dense = [(dilate_kernel(kernel, dilation), bias) for kernel, bias, dilation in branches]
    if size is None:
        height = max(k.shape[-2] for k, _ in dense)
        width = max(k.shape[-1] for k, _ in dense)
    else:
        height, width = (size, size) if isinstance(size, int) else size
    return add_branches(*((pad_kernel_to(k, height, width), b) for k, b in dense))


def fuse_bn_transposed(
    kernel: torch.Tensor, bias: torch.Tensor | None, scale: torch.Tensor, shift: torch.Tensor, groups: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold ``BN(convtranspose(x)) = a * convtranspose(x) + c`` into a transposed conv whose ``kernel`` is
    ``(in, out / groups, k...)``: output channel ``g * out_g + j`` is column ``j`` of group ``g``'s rows, so
    ``W'[g, :, j] = a[g * out_g + j] W[g, :, j]``, ``b' = c + a b``."""
    in_ch, out_g = kernel.shape[:2]
    if in_ch % groups or scale.numel() != groups * out_g or shift.numel() != scale.numel():
        raise ValueError(f"cannot scale the outputs of a {tuple(kernel.shape)} transposed kernel with {groups} "
                         f"groups by {scale.numel()} channels")
    grouped = kernel.reshape(groups, in_ch // groups, out_g, -1)
    fused_kernel = (grouped * scale.reshape(groups, 1, out_g, 1)).reshape(kernel.shape)
    fused_bias = shift if bias is None else shift + scale * bias
    return fused_kernel, fused_bias


def fuse_bn_before(
    kernel: torch.Tensor, bias: torch.Tensor | None, scale: torch.Tensor, shift: torch.Tensor, groups: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold a BatchNorm on the input, ``conv(a * x + c)``, into a conv or linear of ``kernel``
    ``(out, in / groups, k...)``: ``W' = W * a`` along each group's input channels, ``b' = b + sum(W * c)``
    over input channels and taps. Exact for an unpadded conv, or one that pads with input values."""
    out_ch, in_g = kernel.shape[:2]
    if out_ch % groups or scale.numel() != groups * in_g or shift.numel() != scale.numel():
        raise ValueError(f"cannot scale the inputs of a {tuple(kernel.shape)} kernel with {groups} groups by "
                         f"{scale.numel()} channels")
    grouped = kernel.reshape(groups, out_ch // groups, in_g, -1)
    fused_kernel = (grouped * scale.reshape(groups, 1, in_g, 1)).reshape(kernel.shape)
    extra = (grouped * shift.reshape(groups, 1, in_g, 1)).sum(dim=(2, 3)).reshape(out_ch)
    fused_bias = extra if bias is None else bias + extra
    return fused_kernel, fused_bias


def add_kxk_branches(
    kxk: list[tuple[torch.Tensor, torch.Tensor]],
    one_by_one: tuple[torch.Tensor, torch.Tensor] | None,
    identity: tuple[torch.Tensor, torch.Tensor] | None,
    kernel_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum kxk branches, a 1x1 branch (padded onto the centre tap) and an identity branch (already kxk) into one
    kernel and bias.

    A dilated kxk conv's centre tap reads the pixel the 1x1 branch reads, so this holds for any dilation.
    """
    branches = list(kxk)
    if one_by_one is not None:
        branches.append((pad_kernel(one_by_one[0], kernel_size), one_by_one[1]))
    if identity is not None:
        branches.append(identity)
    return add_branches(*branches)


# ------------------------------------------------------------------------------- reading and writing modules


def bn_affine64(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode ``(a, c)`` of a BatchNorm, in float64."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("BatchNorm without running statistics (track_running_stats=False) cannot be folded")
    weight = None if bn.weight is None else bn.weight.detach().double()
    bias = None if bn.bias is None else bn.bias.detach().double()
    return bn_scale_shift(bn.running_mean.double(), bn.running_var.double(), bn.eps, weight, bias)


def conv_bn64(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """``(kernel, bias)`` in float64 of ``bn(conv(x))`` in eval mode (the conv's own bias kept, if it has one)."""
    bias = None if conv.bias is None else conv.bias.detach().double()
    return fuse_bn(conv.weight.detach().double(), bias, *bn_affine64(bn))


def kernel_bn64(kernel: torch.Tensor, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """``(kernel, bias)`` in float64 of a fixed, bias-free ``kernel`` (identity, average pooling) followed by
    ``bn`` in eval mode."""
    scale, shift = bn_affine64(bn)
    return fuse_bn(kernel.to(scale.device), None, scale, shift)


def assign(module: nn.Module, **tensors: torch.Tensor) -> None:
    """Copy float64 results into ``module``'s tensors, casting once; a name may be dotted (``conv.weight``)."""
    with torch.no_grad():
        for name, value in tensors.items():
            owner, _, attr = name.rpartition(".")
            param = getattr(module.get_submodule(owner) if owner else module, attr)
            param.copy_(value.to(param.dtype).reshape(param.shape))

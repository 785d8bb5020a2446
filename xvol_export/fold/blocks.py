"""Folding one module: conv + BN into a conv, and an XVolution into its deploy form."""

from __future__ import annotations

import math

import torch
from torch import nn

from xvol_export.fold.arithmetic import add_branches, bn_scale_shift, concat_1x1, dilate_kernel, fuse_bn, pad_kernel
from xvol_export.layers import XVolution, XVolutionDeploy


def bn_affine64(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode ``(a, c)`` of a BatchNorm, in float64."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("BatchNorm without running statistics (track_running_stats=False) cannot be folded")
    weight = None if bn.weight is None else bn.weight.detach().double()
    bias = None if bn.bias is None else bn.bias.detach().double()
    return bn_scale_shift(bn.running_mean.double(), bn.running_var.double(), bn.eps, weight, bias)


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new conv with bias that computes ``bn(conv(x))`` in eval mode (computed in float64)."""
    from xvol_export.fold.conv_bn import fold_norm

    return fold_norm("conv_bn", conv, bn).eval()


def fold_xvolution(block: XVolution, layout: str = "split", dilated_conv: str = "direct",
                   aggregate: str = "slices") -> XVolutionDeploy:
    """The deploy form of an eval-mode ``XVolution``, computed in float64 and cast at the end.

    ``dilated_conv`` and ``aggregate`` only choose how the deploy block computes (see
    :class:`XVolutionDeploy`); the weights are the same either way.
    """
    cfg = block.config()
    weight = block.conv.weight
    deploy = XVolutionDeploy(**cfg, layout=layout, dilated_conv=dilated_conv, aggregate=aggregate)
    deploy = deploy.to(device=weight.device, dtype=weight.dtype)
    deploy.eval()  # the fold is defined for eval mode, and so is its result

    k3, b3 = fuse_bn(block.conv.weight.detach().double(), None, *bn_affine64(block.conv_bn))
    extra_bias = torch.zeros_like(b3)
    if block.attention:
        v_scale, v_shift = bn_affine64(block.attn_bn)
        extra_bias = v_shift  # softmax weights sum to 1, so attn_bn's shift is a constant per channel
        attn = block.attn
        q = attn.q.weight.detach().double() / math.sqrt(block.attn_channels)
        k = attn.k.weight.detach().double()
        v = attn.v.weight.detach().double() * v_scale.reshape(-1, 1, 1, 1)
        _assign(deploy.proj, weight=concat_1x1(q, k, v))

    if not block.dilated_branch:
        _assign(deploy.static, weight=k3, bias=b3 + extra_bias)
        return deploy

    k5, b5 = fuse_bn(block.dconv.weight.detach().double(), None, *bn_affine64(block.dconv_bn))
    if deploy.layout == "dense":
        size = 4 * block.dilation + 1
        kernel, bias = add_branches((pad_kernel(k3, size), b3), (dilate_kernel(k5, block.dilation), b5))
        _assign(deploy.static, weight=kernel, bias=bias + extra_bias)
    else:
        _assign(deploy.conv, weight=k3, bias=b3 + b5 + extra_bias)
        _assign(deploy.dconv, weight=k5)
    return deploy


def _assign(module: nn.Module, **tensors: torch.Tensor) -> None:
    """Copy float64 results into ``module``'s parameters, casting once."""
    with torch.no_grad():
        for name, value in tensors.items():
            param = getattr(module, name)
            param.copy_(value.to(param.dtype).reshape(param.shape))

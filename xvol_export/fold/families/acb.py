"""The ACB family (ACNet's Asymmetric Convolution Block): ``k x k``, ``k x 1`` and ``1 x k`` convs with
BatchNorm fold into one ``k x k`` conv with bias."""

from __future__ import annotations

import torch
from torch import nn

from xvol_export.fold.arithmetic import add_branches, conv_bn64, pad_kernel_to
from xvol_export.fold.families.common import conv_label
from xvol_export.fold.family import BlockFamily, FoldContext, register_family
from xvol_export.layers.acb import ACBlock, ACBlockDeploy

DEPLOY_ARGS = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "padding_mode")


def _branch(conv: nn.Conv2d, bn: nn.BatchNorm2d, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    kernel, bias = conv_bn64(conv, bn)
    return pad_kernel_to(kernel, size, size), bias


def fold_weights(block: ACBlock, context: FoldContext) -> dict[str, torch.Tensor]:
    """The deploy conv of an eval-mode ``ACBlock`` in float64: each branch's BN fused into its conv (bias kept), the
    ``k x 1`` and ``1 x k`` kernels centre-padded to ``k x k``, all summed."""
    k = block.kernel_size
    kernel, bias = add_branches(_branch(block.square_conv, block.square_bn, k),
                                _branch(block.ver_conv, block.ver_bn, k),
                                _branch(block.hor_conv, block.hor_bn, k))
    return {"fused_conv.weight": kernel, "fused_conv.bias": bias}


def describe_training(block: ACBlock) -> str:
    """The training block's branches, e.g. ``conv3x3+BN + ...``."""
    k, args = block.kernel_size, (block.stride, block.dilation, block.groups, block.in_channels)
    return f"{conv_label(k, k, *args)}+BN + {conv_label(k, 1, *args)}+BN + {conv_label(1, k, *args)}+BN"


def describe_deploy(deploy: ACBlockDeploy) -> str:
    """The deploy conv, e.g. ``conv3x3``."""
    conv = deploy.fused_conv
    return conv_label(*conv.kernel_size, conv.stride[0], conv.dilation[0], conv.groups, conv.in_channels)


FAMILY = register_family(BlockFamily(
    name="acb",
    description="ACB (ACNet): kxk+BN + kx1+BN + 1xk+BN -> one kxk conv with bias",
    training_types=(ACBlock,),
    deploy_types=(ACBlockDeploy,),
    deploy_args=DEPLOY_ARGS,
    fold_weights=fold_weights,
    describe_training=describe_training,
    describe_deploy=describe_deploy,
    examples=lambda: [ACBlock(8, 8, 3, padding=1, groups=2), ACBlock(4, 6, 5, stride=2, padding=2, bias=True)],
))

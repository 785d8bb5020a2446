"""The dilated-reparam family (UniRepLKNet's Dilated Reparam Block): a large conv and small dilated convs with
BatchNorm fold into the large conv with bias."""

from __future__ import annotations

import torch

from xvol_export.fold.arithmetic import conv_bn64, merge_dilated
from xvol_export.fold.families.common import conv_label
from xvol_export.fold.family import BlockFamily, FoldContext, register_family
from xvol_export.layers.dilated_reparam import DilatedReparamBlock, DilatedReparamBlockDeploy

DEPLOY_ARGS = ("channels", "kernel_size", "stride", "groups")


def fold_weights(block: DilatedReparamBlock, context: FoldContext) -> dict[str, torch.Tensor]:
    """The deploy conv of an eval-mode ``DilatedReparamBlock`` in float64: each BN fused into its conv, each small
    kernel dilated and centre-padded to the large one, all summed."""
    branches = [(*conv_bn64(block.lk_origin, block.origin_bn), 1)]
    branches += [(*conv_bn64(conv, bn), r) for _, r, conv, bn in block.branches()]
    kernel, bias = merge_dilated(branches, block.kernel_size)
    return {"lk_origin.weight": kernel, "lk_origin.bias": bias}


def describe_training(block: DilatedReparamBlock) -> str:
    """The training block's branches, e.g. ``conv3x3+BN + ...``."""
    s, g, c, k = block.stride, block.groups, block.channels, block.kernel_size
    parts = [f"{conv_label(k, k, s, 1, g, c)}+BN"]
    parts += [f"{conv_label(small, small, s, r, g, c)}+BN" for small, r, _, _ in block.branches()]
    return " + ".join(parts)


def describe_deploy(deploy: DilatedReparamBlockDeploy) -> str:
    """The deploy conv, e.g. ``conv3x3``."""
    conv = deploy.lk_origin
    return conv_label(*conv.kernel_size, conv.stride[0], 1, conv.groups, conv.in_channels)


FAMILY = register_family(BlockFamily(
    name="dilated_reparam",
    description="Dilated Reparam (UniRepLKNet): large dwconv+BN + dilated small dwconvs+BN -> one large dwconv "
                "with bias",
    training_types=(DilatedReparamBlock,),
    deploy_types=(DilatedReparamBlockDeploy,),
    deploy_args=DEPLOY_ARGS,
    fold_weights=fold_weights,
    describe_training=describe_training,
    describe_deploy=describe_deploy,
    examples=lambda: [DilatedReparamBlock(8, 7), DilatedReparamBlock(8, 5, stride=2, groups=2)],
))

"""The MobileOne block family: :class:`MobileOneBlock` folds into :class:`MobileOneBlockDeploy`, one kxk conv
with bias."""

from __future__ import annotations

import torch

from xvol_export.fold.arithmetic import add_kxk_branches, conv_bn64, identity_kernel, kernel_bn64
from xvol_export.fold.families.common import block_label, se_graph_convs, se_suffix, se_weights
from xvol_export.fold.family import BlockFamily, FoldContext, register_family
from xvol_export.layers.mobileone import DEPLOY_ARGS, MobileOneBlock, MobileOneBlockDeploy


def fold_weights(block: MobileOneBlock, context: FoldContext) -> dict[str, torch.Tensor]:
    """The deploy conv of an eval-mode :class:`MobileOneBlock` in float64: the kxk branches, the 1x1 scale branch
    and the identity, each with its BN fused, summed on the kxk kernel; the SE block as it is."""
    scale = None if block.rbr_scale is None else conv_bn64(block.rbr_scale.conv, block.rbr_scale.bn)
    identity = None
    if block.rbr_skip is not None:
        identity = kernel_bn64(identity_kernel(block.in_channels, block.groups, block.kernel_size), block.rbr_skip)
    kxk = [conv_bn64(branch.conv, branch.bn) for branch in block.rbr_conv]
    kernel, bias = add_kxk_branches(kxk, scale, identity, block.kernel_size)
    return {"reparam_conv.weight": kernel, "reparam_conv.bias": bias, **se_weights(block)}


def describe_training(block: MobileOneBlock) -> str:
    """The training block's branches, e.g. ``4x dwconv3x3+BN + dwconv1x1+BN + BN(identity)``."""
    count = block.num_conv_branches
    text = f"{f'{count}x ' if count > 1 else ''}{block_label(block)}+BN"
    if block.rbr_scale is not None:
        text += f" + {block_label(block, 1)}+BN"
    if block.rbr_skip is not None:
        text += " + BN(identity)"
    return text + se_suffix(block)


def describe_deploy(deploy: MobileOneBlockDeploy) -> str:
    """The deploy conv, e.g. ``dwconv3x3``."""
    return block_label(deploy) + se_suffix(deploy)


FAMILY = register_family(BlockFamily(
    name="mobileone",
    description="MobileOne block: n kxk conv+BN, 1x1 conv+BN and BN identity branches -> one kxk conv with bias",
    training_types=(MobileOneBlock,),
    deploy_types=(MobileOneBlockDeploy,),
    deploy_args=DEPLOY_ARGS,
    fold_weights=fold_weights,
    describe_training=describe_training,
    describe_deploy=describe_deploy,
    graph_convs=se_graph_convs,
    examples=lambda: [MobileOneBlock(8, 8, 3, padding=1, groups=8, num_conv_branches=3), MobileOneBlock(8, 4, 1)],
))

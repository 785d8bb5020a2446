"""The RepVGG block family: :class:`RepVGGBlock` folds into :class:`RepVGGBlockDeploy`, one kxk conv with bias."""

from __future__ import annotations

import torch

from xvol_export.fold.arithmetic import add_kxk_branches, conv_bn64, identity_kernel, kernel_bn64
from xvol_export.fold.families.common import block_label, se_graph_convs, se_suffix, se_weights
from xvol_export.fold.family import BlockFamily, FoldContext, register_family
from xvol_export.layers.repvgg import DEPLOY_ARGS, RepVGGBlock, RepVGGBlockDeploy


def fold_weights(block: RepVGGBlock, context: FoldContext) -> dict[str, torch.Tensor]:
    """The deploy conv of an eval-mode :class:`RepVGGBlock` in float64: the kxk, 1x1 and identity branches, each
    with its BN fused, summed on the kxk kernel; the SE block as it is."""
    identity = None
    if block.rbr_identity is not None:
        identity = kernel_bn64(identity_kernel(block.in_channels, block.groups, block.kernel_size),
                               block.rbr_identity)
    dense, one_by_one = block.rbr_dense, block.rbr_1x1
    kernel, bias = add_kxk_branches([conv_bn64(dense.conv, dense.bn)], conv_bn64(one_by_one.conv, one_by_one.bn),
                                    identity, block.kernel_size)
    return {"rbr_reparam.weight": kernel, "rbr_reparam.bias": bias, **se_weights(block)}


def describe_training(block: RepVGGBlock) -> str:
    """The training block's branches, e.g. ``conv3x3+BN + conv1x1+BN + BN(identity)``."""
    text = f"{block_label(block)}+BN + {block_label(block, 1)}+BN"
    if block.rbr_identity is not None:
        text += " + BN(identity)"
    return text + se_suffix(block)


def describe_deploy(deploy: RepVGGBlockDeploy) -> str:
    """The deploy conv, e.g. ``conv3x3``."""
    return block_label(deploy) + se_suffix(deploy)


FAMILY = register_family(BlockFamily(
    name="repvgg",
    description="RepVGG block: kxk conv+BN, 1x1 conv+BN and BN identity branches -> one kxk conv with bias",
    training_types=(RepVGGBlock,),
    deploy_types=(RepVGGBlockDeploy,),
    deploy_args=DEPLOY_ARGS,
    fold_weights=fold_weights,
    describe_training=describe_training,
    describe_deploy=describe_deploy,
    graph_convs=se_graph_convs,
    examples=lambda: [
        RepVGGBlock(16, 16, 3, padding=1, groups=2, use_se=True),
        RepVGGBlock(4, 8, 3, stride=2, padding=1),
    ],
))

"""The MobileOne block family: :class:`MobileOneBlock` folds into :class:`MobileOneBlockDeploy`, one kxk conv
with bias."""

from __future__ import annotations

from xvol_export.fold.families.common import checked_config
from xvol_export.fold.families.repvgg import (
    block_label,
    conv_bn64,
    finish_deploy,
    fold_branches,
    graph_convs,
    identity64,
    se_suffix,
)
from xvol_export.fold.family import BlockFamily, FoldContext, register_family
from xvol_export.layers.mobileone import DEPLOY_ARGS, MobileOneBlock, MobileOneBlockDeploy


def fold_mobileone(block: MobileOneBlock, context: FoldContext | None = None) -> MobileOneBlockDeploy:
    """The deploy form of an eval-mode :class:`MobileOneBlock`, computed in float64 and cast once; ``block`` is
    left unchanged."""
    scale = None if block.rbr_scale is None else conv_bn64(block.rbr_scale)
    identity = None
    if block.rbr_skip is not None:
        identity = identity64(block.rbr_skip, block.in_channels, block.groups, block.kernel_size)
    kernel, bias = fold_branches([conv_bn64(b) for b in block.rbr_conv], scale, identity, block.kernel_size)
    deploy = MobileOneBlockDeploy(**{name: getattr(block, name) for name in DEPLOY_ARGS})
    return finish_deploy(deploy, block, deploy.reparam_conv, block.rbr_conv[0].conv.weight, kernel, bias)


def _describe_training(block: MobileOneBlock) -> str:
    count = block.num_conv_branches
    text = f"{f'{count}x ' if count > 1 else ''}{block_label(block)}+BN"
    if block.rbr_scale is not None:
        text += f" + {block_label(block, 1)}+BN"
    if block.rbr_skip is not None:
        text += " + BN(identity)"
    return text + se_suffix(block)


def _describe_deploy(deploy: MobileOneBlockDeploy) -> str:
    return block_label(deploy) + se_suffix(deploy)


FAMILY = register_family(BlockFamily(
    name="mobileone",
    description="MobileOne block: n kxk conv+BN, 1x1 conv+BN and BN identity branches -> one kxk conv with bias",
    training_types=(MobileOneBlock,),
    deploy_types=(MobileOneBlockDeploy,),
    fold=fold_mobileone,
    deploy_config=lambda deploy: deploy.config(),
    build_deploy=lambda config: MobileOneBlockDeploy(**checked_config(config, DEPLOY_ARGS, "mobileone")),
    describe_training=_describe_training,
    describe_deploy=_describe_deploy,
    graph_convs=graph_convs,
    examples=lambda: [MobileOneBlock(8, 8, 3, padding=1, groups=8, num_conv_branches=3), MobileOneBlock(8, 4, 1)],
))

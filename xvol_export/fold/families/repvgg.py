"""The RepVGG block family: :class:`RepVGGBlock` folds into :class:`RepVGGBlockDeploy`, one kxk conv with bias.

The helpers here (branch fusion, config checks, labels) serve the MobileOne family as well.
"""

from __future__ import annotations

import torch
from torch import nn

from xvol_export.fold.arithmetic import add_branches, fuse_bn, identity_kernel, pad_kernel
from xvol_export.fold.blocks import bn_affine64
from xvol_export.fold.families.common import checked_config, conv_label
from xvol_export.fold.family import BlockFamily, FoldContext, register_family
from xvol_export.layers.repvgg import DEPLOY_ARGS, RepVGGBlock, RepVGGBlockDeploy


def conv_bn64(branch: nn.Sequential) -> tuple[torch.Tensor, torch.Tensor]:
    """``(kernel, bias)`` in float64 of a ``conv`` + ``bn`` branch in eval mode."""
    conv = branch.conv
    conv_bias = None if conv.bias is None else conv.bias.detach().double()
    return fuse_bn(conv.weight.detach().double(), conv_bias, *bn_affine64(branch.bn))


def identity64(bn: nn.BatchNorm2d, channels: int, groups: int, kernel_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(kernel, bias)`` in float64 of a BatchNorm identity branch, as a centred kxk grouped conv."""
    scale, shift = bn_affine64(bn)
    return fuse_bn(identity_kernel(channels, groups, kernel_size).to(scale.device), None, scale, shift)


def fold_branches(kxk: list[tuple[torch.Tensor, torch.Tensor]], one_by_one: tuple[torch.Tensor, torch.Tensor] | None,
                  identity: tuple[torch.Tensor, torch.Tensor] | None, kernel_size: int) -> tuple[torch.Tensor,
                                                                                                  torch.Tensor]:
    """Sum kxk branches, a 1x1 branch (padded onto the centre tap) and an identity branch into one kernel and bias.

    A dilated kxk conv's centre tap reads the pixel the 1x1 branch reads, so this holds for any dilation.
    """
    branches = list(kxk)
    if one_by_one is not None:
        branches.append((pad_kernel(one_by_one[0], kernel_size), one_by_one[1]))
    if identity is not None:
        branches.append(identity)
    return add_branches(*branches)


def finish_deploy(deploy: nn.Module, block: nn.Module, conv: nn.Conv2d, reference: torch.Tensor,
                  kernel: torch.Tensor, bias: torch.Tensor) -> nn.Module:
    """``deploy`` (a new block) on ``reference``'s device and dtype, in eval mode, with ``conv`` given the folded
    ``kernel`` and ``bias`` (cast once) and the SE block copied from ``block``."""
    deploy = deploy.to(device=reference.device, dtype=reference.dtype).eval()
    with torch.no_grad():
        conv.weight.copy_(kernel.to(conv.weight.dtype))
        conv.bias.copy_(bias.to(conv.bias.dtype))
    deploy.se.load_state_dict(block.se.state_dict())  # copies, so the training block shares nothing
    return deploy


def block_label(block: nn.Module, kernel_size: int | None = None) -> str:
    """:func:`conv_label` of a block's geometry (``kernel_size`` overrides, without dilation when 1)."""
    k = block.kernel_size if kernel_size is None else kernel_size
    return conv_label(k, k, block.stride, block.dilation if k > 1 else 1, block.groups, block.in_channels)


def se_suffix(block: nn.Module) -> str:
    """`` -> SE`` for a block with squeeze-and-excitation, else nothing."""
    return " -> SE" if block.use_se else ""


def graph_convs(deploy: nn.Module) -> int:
    """The deploy conv, plus the SE block's two 1x1 convs."""
    return 3 if deploy.use_se else 1


# -------------------------------------------------------------------------------------------------- the family


def fold_repvgg(block: RepVGGBlock, context: FoldContext | None = None) -> RepVGGBlockDeploy:
    """The deploy form of an eval-mode :class:`RepVGGBlock`, computed in float64 and cast once; ``block`` is
    left unchanged."""
    identity = None
    if block.rbr_identity is not None:
        identity = identity64(block.rbr_identity, block.in_channels, block.groups, block.kernel_size)
    kernel, bias = fold_branches([conv_bn64(block.rbr_dense)], conv_bn64(block.rbr_1x1), identity, block.kernel_size)
    deploy = RepVGGBlockDeploy(**{name: getattr(block, name) for name in DEPLOY_ARGS})
    return finish_deploy(deploy, block, deploy.rbr_reparam, block.rbr_dense.conv.weight, kernel, bias)


def _describe_training(block: RepVGGBlock) -> str:
    text = f"{block_label(block)}+BN + {block_label(block, 1)}+BN"
    if block.rbr_identity is not None:
        text += " + BN(identity)"
    return text + se_suffix(block)


def _describe_deploy(deploy: RepVGGBlockDeploy) -> str:
    return block_label(deploy) + se_suffix(deploy)


FAMILY = register_family(BlockFamily(
    name="repvgg",
    description="RepVGG block: kxk conv+BN, 1x1 conv+BN and BN identity branches -> one kxk conv with bias",
    training_types=(RepVGGBlock,),
    deploy_types=(RepVGGBlockDeploy,),
    fold=fold_repvgg,
    deploy_config=lambda deploy: deploy.config(),
    build_deploy=lambda config: RepVGGBlockDeploy(**checked_config(config, DEPLOY_ARGS, "repvgg")),
    describe_training=_describe_training,
    describe_deploy=_describe_deploy,
    graph_convs=graph_convs,
    examples=lambda: [
        RepVGGBlock(16, 16, 3, padding=1, groups=2, use_se=True),
        RepVGGBlock(4, 8, 3, stride=2, padding=1),
    ],
))

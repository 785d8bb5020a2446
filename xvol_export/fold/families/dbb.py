"""The DBB family (Diverse Branch Block): the ``k x k``, 1x1, 1x1-then-average and 1x1-then-``k x k`` branches
with BatchNorm fold into one ``k x k`` conv with bias."""

from __future__ import annotations

import torch

from xvol_export.fold.arithmetic import (
    add_branches,
    avg_pool_kernel,
    bn_affine64,
    conv_bn64,
    fuse_bn,
    identity_kernel,
    kernel_bn64,
    merge_1x1_kxk,
    pad_kernel,
)
from xvol_export.fold.families.common import conv_label
from xvol_export.fold.family import BlockFamily, FoldContext, register_family
from xvol_export.layers.dbb import DiverseBranchBlock, DiverseBranchBlockDeploy

DEPLOY_ARGS = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "groups")


def fold_weights(block: DiverseBranchBlock, context: FoldContext) -> dict[str, torch.Tensor]:
    """The deploy conv of an eval-mode ``DiverseBranchBlock`` in float64.

    Each BN is fused into the conv before it; the 1x1 branch is centre-padded; the 1x1-kxk branch and the
    1x1-average branch are merged with :func:`merge_1x1_kxk` (exact because their BN-and-pad layers pad with
    the BN's bias value), average pooling being the conv :func:`avg_pool_kernel`; the branches are summed.
    """
    k, groups = block.kernel_size, block.groups
    branches = [conv_bn64(block.dbb_origin.conv, block.dbb_origin.bn)]
    if hasattr(block, "dbb_1x1"):
        kernel, bias = conv_bn64(block.dbb_1x1.conv, block.dbb_1x1.bn)
        branches.append((pad_kernel(kernel, k), bias))

    seq = block.dbb_1x1_kxk
    if hasattr(seq, "idconv1"):
        weight = seq.idconv1.weight.detach().double()
        first = weight + identity_kernel(block.in_channels, groups, 1).to(weight.device)
        k1, b1 = fuse_bn(first, None, *bn_affine64(seq.bn1.bn))
    else:
        k1, b1 = conv_bn64(seq.conv1, seq.bn1.bn)
    k2, b2 = conv_bn64(seq.conv2, seq.bn2)
    branches.append(merge_1x1_kxk(k1, b1, k2, b2, groups))

    avg = block.dbb_avg
    k_avg, b_avg = kernel_bn64(avg_pool_kernel(block.out_channels, k, groups), avg.avgbn)
    if hasattr(avg, "conv"):
        k1, b1 = conv_bn64(avg.conv, avg.bn.bn)
        k_avg, b_avg = merge_1x1_kxk(k1, b1, k_avg, b_avg, groups)
    branches.append((k_avg, b_avg))

    kernel, bias = add_branches(*branches)
    return {"dbb_reparam.weight": kernel, "dbb_reparam.bias": bias}


def describe_training(block: DiverseBranchBlock) -> str:
    """The training block's branches, e.g. ``conv3x3+BN + ...``."""
    k, s, g, cin = block.kernel_size, block.stride, block.groups, block.in_channels
    kxk, one = conv_label(k, k, s, 1, g, cin), conv_label(1, 1, 1, 1, g, cin)
    avg = f"avg{k}x{k}" + (f"/s{s}" if s > 1 else "")
    parts = [f"{kxk}+BN"]
    if hasattr(block, "dbb_1x1"):
        parts += [f"{conv_label(1, 1, s, 1, g, cin)}+BN", f"{one}+BN+{avg}+BN"]
    else:
        parts.append(f"{avg}+BN")
    mid = block.internal_channels_1x1_3x3
    parts.append(f"{conv_label(1, 1, 1, 1, g, cin)}+BN+{conv_label(k, k, s, 1, g, mid)}+BN")
    return " + ".join(parts)


def describe_deploy(deploy: DiverseBranchBlockDeploy) -> str:
    """The deploy conv, e.g. ``conv3x3``."""
    conv = deploy.dbb_reparam
    return conv_label(*conv.kernel_size, conv.stride[0], 1, conv.groups, conv.in_channels)


FAMILY = register_family(BlockFamily(
    name="dbb",
    description="DBB: kxk+BN + 1x1+BN + 1x1+BN+avg+BN + 1x1+BN+kxk+BN -> one kxk conv with bias",
    training_types=(DiverseBranchBlock,),
    deploy_types=(DiverseBranchBlockDeploy,),
    deploy_args=DEPLOY_ARGS,
    fold_weights=fold_weights,
    describe_training=describe_training,
    describe_deploy=describe_deploy,
    examples=lambda: [
        DiverseBranchBlock(8, 8, 3, groups=2),
        DiverseBranchBlock(8, 8, 3, groups=8),
        DiverseBranchBlock(4, 8, 3, stride=2),
    ],
))

"""The DBB family (Diverse Branch Block): the ``k x k``, 1x1, 1x1-then-average and 1x1-then-``k x k`` branches
with BatchNorm fold into one ``k x k`` conv with bias."""

from __future__ import annotations

from typing import Any

import torch

from xvol_export.fold.arithmetic import (
    add_branches,
    avg_pool_kernel,
    fuse_bn,
    identity_kernel,
    merge_1x1_kxk,
    pad_kernel,
)
from xvol_export.fold.blocks import _assign, bn_affine64
from xvol_export.fold.families.common import checked_config, conv_label
from xvol_export.fold.family import BlockFamily, FoldContext, register_family
from xvol_export.layers.dbb import DiverseBranchBlock, DiverseBranchBlockDeploy

DEPLOY_ARGS = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "groups")


def _w(conv) -> torch.Tensor:
    return conv.weight.detach().double()


def fold_dbb(block: DiverseBranchBlock, context: FoldContext | None = None) -> DiverseBranchBlockDeploy:
    """The deploy form of an eval-mode ``DiverseBranchBlock``, in float64; ``block`` is unchanged.

    Each BN is fused into the conv before it; the 1x1 branch is centre-padded; the 1x1-kxk branch and the
    1x1-average branch are merged with :func:`merge_1x1_kxk` (exact because their BN-and-pad layers pad with
    the BN's bias value), average pooling being the conv :func:`avg_pool_kernel`; the branches are summed.
    """
    k, groups, out_channels = block.kernel_size, block.groups, block.out_channels
    branches = [fuse_bn(_w(block.dbb_origin.conv), None, *bn_affine64(block.dbb_origin.bn))]
    if hasattr(block, "dbb_1x1"):
        kernel, bias = fuse_bn(_w(block.dbb_1x1.conv), None, *bn_affine64(block.dbb_1x1.bn))
        branches.append((pad_kernel(kernel, k), bias))

    seq = block.dbb_1x1_kxk
    if hasattr(seq, "idconv1"):
        weight = _w(seq.idconv1)
        first = weight + identity_kernel(block.in_channels, groups, 1).to(weight.device)
    else:
        first = _w(seq.conv1)
    k1, b1 = fuse_bn(first, None, *bn_affine64(seq.bn1.bn))
    k2, b2 = fuse_bn(_w(seq.conv2), None, *bn_affine64(seq.bn2))
    branches.append(merge_1x1_kxk(k1, b1, k2, b2, groups))

    avg = block.dbb_avg
    scale, shift = bn_affine64(avg.avgbn)
    k_avg, b_avg = fuse_bn(avg_pool_kernel(out_channels, k, groups).to(scale.device), None, scale, shift)
    if hasattr(avg, "conv"):
        k1, b1 = fuse_bn(_w(avg.conv), None, *bn_affine64(avg.bn.bn))
        k_avg, b_avg = merge_1x1_kxk(k1, b1, k_avg, b_avg, groups)
    branches.append((k_avg, b_avg))

    kernel, bias = add_branches(*branches)
    weight = block.dbb_origin.conv.weight
    deploy = DiverseBranchBlockDeploy(block.in_channels, out_channels, k, block.stride, block.padding, groups)
    deploy = deploy.to(device=weight.device, dtype=weight.dtype).eval()
    _assign(deploy.dbb_reparam, weight=kernel, bias=bias)
    return deploy


def deploy_config(deploy: DiverseBranchBlockDeploy) -> dict[str, Any]:
    """The JSON-plain constructor arguments of a deploy block."""
    return deploy.config()


def build_deploy(config: dict[str, Any]) -> DiverseBranchBlockDeploy:
    """An empty deploy block from :func:`deploy_config`'s output (ValueError on missing or unknown keys)."""
    return DiverseBranchBlockDeploy(**checked_config(config, DEPLOY_ARGS, "dbb"))


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
    fold=fold_dbb,
    deploy_config=deploy_config,
    build_deploy=build_deploy,
    describe_training=describe_training,
    describe_deploy=describe_deploy,
    examples=lambda: [
        DiverseBranchBlock(8, 8, 3, groups=2),
        DiverseBranchBlock(8, 8, 3, groups=8),
        DiverseBranchBlock(4, 8, 3, stride=2),
    ],
))

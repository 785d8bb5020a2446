"""The dilated-reparam family (UniRepLKNet's Dilated Reparam Block): a large conv and small dilated convs with
BatchNorm fold into the large conv with bias."""

from __future__ import annotations

from typing import Any

from xvol_export.fold.arithmetic import fuse_bn, merge_dilated
from xvol_export.fold.blocks import _assign, bn_affine64
from xvol_export.fold.families.common import checked_config, conv_label
from xvol_export.fold.family import BlockFamily, FoldContext, register_family
from xvol_export.layers.dilated_reparam import DilatedReparamBlock, DilatedReparamBlockDeploy

DEPLOY_ARGS = ("channels", "kernel_size", "stride", "groups")


def _fused(conv, bn):
    bias = None if conv.bias is None else conv.bias.detach().double()
    return fuse_bn(conv.weight.detach().double(), bias, *bn_affine64(bn))


def fold_dilated_reparam(block: DilatedReparamBlock, context: FoldContext | None = None) -> DilatedReparamBlockDeploy:
    """The deploy form of an eval-mode ``DilatedReparamBlock``: each BN fused into its conv, each small kernel
    dilated and centre-padded to the large one, all summed, in float64; ``block`` is unchanged."""
    branches = [(*_fused(block.lk_origin, block.origin_bn), 1)]
    branches += [(*_fused(conv, bn), r) for _, r, conv, bn in block.branches()]
    kernel, bias = merge_dilated(branches, block.kernel_size)
    weight = block.lk_origin.weight
    deploy = DilatedReparamBlockDeploy(block.channels, block.kernel_size, block.stride, block.groups)
    deploy = deploy.to(device=weight.device, dtype=weight.dtype).eval()
    _assign(deploy.lk_origin, weight=kernel, bias=bias)
    return deploy


def deploy_config(deploy: DilatedReparamBlockDeploy) -> dict[str, Any]:
    """The JSON-plain constructor arguments of a deploy block."""
    return deploy.config()


def build_deploy(config: dict[str, Any]) -> DilatedReparamBlockDeploy:
    """An empty deploy block from :func:`deploy_config`'s output (ValueError on missing or unknown keys)."""
    return DilatedReparamBlockDeploy(**checked_config(config, DEPLOY_ARGS, "dilated_reparam"))


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
    fold=fold_dilated_reparam,
    deploy_config=deploy_config,
    build_deploy=build_deploy,
    describe_training=describe_training,
    describe_deploy=describe_deploy,
    examples=lambda: [DilatedReparamBlock(8, 7), DilatedReparamBlock(8, 5, stride=2, groups=2)],
))

"""Small networks of each block family's real training blocks, for the trained MNIST samples (``samples/train.py``).

Each is a few stages of one family's block (the module names inside a block are the official code's, as in
:mod:`xvol_export.layers`), sized for 1x32x32 inputs (MNIST's 28x28 digits padded by 2 px) so that it trains on
one CPU thread in a few minutes:

* ``mnist_repvgg``, ``mnist_acb``, ``mnist_dbb``: a RepVGG-shaped plain network (``stage0`` one block at full
  resolution, then ``stage1``, ``stage2``, ... as ``ModuleList``s whose first block has stride 2, then ``gap``
  and ``linear``, the names of DingXiaoH/RepVGG's ``RepVGG``); ACB and DBB blocks carry no nonlinearity of
  their own, so a ReLU follows each (ACNet's and DBB's ``conv_bn_relu``).
* ``mnist_mobileone``: apple/ml-mobileone's layout (``stage0``, then ``Sequential`` stages of depthwise 3x3 and
  pointwise 1x1 block pairs, ``gap``, ``linear``), with MobileOne-S0's 4 conv branches per block.
* ``mnist_dilated``: UniRepLKNet's layout (``downsample_layers``, ``stages`` of blocks whose ``dwconv`` is a
  :class:`~xvol_export.layers.DilatedReparamBlock` followed by ``norm`` (BatchNorm) and a pointwise FFN
  ``pwconv1``/``act``/``pwconv2`` with a residual, then ``head``), without the official SE, GRN, layer scale and
  final LayerNorm.

The X-volution and plain-ResNet samples use ``xvol_resnet_tiny`` (with ``stages=[2, 3]`` and ``stages=[]``).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from xvol_export.layers import ACBlock, DilatedReparamBlock, DiverseBranchBlock, MobileOneBlock, RepVGGBlock
from xvol_export.models.registry import register_model

SIZE = 32  # input height and width: MNIST's 28x28 padded by 2 px on each side


def _checked(widths: Sequence[int], depths: Sequence[int], in_chans: int, num_classes: int) -> tuple[list, list]:
    widths, depths = list(widths), list(depths)
    if not widths or len(widths) != len(depths) + 1:
        raise ValueError(f"give one stem width and one width per stage: widths {widths}, depths {depths}")
    for name, values in (("widths", widths), ("depths", depths), ("in_chans", [in_chans]),
                         ("num_classes", [num_classes])):
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
            raise ValueError(f"{name} must be positive integers, got {values}")
    return widths, depths


class PlainRepNet(nn.Module):
    """RepVGG's skeleton: ``stage0`` (one block, stride 1), ``stage1``.. (``ModuleList``; first block stride 2),
    ``gap``, ``linear``; ``block(cin, cout, stride)`` makes one block, followed by ``act`` when given."""

    def __init__(self, block, widths: Sequence[int], depths: Sequence[int], in_chans: int, num_classes: int,
                 act: bool = False):
        super().__init__()
        self.act = nn.ReLU() if act else nn.Identity()
        self.stage0 = block(in_chans, widths[0], 1)
        cin = widths[0]
        self.num_stages = len(depths)
        for index, (width, depth) in enumerate(zip(widths[1:], depths, strict=True), start=1):
            blocks = []
            for i in range(depth):
                blocks.append(block(cin, width, 2 if i == 0 else 1))
                cin = width
            self.add_module(f"stage{index}", nn.ModuleList(blocks))
        self.gap = nn.AdaptiveAvgPool2d(output_size=1)
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.stage0(x))
        for index in range(1, self.num_stages + 1):
            for block in getattr(self, f"stage{index}"):
                x = self.act(block(x))
        return self.linear(torch.flatten(self.gap(x), 1))


def _sample(model: nn.Module, in_chans: int) -> nn.Module:
    model.input_size = (in_chans, SIZE, SIZE)
    return model


def _plain(block, widths: Sequence[int], depths: Sequence[int], in_chans: int, num_classes: int,
           act: bool) -> PlainRepNet:
    widths, depths = _checked(widths, depths, in_chans, num_classes)
    return _sample(PlainRepNet(block, widths, depths, in_chans, num_classes, act=act), in_chans)


@register_model
def mnist_repvgg(widths: Sequence[int] = (16, 32, 64, 64), depths: Sequence[int] = (2, 2, 1), in_chans: int = 1,
                 num_classes: int = 10) -> PlainRepNet:
    """RepVGG blocks (3x3 + 1x1 + identity BN, each with its ReLU) in a plain 4-stage network for 32x32 inputs."""
    return _plain(lambda cin, cout, stride: RepVGGBlock(cin, cout, kernel_size=3, stride=stride, padding=1),
                  widths, depths, in_chans, num_classes, act=False)


@register_model
def mnist_acb(widths: Sequence[int] = (16, 32, 64, 64), depths: Sequence[int] = (2, 2, 1), in_chans: int = 1,
              num_classes: int = 10) -> PlainRepNet:
    """ACNet's asymmetric conv blocks (3x3 + 3x1 + 1x3, each with BN), each followed by a ReLU."""
    return _plain(lambda cin, cout, stride: ACBlock(cin, cout, kernel_size=3, stride=stride, padding=1),
                  widths, depths, in_chans, num_classes, act=True)


@register_model
def mnist_dbb(widths: Sequence[int] = (16, 32, 64, 64), depths: Sequence[int] = (2, 2, 1), in_chans: int = 1,
              num_classes: int = 10) -> PlainRepNet:
    """Diverse Branch Blocks (3x3, 1x1, 1x1-avg, 1x1-3x3 branches), each followed by a ReLU."""
    return _plain(lambda cin, cout, stride: DiverseBranchBlock(cin, cout, kernel_size=3, stride=stride),
                  widths, depths, in_chans, num_classes, act=True)


class MobileOneNet(nn.Module):
    """apple/ml-mobileone's skeleton: ``stage0`` (a 3x3 block with one conv branch), ``stage1``.. (``Sequential``
    of depthwise 3x3 + pointwise 1x1 block pairs, the first depthwise with stride 2), ``gap``, ``linear``."""

    def __init__(self, widths: Sequence[int], depths: Sequence[int], in_chans: int, num_classes: int,
                 num_conv_branches: int):
        super().__init__()
        self.stage0 = MobileOneBlock(in_chans, widths[0], 3, stride=1, padding=1, num_conv_branches=1)
        cin = widths[0]
        self.num_stages = len(depths)
        for index, (width, depth) in enumerate(zip(widths[1:], depths, strict=True), start=1):
            blocks = []
            for i in range(depth):
                blocks.append(MobileOneBlock(cin, cin, 3, stride=2 if i == 0 else 1, padding=1, groups=cin,
                                             num_conv_branches=num_conv_branches))
                blocks.append(MobileOneBlock(cin, width, 1, stride=1, padding=0,
                                             num_conv_branches=num_conv_branches))
                cin = width
            self.add_module(f"stage{index}", nn.Sequential(*blocks))
        self.gap = nn.AdaptiveAvgPool2d(output_size=1)
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage0(x)
        for index in range(1, self.num_stages + 1):
            x = getattr(self, f"stage{index}")(x)
        return self.linear(torch.flatten(self.gap(x), 1))


@register_model
def mnist_mobileone(widths: Sequence[int] = (32, 64, 96, 128), depths: Sequence[int] = (2, 2, 1),
                    in_chans: int = 1,
                    num_classes: int = 10, num_conv_branches: int = 4) -> MobileOneNet:
    """MobileOne blocks (k 3x3 or 1x1 conv branches + 1x1 scale + identity BN): depthwise/pointwise pairs."""
    widths, depths = _checked(widths, depths, in_chans, num_classes)
    return _sample(MobileOneNet(widths, depths, in_chans, num_classes, num_conv_branches), in_chans)


class DilatedBlock(nn.Module):
    """UniRepLKNet's block, simplified: ``x + pwconv2(act(pwconv1(norm(dwconv(x)))))`` where ``dwconv`` is a
    Dilated Reparam Block (large depthwise conv + dilated small depthwise convs) and the FFN is 1x1 convs."""

    def __init__(self, dim: int, kernel_size: int, ffn_ratio: int):
        super().__init__()
        self.dwconv = DilatedReparamBlock(dim, kernel_size)
        self.norm = nn.BatchNorm2d(dim)
        self.pwconv1 = nn.Conv2d(dim, dim * ffn_ratio, 1)
        self.act = nn.GELU()
        self.pwconv2 = nn.Conv2d(dim * ffn_ratio, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pwconv2(self.act(self.pwconv1(self.norm(self.dwconv(x)))))


class DilatedNet(nn.Module):
    """UniRepLKNet's skeleton: ``downsample_layers[i]`` (3x3 stride-2 conv + BN; GELU after the first), then
    ``stages[i]`` of :class:`DilatedBlock`, then global average pooling and ``head``."""

    def __init__(self, widths: Sequence[int], depths: Sequence[int], in_chans: int, num_classes: int,
                 kernel_size: int, ffn_ratio: int):
        super().__init__()
        self.downsample_layers = nn.ModuleList()
        self.stages = nn.ModuleList()
        cin = in_chans
        for index, (width, depth) in enumerate(zip(widths, depths, strict=True)):
            layers = [nn.Conv2d(cin, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width)]
            if index == 0:
                layers.append(nn.GELU())
            self.downsample_layers.append(nn.Sequential(*layers))
            self.stages.append(nn.Sequential(*(DilatedBlock(width, kernel_size, ffn_ratio) for _ in range(depth))))
            cin = width
        self.head = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for downsample, stage in zip(self.downsample_layers, self.stages, strict=True):
            x = stage(downsample(x))
        return self.head(torch.flatten(x.mean((2, 3), keepdim=True), 1))


@register_model
def mnist_dilated(widths: Sequence[int] = (32, 64), depths: Sequence[int] = (2, 2), in_chans: int = 1,
                  num_classes: int = 10, kernel_size: int = 7, ffn_ratio: int = 4) -> DilatedNet:
    """UniRepLKNet-style blocks (Dilated Reparam Block of ``kernel_size`` with the official default branches, BN,
    1x1 FFN) in two stages at 16x16 and 8x8."""
    widths, depths = list(widths), list(depths)
    _checked([1, *widths], depths, in_chans, num_classes)
    return _sample(DilatedNet(widths, depths, in_chans, num_classes, kernel_size, ffn_ratio), in_chans)

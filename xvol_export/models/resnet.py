"""torchvision-shaped ResNets with X-volution in chosen stages, and a CIFAR-style tiny one.

Module names follow torchvision (``conv1``/``bn1``, ``layer3.0.conv2``, ``downsample.0``), so plain
parts load torchvision weights. In the chosen stages the block's 3x3 conv + BN (Bottleneck:
``conv2``/``bn2``; BasicBlock: the strided first one, ``conv1``/``bn1``) is one :class:`XVolution`
and the BN slot is an ``Identity``. ``deploy=True`` builds the folded form: convs with bias,
no BatchNorm, :class:`XVolutionDeploy` blocks in layout ``xvol_layout``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from xvol_export.layers import XVolution, XVolutionDeploy
from xvol_export.models.registry import register_model


class _Builder:
    """Makes conv/BN/X-volution modules in the training or the deploy form."""

    def __init__(self, deploy: bool, xvol_layout: str, xvol_kwargs: dict):
        self.deploy = deploy
        self.xvol_layout = xvol_layout
        self.xvol_kwargs = xvol_kwargs

    def conv(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
        return nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=self.deploy)

    def norm(self, channels: int) -> nn.Module:
        return nn.Identity() if self.deploy else nn.BatchNorm2d(channels)

    def xvol(self, cin: int, cout: int, stride: int, groups: int) -> nn.Module:
        if self.deploy:
            return XVolutionDeploy(cin, cout, stride, groups, layout=self.xvol_layout, **self.xvol_kwargs)
        return XVolution(cin, cout, stride, groups, **self.xvol_kwargs)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, b: _Builder, cin: int, width: int, stride: int, use_xvol: bool, groups: int = 1,
                 base_width: int = 64):
        super().__init__()
        if use_xvol:
            self.conv1, self.bn1 = b.xvol(cin, width, stride, 1), nn.Identity()
        else:
            self.conv1, self.bn1 = b.conv(cin, width, 3, stride), b.norm(width)
        self.relu = nn.ReLU(inplace=True)
        self.conv2, self.bn2 = b.conv(width, width, 3), b.norm(width)
        self.downsample = _downsample(b, cin, width, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, b: _Builder, cin: int, planes: int, stride: int, use_xvol: bool, groups: int = 1,
                 base_width: int = 64):
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        cout = planes * self.expansion
        self.conv1, self.bn1 = b.conv(cin, width, 1), b.norm(width)
        if use_xvol:
            self.conv2, self.bn2 = b.xvol(width, width, stride, groups), nn.Identity()
        else:
            self.conv2, self.bn2 = b.conv(width, width, 3, stride, groups), b.norm(width)
        self.conv3, self.bn3 = b.conv(width, cout, 1), b.norm(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(b, cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _downsample(b: _Builder, cin: int, cout: int, stride: int) -> nn.Module | None:
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(b.conv(cin, cout, 1, stride), b.norm(cout))


class XVolResNet(nn.Module):
    """ResNet whose blocks in ``stages`` (1-based: 1 is ``layer1``) use X-volution."""

    def __init__(
        self,
        block: type,
        layers: Sequence[int],
        widths: Sequence[int] = (64, 128, 256, 512),
        stages: Sequence[int] = (3,),
        num_classes: int = 1000,
        in_chans: int = 3,
        stem: str = "imagenet",
        groups: int = 1,
        width_per_group: int = 64,
        xvol_kwargs: dict | None = None,
        deploy: bool = False,
        xvol_layout: str = "split",
    ):
        super().__init__()
        bad = [s for s in stages if not 1 <= s <= len(layers)]
        if bad:
            raise ValueError(f"stages must be in 1..{len(layers)}, got {list(stages)}")
        b = _Builder(deploy, xvol_layout, dict(xvol_kwargs or {}))
        stem_width = widths[0]
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_chans, stem_width, 7, 2, 3, bias=deploy)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        else:  # CIFAR-style: 3x3, stride 1, no pooling
            self.conv1 = b.conv(in_chans, stem_width, 3)
            self.maxpool = nn.Identity()
        self.bn1 = b.norm(stem_width)
        self.relu = nn.ReLU(inplace=True)
        cin = stem_width
        for index, (count, width) in enumerate(zip(layers, widths, strict=True), start=1):
            stride = 1 if index == 1 else 2
            blocks = []
            for i in range(count):
                blk = block(b, cin, width, stride if i == 0 else 1, index in stages, groups, width_per_group)
                blocks.append(blk)
                cin = width * block.expansion
            self.add_module(f"layer{index}", nn.Sequential(*blocks))
        self.num_stages = len(layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for index in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{index}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _imagenet_resnet(block, layers, stages, num_classes, in_chans, xvol_kwargs, deploy, xvol_layout):
    model = XVolResNet(block, layers, stages=stages, num_classes=num_classes, in_chans=in_chans,
                       xvol_kwargs=xvol_kwargs, deploy=deploy, xvol_layout=xvol_layout)
    model.input_size = (in_chans, 224, 224)
    return model


@register_model
def xvol_resnet18(stages: Sequence[int] = (3,), num_classes: int = 1000, in_chans: int = 3,
                  xvol_kwargs: dict | None = None, deploy: bool = False, xvol_layout: str = "split"):
    """ResNet-18 (BasicBlock, 2-2-2-2) with X-volution in ``stages`` (default: stage 3)."""
    return _imagenet_resnet(BasicBlock, (2, 2, 2, 2), stages, num_classes, in_chans, xvol_kwargs, deploy, xvol_layout)


@register_model
def xvol_resnet34(stages: Sequence[int] = (3,), num_classes: int = 1000, in_chans: int = 3,
                  xvol_kwargs: dict | None = None, deploy: bool = False, xvol_layout: str = "split"):
    """ResNet-34 (BasicBlock, 3-4-6-3) with X-volution in ``stages`` (default: stage 3)."""
    return _imagenet_resnet(BasicBlock, (3, 4, 6, 3), stages, num_classes, in_chans, xvol_kwargs, deploy, xvol_layout)


@register_model
def xvol_resnet50(stages: Sequence[int] = (3,), num_classes: int = 1000, in_chans: int = 3,
                  xvol_kwargs: dict | None = None, deploy: bool = False, xvol_layout: str = "split"):
    """ResNet-50 (Bottleneck, 3-4-6-3) with X-volution in ``stages`` (default: stage 3)."""
    return _imagenet_resnet(Bottleneck, (3, 4, 6, 3), stages, num_classes, in_chans, xvol_kwargs, deploy, xvol_layout)


@register_model
def xvol_resnet101(stages: Sequence[int] = (3,), num_classes: int = 1000, in_chans: int = 3,
                   xvol_kwargs: dict | None = None, deploy: bool = False, xvol_layout: str = "split"):
    """ResNet-101 (Bottleneck, 3-4-23-3) with X-volution in ``stages`` (default: stage 3)."""
    return _imagenet_resnet(Bottleneck, (3, 4, 23, 3), stages, num_classes, in_chans, xvol_kwargs, deploy, xvol_layout)


@register_model
def xvol_resnet_tiny(stages: Sequence[int] = (3,), num_classes: int = 10, in_chans: int = 3,
                     blocks_per_stage: int = 2, xvol_kwargs: dict | None = None, deploy: bool = False,
                     xvol_layout: str = "split"):
    """CIFAR-style ResNet: 3x3 stem, three stages of widths 16/32/64, 32x32 input."""
    model = XVolResNet(BasicBlock, (blocks_per_stage,) * 3, widths=(16, 32, 64), stages=stages,
                       num_classes=num_classes, in_chans=in_chans, stem="cifar", xvol_kwargs=xvol_kwargs,
                       deploy=deploy, xvol_layout=xvol_layout)
    model.input_size = (in_chans, 32, 32)
    return model

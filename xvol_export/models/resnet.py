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
from xvol_export.layers.xvolution import default_attn_channels
from xvol_export.models.registry import ModelSize, register_model


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


# ------------------------------------------------------------------ sizes, from arithmetic (nothing is built)

_XVOL_KWARGS = {"dilation": int, "shift": int, "attn_channels": int, "attention": bool, "dilated_branch": bool}


def _count(value, name: str, low: int = 1) -> int:
    """``value`` as an integer of at least ``low``; ValueError naming the config key otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < low:
        raise ValueError(f"{name} must be at least {low}, got {value}")
    return value


def _check_xvol_kwargs(xvol_kwargs) -> dict:
    if xvol_kwargs is None:
        return {}
    if not isinstance(xvol_kwargs, dict):
        raise ValueError(f"xvol_kwargs must be a dict of X-volution arguments, got {xvol_kwargs!r}")
    unknown = sorted(set(xvol_kwargs) - set(_XVOL_KWARGS))
    if unknown:
        raise ValueError(f"xvol_kwargs has unknown key(s) {unknown}; it takes {', '.join(_XVOL_KWARGS)}")
    checked = {}
    for key, value in xvol_kwargs.items():
        if _XVOL_KWARGS[key] is bool:
            if not isinstance(value, bool):
                raise ValueError(f"xvol_kwargs.{key} must be true or false, got {value!r}")
            checked[key] = value
        elif not (key == "attn_channels" and value is None):
            checked[key] = _count(value, f"xvol_kwargs.{key}")
    return checked


def _conv(cin: int, cout: int, kernel: int, groups: int, bias: bool) -> int:
    return cout * (cin // groups) * kernel * kernel + (cout if bias else 0)


def _norm(channels: int, deploy: bool) -> int:
    return 0 if deploy else 4 * channels + 1  # weight, bias, running mean and variance, num_batches_tracked


def _xvol_values(cin: int, cout: int, groups: int, kw: dict, deploy: bool) -> tuple[int, int]:
    """State-dict values of one X-volution block (deploy: its smallest layout, split) and its attention width."""
    attn = kw.get("attn_channels") or default_attn_channels(cin)
    dilated, attention = kw.get("dilated_branch", True), kw.get("attention", True)
    if deploy:
        values = _conv(cin, cout, 3, groups, True) + (_conv(cin, cout, 5, groups, False) if dilated else 0)
        values += (2 * attn + cout) * cin if attention else 0
    else:
        values = _conv(cin, cout, 3, groups, False) + _norm(cout, False)
        values += _conv(cin, cout, 5, groups, False) + _norm(cout, False) if dilated else 0
        values += (2 * attn + cout) * cin + _norm(cout, False) if attention else 0
    return values, attn


def resnet_size(block: str, layers, widths, stages, num_classes, in_chans, stem: str, xvol_kwargs, deploy: bool,
                input_hw: tuple[int, int], groups: int = 1, width_per_group: int = 64) -> ModelSize:
    """The :class:`ModelSize` of :class:`XVolResNet` (``block``: ``basic`` or ``bottleneck``): its state-dict
    values counted exactly (deploy: every block split, the smallest layout), and the float64 activations of
    one input of ``input_hw``: the widest feature map, four times over, plus the largest shift-padded k and v
    of an attention aggregate."""
    layers = [_count(n, "blocks per stage" if block == "basic" else "layers") for n in layers]
    num_classes, in_chans = _count(num_classes, "num_classes"), _count(in_chans, "in_chans")
    if isinstance(stages, (str, bytes)) or not hasattr(stages, "__iter__"):
        raise ValueError(f"stages must be a list of stage numbers, got {stages!r}")
    stages = [_count(s, "stages") for s in stages]
    bad = [s for s in stages if s > len(layers)]
    if bad:
        raise ValueError(f"stages must be in 1..{len(layers)}, got {stages}")
    kw = _check_xvol_kwargs(xvol_kwargs)
    shift = kw.get("shift", 1)
    height, width = input_hw
    expansion = 1 if block == "basic" else 4
    stem_width = widths[0]
    if stem == "imagenet":
        values = _conv(in_chans, stem_width, 7, 1, deploy)
        height, width = -(-height // 4), -(-width // 4)
    else:
        values = _conv(in_chans, stem_width, 3, 1, deploy)
    values += _norm(stem_width, deploy)
    largest = stem_width * (-(-input_hw[0] // 2) * -(-input_hw[1] // 2) if stem == "imagenet" else height * width)
    padded = recorded = 0
    cin = stem_width
    for index, (count, planes) in enumerate(zip(layers, widths, strict=True), start=1):
        in_hw = height * width
        if index > 1:
            height, width = -(-height // 2), -(-width // 2)
        xvol = index in stages
        per_block, io = [], []
        for i in range(min(count, 2)):  # every block after the first is the same: count two, multiply
            stride = 2 if index > 1 and i == 0 else 1
            cout = planes * expansion
            if block == "basic":
                mid = planes
                first, attn = (_xvol_values(cin, mid, 1, kw, deploy) if xvol
                               else (_conv(cin, mid, 3, 1, deploy) + _norm(mid, deploy), 0))
                blk = first + _conv(mid, mid, 3, 1, deploy) + _norm(mid, deploy)
            else:
                mid = int(planes * (width_per_group / 64.0)) * groups
                blk = _conv(cin, mid, 1, 1, deploy) + _norm(mid, deploy)
                middle, attn = (_xvol_values(mid, mid, groups, kw, deploy) if xvol
                                else (_conv(mid, mid, 3, groups, deploy) + _norm(mid, deploy), 0))
                blk += middle + _conv(mid, cout, 1, 1, deploy) + _norm(cout, deploy)
            if stride != 1 or cin != cout:
                blk += _conv(cin, cout, 1, 1, deploy) + _norm(cout, deploy)
            if xvol and kw.get("attention", True):
                padded = max(padded, (attn + mid) * (height + 2 * shift) * (width + 2 * shift))
            block_in = (cin if block == "basic" else mid) * (in_hw if i == 0 else height * width)
            io.append(block_in + mid * height * width if xvol else 0)  # what verification records per block
            largest = max(largest, max(mid, cout) * height * width)
            per_block.append(blk)
            cin = cout
        values += per_block[0] + (count - 1) * per_block[-1]
        recorded += io[0] + (count - 1) * io[-1]
    values += cin * num_classes + num_classes
    summary = (f"{sum(layers):,} blocks, widths {'/'.join(map(str, widths))}"
               + (f", attention shift {shift}" if shift > 1 else ""))
    return ModelSize(values, 8 * (4 * largest + padded), summary, recorded)


def _resnet_rule(block: str, layers=None):
    """The size rule of a registered ResNet factory (its config: stages, num_classes, in_chans, xvol_kwargs,
    and blocks_per_stage for the tiny one)."""
    def size(config: dict, deploy: bool) -> ModelSize:
        in_chans = config.get("in_chans", 3)
        if layers is None:  # the CIFAR-style tiny ResNet
            count = _count(config.get("blocks_per_stage", 2), "blocks_per_stage")
            return resnet_size(block, (count,) * 3, (16, 32, 64), config.get("stages", (3,)),
                               config.get("num_classes", 10), in_chans, "cifar", config.get("xvol_kwargs"), deploy,
                               (32, 32))
        return resnet_size(block, layers, (64, 128, 256, 512), config.get("stages", (3,)),
                           config.get("num_classes", 1000), in_chans, "imagenet", config.get("xvol_kwargs"), deploy,
                           (224, 224))

    return size


def _imagenet_resnet(block, layers, stages, num_classes, in_chans, xvol_kwargs, deploy, xvol_layout):
    model = XVolResNet(block, layers, stages=stages, num_classes=num_classes, in_chans=in_chans,
                       xvol_kwargs=xvol_kwargs, deploy=deploy, xvol_layout=xvol_layout)
    model.input_size = (in_chans, 224, 224)
    return model


@register_model(size=_resnet_rule("basic", (2, 2, 2, 2)))
def xvol_resnet18(stages: Sequence[int] = (3,), num_classes: int = 1000, in_chans: int = 3,
                  xvol_kwargs: dict | None = None, deploy: bool = False, xvol_layout: str = "split"):
    """ResNet-18 (BasicBlock, 2-2-2-2) with X-volution in ``stages`` (default: stage 3)."""
    return _imagenet_resnet(BasicBlock, (2, 2, 2, 2), stages, num_classes, in_chans, xvol_kwargs, deploy, xvol_layout)


@register_model(size=_resnet_rule("basic", (3, 4, 6, 3)))
def xvol_resnet34(stages: Sequence[int] = (3,), num_classes: int = 1000, in_chans: int = 3,
                  xvol_kwargs: dict | None = None, deploy: bool = False, xvol_layout: str = "split"):
    """ResNet-34 (BasicBlock, 3-4-6-3) with X-volution in ``stages`` (default: stage 3)."""
    return _imagenet_resnet(BasicBlock, (3, 4, 6, 3), stages, num_classes, in_chans, xvol_kwargs, deploy, xvol_layout)


@register_model(size=_resnet_rule("bottleneck", (3, 4, 6, 3)))
def xvol_resnet50(stages: Sequence[int] = (3,), num_classes: int = 1000, in_chans: int = 3,
                  xvol_kwargs: dict | None = None, deploy: bool = False, xvol_layout: str = "split"):
    """ResNet-50 (Bottleneck, 3-4-6-3) with X-volution in ``stages`` (default: stage 3)."""
    return _imagenet_resnet(Bottleneck, (3, 4, 6, 3), stages, num_classes, in_chans, xvol_kwargs, deploy, xvol_layout)


@register_model(size=_resnet_rule("bottleneck", (3, 4, 23, 3)))
def xvol_resnet101(stages: Sequence[int] = (3,), num_classes: int = 1000, in_chans: int = 3,
                   xvol_kwargs: dict | None = None, deploy: bool = False, xvol_layout: str = "split"):
    """ResNet-101 (Bottleneck, 3-4-23-3) with X-volution in ``stages`` (default: stage 3)."""
    return _imagenet_resnet(Bottleneck, (3, 4, 23, 3), stages, num_classes, in_chans, xvol_kwargs, deploy, xvol_layout)


@register_model(size=_resnet_rule("basic"))
def xvol_resnet_tiny(stages: Sequence[int] = (3,), num_classes: int = 10, in_chans: int = 3,
                     blocks_per_stage: int = 2, xvol_kwargs: dict | None = None, deploy: bool = False,
                     xvol_layout: str = "split"):
    """CIFAR-style ResNet: 3x3 stem, three stages of widths 16/32/64, 32x32 input."""
    model = XVolResNet(BasicBlock, (blocks_per_stage,) * 3, widths=(16, 32, 64), stages=stages,
                       num_classes=num_classes, in_chans=in_chans, stem="cifar", xvol_kwargs=xvol_kwargs,
                       deploy=deploy, xvol_layout=xvol_layout)
    model.input_size = (in_chans, 32, 32)
    return model

"""RepVGG networks with the official module names (github DingXiaoH/RepVGG, ``repvgg.py``), and RepVGG-A0.

``stage0`` is one block (3 -> ``min(64, 64 w0)``, stride 2); ``stage1``..``stage4`` are ``ModuleList``s of
blocks, the first of each with stride 2, widths ``64 w0, 128 w1, 256 w2, 512 w3``; then ``gap`` and ``linear``.
``override_groups_map`` maps a block's index (1-based, counted over stages 1-4) to its groups.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from xvol_export.layers.repvgg import RepVGGBlock, RepVGGBlockDeploy
from xvol_export.models.registry import ModelSize, register_model

A0 = {"num_blocks": (2, 4, 14, 1), "width_multiplier": (0.75, 0.75, 0.75, 2.5)}


class RepVGG(nn.Module):
    """A RepVGG network; ``deploy=True`` builds it with :class:`RepVGGBlockDeploy` blocks."""

    def __init__(self, num_blocks: Sequence[int], num_classes: int = 1000, width_multiplier: Sequence[float] = (),
                 override_groups_map: dict[int, int] | None = None, deploy: bool = False, use_se: bool = False):
        super().__init__()
        groups_map = dict(override_groups_map or {})
        specs = block_specs(num_blocks, width_multiplier, groups_map)

        def block(cin: int, cout: int, stride: int, groups: int) -> nn.Module:
            kind = RepVGGBlockDeploy if deploy else RepVGGBlock
            return kind(cin, cout, kernel_size=3, stride=stride, padding=1, groups=groups, use_se=use_se)

        self.deploy = deploy
        self.stage0 = block(*specs[0][0])
        for index, stage in enumerate(specs[1:], start=1):
            self.add_module(f"stage{index}", nn.ModuleList(block(*spec) for spec in stage))
        self.gap = nn.AdaptiveAvgPool2d(output_size=1)
        self.linear = nn.Linear(specs[-1][-1][1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage0(x)
        for stage in (self.stage1, self.stage2, self.stage3, self.stage4):
            for block in stage:
                x = block(x)
        return self.linear(torch.flatten(self.gap(x), 1))


def block_specs(num_blocks: Sequence[int], width_multiplier: Sequence[float],
                groups_map: dict[int, int]) -> list[list[tuple[int, int, int, int]]]:
    """``(in, out, stride, groups)`` of every block, per stage (stage 0 first), as the official code builds them."""
    if len(num_blocks) != 4 or len(width_multiplier) != 4:
        raise ValueError(f"RepVGG takes 4 stage block counts and 4 width multipliers, got {list(num_blocks)} and "
                         f"{list(width_multiplier)}")
    if 0 in groups_map:
        raise ValueError("override_groups_map cannot set stage0's groups (index 0)")
    num_blocks = [count(n, "num_blocks") for n in num_blocks]
    cin = min(64, int(64 * width_multiplier[0]))
    specs = [[(3, cin, 2, 1)]]
    index = 1
    for n, base, multiplier in zip(num_blocks, (64, 128, 256, 512), width_multiplier, strict=True):
        width, stage = int(base * multiplier), []
        for i in range(n):
            stage.append((cin, width, 2 if i == 0 else 1, groups_map.get(index, 1)))
            cin, index = width, index + 1
        specs.append(stage)
    return specs


def count(value, name: str, low: int = 1) -> int:
    """``value`` as an integer of at least ``low``; ValueError naming the config key otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < low:
        raise ValueError(f"{name} must be at least {low}, got {value}")
    return value


def conv_values(cin: int, cout: int, kernel: int, groups: int, bias: bool) -> int:
    """State-dict values of a conv."""
    return cout * (cin // groups) * kernel * kernel + (cout if bias else 0)


def norm_values(channels: int) -> int:
    """State-dict values of a BatchNorm."""
    return 4 * channels + 1  # weight, bias, running mean and variance, num_batches_tracked


def repvgg_size(num_blocks: Sequence[int], width_multiplier: Sequence[float], groups_map: dict[int, int],
                num_classes: int, use_se: bool, deploy: bool, input_hw: tuple[int, int] = (224, 224)) -> ModelSize:
    """The :class:`ModelSize` of :class:`RepVGG`: state-dict values counted exactly, and the float64 activations
    of one input: the largest feature map five times over (input, three branches, their sum)."""
    num_classes = count(num_classes, "num_classes")
    values, (height, width) = 0, input_hw
    largest = 3 * height * width
    specs = block_specs(num_blocks, width_multiplier, groups_map)
    for stage in specs:
        for cin, cout, stride, groups in stage:
            if deploy:
                values += conv_values(cin, cout, 3, groups, True)
            else:
                values += conv_values(cin, cout, 3, groups, False) + conv_values(cin, cout, 1, groups, False)
                values += 2 * norm_values(cout) + (norm_values(cin) if cin == cout and stride == 1 else 0)
            if use_se:
                values += conv_values(cout, cout // 16, 1, 1, True) + conv_values(cout // 16, cout, 1, 1, True)
            height, width = (height - 1) // stride + 1, (width - 1) // stride + 1
            largest = max(largest, cout * height * width)
    values += cout * num_classes + num_classes
    summary = f"{sum(map(len, specs))} blocks, widths {'/'.join(str(stage[-1][1]) for stage in specs)}"
    return ModelSize(values, 8 * (3 if deploy else 5) * largest, summary)


def _a0_size(config: dict, deploy: bool) -> ModelSize:
    return repvgg_size(A0["num_blocks"], A0["width_multiplier"], {}, config.get("num_classes", 1000), False, deploy)


@register_model(size=_a0_size)
def repvgg_a0(num_classes: int = 1000, deploy: bool = False, xvol_layout: str = "split") -> RepVGG:
    """RepVGG-A0: blocks 1-2-4-14-1, width multipliers 0.75/0.75/0.75/2.5 (``xvol_layout`` is ignored)."""
    model = RepVGG(A0["num_blocks"], num_classes, A0["width_multiplier"], None, deploy=deploy)
    model.input_size = (3, 224, 224)
    return model

"""MobileOne networks with the official module names (github apple/ml-mobileone, ``mobileone.py``), and
MobileOne-S0.

``stage0`` is one 3x3 block (3 -> ``min(64, 64 w0)``, stride 2, one conv branch); ``stage1``..``stage4`` are
``Sequential``s of block pairs, a depthwise 3x3 block (stride 2 for the first pair) then a pointwise 1x1 block,
widths ``64 w0, 128 w1, 256 w2, 512 w3``; then ``gap`` and ``linear``. With ``use_se`` the last half of stage 3's
pairs and all of stage 4's have SE.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from xvol_export.layers.mobileone import MobileOneBlock, MobileOneBlockDeploy
from xvol_export.models.registry import ModelSize, register_model
from xvol_export.models.repvgg import conv_values, count, norm_values

S0 = {"num_blocks_per_stage": (2, 8, 10, 1), "width_multipliers": (0.75, 1.0, 1.0, 2.0), "num_conv_branches": 4}


class MobileOne(nn.Module):
    """A MobileOne network; ``inference_mode=True`` builds it with :class:`MobileOneBlockDeploy` blocks."""

    def __init__(self, num_blocks_per_stage: Sequence[int] = (2, 8, 10, 1), num_classes: int = 1000,
                 width_multipliers: Sequence[float] = (), inference_mode: bool = False, use_se: bool = False,
                 num_conv_branches: int = 1):
        super().__init__()
        specs = block_specs(num_blocks_per_stage, width_multipliers, use_se)

        def block(cin: int, cout: int, kernel: int, stride: int, groups: int, se: bool, branches: int) -> nn.Module:
            geometry = {"kernel_size": kernel, "stride": stride, "padding": kernel // 2, "groups": groups, "use_se": se}
            if inference_mode:
                return MobileOneBlockDeploy(cin, cout, **geometry)
            return MobileOneBlock(cin, cout, **geometry, num_conv_branches=branches)

        self.inference_mode = inference_mode
        self.stage0 = block(*specs[0][0], branches=1)  # the official stem has one conv branch whatever the model's
        for index, stage in enumerate(specs[1:], start=1):
            self.add_module(f"stage{index}", nn.Sequential(*(block(*s, branches=num_conv_branches) for s in stage)))
        self.gap = nn.AdaptiveAvgPool2d(output_size=1)
        self.linear = nn.Linear(specs[-1][-1][1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage4(self.stage3(self.stage2(self.stage1(self.stage0(x)))))
        return self.linear(torch.flatten(self.gap(x), 1))


def block_specs(num_blocks_per_stage: Sequence[int], width_multipliers: Sequence[float],
                use_se: bool) -> list[list[tuple[int, int, int, int, int, bool]]]:
    """``(in, out, kernel, stride, groups, use_se)`` of every block, per stage (stage 0 first), as the official
    code builds them."""
    if len(num_blocks_per_stage) != 4 or len(width_multipliers) != 4:
        raise ValueError(f"MobileOne takes 4 stage block counts and 4 width multipliers, got "
                         f"{list(num_blocks_per_stage)} and {list(width_multipliers)}")
    counts = [count(n, "num_blocks_per_stage") for n in num_blocks_per_stage]
    se_counts = (0, 0, counts[2] // 2 if use_se else 0, counts[3] if use_se else 0)
    cin = min(64, int(64 * width_multipliers[0]))
    specs = [[(3, cin, 3, 2, 1, False)]]
    for n, base, multiplier, n_se in zip(counts, (64, 128, 256, 512), width_multipliers, se_counts, strict=True):
        width, stage = int(base * multiplier), []
        for i in range(n):
            se = i >= n - n_se
            stage.append((cin, cin, 3, 2 if i == 0 else 1, cin, se))  # depthwise
            stage.append((cin, width, 1, 1, 1, se))  # pointwise
            cin = width
        specs.append(stage)
    return specs


def mobileone_size(num_blocks_per_stage: Sequence[int], width_multipliers: Sequence[float], num_conv_branches: int,
                   num_classes: int, use_se: bool, deploy: bool, input_hw: tuple[int, int] = (224, 224)) -> ModelSize:
    """The :class:`ModelSize` of :class:`MobileOne`: state-dict values counted exactly, and the float64 activations
    of one input: the largest feature map ``branches + 3`` times over (input, every branch, their sum)."""
    num_classes = count(num_classes, "num_classes")
    branches = count(num_conv_branches, "num_conv_branches")
    values, (height, width) = 0, input_hw
    largest = 3 * height * width
    specs = block_specs(num_blocks_per_stage, width_multipliers, use_se)
    for index, stage in enumerate(specs):
        for cin, cout, kernel, stride, groups, se in stage:
            if deploy:
                values += conv_values(cin, cout, kernel, groups, True)
            else:
                n = 1 if index == 0 else branches
                values += n * (conv_values(cin, cout, kernel, groups, False) + norm_values(cout))
                if kernel > 1:
                    values += conv_values(cin, cout, 1, groups, False) + norm_values(cout)
                if cin == cout and stride == 1:
                    values += norm_values(cin)
            if se:
                hidden = int(cout * 0.0625)
                values += conv_values(cout, hidden, 1, 1, True) + conv_values(hidden, cout, 1, 1, True)
            height, width = (height - 1) // stride + 1, (width - 1) // stride + 1
            largest = max(largest, cout * height * width)
    values += cout * num_classes + num_classes
    summary = f"{sum(map(len, specs))} blocks, widths {'/'.join(str(stage[-1][1]) for stage in specs)}"
    return ModelSize(values, 8 * (3 if deploy else branches + 3) * largest, summary)


def _s0_size(config: dict, deploy: bool) -> ModelSize:
    return mobileone_size(S0["num_blocks_per_stage"], S0["width_multipliers"], S0["num_conv_branches"],
                          config.get("num_classes", 1000), False, deploy)


@register_model(size=_s0_size)
def mobileone_s0(num_classes: int = 1000, deploy: bool = False, xvol_layout: str = "split") -> MobileOne:
    """MobileOne-S0: block pairs 2-8-10-1, width multipliers 0.75/1/1/2, 4 conv branches (``xvol_layout`` is
    ignored)."""
    model = MobileOne(S0["num_blocks_per_stage"], num_classes, S0["width_multipliers"], inference_mode=deploy,
                      num_conv_branches=S0["num_conv_branches"])
    model.input_size = (3, 224, 224)
    return model

"""A block-family plugin as a third-party package would write it: a module that registers its family on import
(the ``xvol.families`` entry point names the module), using the record's default fold ending."""

from __future__ import annotations

from torch import nn

from xvol_export.fold.arithmetic import add_branches, conv_bn64, pad_kernel
from xvol_export.fold.family import BlockFamily, register_family


class PluginTwoBranch(nn.Module):
    """``bn(conv3x3(x)) + bn(conv1x1(x))``."""

    def __init__(self, channels: int = 4):
        super().__init__()
        self.channels = channels
        self.big, self.big_bn = nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels)
        self.small, self.small_bn = nn.Conv2d(channels, channels, 1, bias=False), nn.BatchNorm2d(channels)

    def forward(self, x):
        return self.big_bn(self.big(x)) + self.small_bn(self.small(x))


class PluginTwoBranchDeploy(nn.Module):
    def __init__(self, channels: int = 4):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def config(self) -> dict:
        return {"channels": self.conv.in_channels}

    def forward(self, x):
        return self.conv(x)


def fold_weights(block: PluginTwoBranch, context) -> dict:
    k3, b3 = conv_bn64(block.big, block.big_bn)
    k1, b1 = conv_bn64(block.small, block.small_bn)
    kernel, bias = add_branches((k3, b3), (pad_kernel(k1, 3), b1))
    return {"conv.weight": kernel, "conv.bias": bias}


FAMILY = register_family(BlockFamily(
    name="plugin_two_branch",
    description="3x3+BN + 1x1+BN -> 3x3",
    training_types=(PluginTwoBranch,),
    deploy_types=(PluginTwoBranchDeploy,),
    deploy_args=("channels",),
    fold_weights=fold_weights,
    describe_training=lambda block: "conv3x3+BN + conv1x1+BN",
    describe_deploy=lambda deploy: "conv3x3",
    examples=lambda: [PluginTwoBranch()],
))

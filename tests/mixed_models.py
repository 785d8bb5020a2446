"""A user's own mixed model, for ``--model tests.mixed_models:mixed_net`` (from the repository root) or
``--model mixed_models:mixed_net`` (``tests/`` on ``sys.path``). Self-contained: it imports only torch and xvol."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from xvol_export.layers import (
    ACBlock,
    DilatedReparamBlock,
    DiverseBranchBlock,
    MobileOneBlock,
    RepVGGBlock,
    XVolution,
)

INPUT_SIZE = (3, 16, 16)


class FamiliesNet(nn.Module):
    """One block of every built-in family between ordinary layers, with norms to fuse and one to leave (a
    BatchNorm after a residual add): the registry's walker test and ``benchmarks/families.py`` use it."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(8)
        self.blocks = nn.Sequential(
            XVolution(8, 8, attn_channels=4), RepVGGBlock(8, 8, 3, padding=1), ACBlock(8, 8, 3, padding=1),
            DiverseBranchBlock(8, 8, 3), MobileOneBlock(8, 8, 3, padding=1, groups=8, num_conv_branches=2),
            DilatedReparamBlock(8, 7))
        self.post_bn = nn.BatchNorm2d(8)  # after an add: no conv to absorb it
        self.head = nn.Linear(8, 4)
        self.head_bn = nn.BatchNorm1d(4)

    def forward(self, x):
        x = torch.relu(self.stem_bn(self.stem(x)))
        x = self.post_bn(self.blocks(x) + x)
        return self.head_bn(self.head(x.mean((2, 3))))


class ScaleBranchBlock(nn.Module):
    """A block xvol has no family for, with only a timm-style ``reparameterize()``: in place, returning None,
    its 3x3, 1x1 and identity-BN branches replaced by a ``reparam_conv``."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv_kxk = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels))
        self.conv_scale = nn.Sequential(nn.Conv2d(channels, channels, 1, bias=False), nn.BatchNorm2d(channels))
        self.identity = nn.BatchNorm2d(channels)
        self.reparam_conv = None

    def forward(self, x):
        if self.reparam_conv is not None:
            return self.reparam_conv(x)
        return self.conv_kxk(x) + self.conv_scale(x) + self.identity(x)

    def reparameterize(self):
        channels = self.identity.num_features

        def fused(kernel, bn):
            scale = bn.weight / (bn.running_var + bn.eps).sqrt()
            return kernel * scale.reshape(-1, 1, 1, 1), bn.bias - bn.running_mean * scale

        eye = torch.zeros_like(self.conv_kxk[0].weight)
        eye[torch.arange(channels), torch.arange(channels), 1, 1] = 1
        k3, b3 = fused(self.conv_kxk[0].weight, self.conv_kxk[1])
        k1, b1 = fused(self.conv_scale[0].weight, self.conv_scale[1])
        ki, bi = fused(eye, self.identity)
        conv = nn.Conv2d(channels, channels, 3, padding=1, bias=True)
        conv.weight.data = k3 + F.pad(k1, (1, 1, 1, 1)) + ki
        conv.bias.data = b3 + b1 + bi
        del self.conv_kxk, self.conv_scale, self.identity
        self.reparam_conv = conv


class MixedNet(nn.Module):
    """Stem conv + BN (stride 2), one block of each built-in family, the hook block, a ConvTranspose2d + BN back
    to the input size, a conv + BN, and two heads: class logits (Linear + BatchNorm1d) and a dense 1x1-conv map."""

    def __init__(self, width: int = 8, num_classes: int = 5, map_channels: int = 2):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU())
        self.blocks = nn.Sequential(
            XVolution(width, width, attn_channels=4), RepVGGBlock(width, width, 3, padding=1),
            ACBlock(width, width, 3, padding=1), DiverseBranchBlock(width, width, 3),
            MobileOneBlock(width, width, 3, padding=1, groups=width, num_conv_branches=2),
            DilatedReparamBlock(width, 5), ScaleBranchBlock(width), nn.ReLU())
        self.up = nn.ConvTranspose2d(width, width, 2, stride=2, bias=False)
        self.up_bn = nn.BatchNorm2d(width)
        self.conv = nn.Conv2d(width, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.fc = nn.Linear(width, num_classes)
        self.fc_bn = nn.BatchNorm1d(num_classes)
        self.dense = nn.Conv2d(width, map_channels, 1)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        x = torch.relu(self.up_bn(self.up(x)))
        x = torch.relu(self.bn(self.conv(x)))
        return self.fc_bn(self.fc(x.mean((2, 3)))), self.dense(x)


def mixed_net(width: int = 8, num_classes: int = 5, map_channels: int = 2) -> nn.Module:
    """The training form, declaring its input size as timm does."""
    model = MixedNet(width, num_classes, map_channels)
    model.pretrained_cfg = {"input_size": INPUT_SIZE, "num_classes": num_classes}
    return model

"""The Diverse Branch Block (DBB): a ``k x k`` conv, a 1x1 conv, a 1x1 conv then average pooling, and a 1x1
conv then a ``k x k`` conv, each with BatchNorm, summed; its deploy form is one ``k x k`` conv with bias.

The state-dict names are those of the official ``DiverseBranchBlock`` (DingXiaoH/DiverseBranchBlock,
``diversebranchblock.py``): ``dbb_origin.{conv,bn}``; ``dbb_avg.{conv,bn.bn,avgbn}`` (without ``conv`` and
``bn`` when ``groups == out_channels``); ``dbb_1x1.{conv,bn}`` (only when ``groups < out_channels``);
``dbb_1x1_kxk.{idconv1 | conv1, bn1.bn, conv2, bn2}``; deployed, ``dbb_reparam``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _check(in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int | None,
           groups: int) -> int:
    """Validate the shared geometry; return the padding (``kernel_size // 2``, the only one DBB allows)."""
    if in_channels < 1 or out_channels < 1:
        raise ValueError(f"channels must be positive, got in={in_channels}, out={out_channels}")
    if groups < 1 or in_channels % groups or out_channels % groups:
        raise ValueError(f"groups={groups} must divide in_channels={in_channels} and out_channels={out_channels}")
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"DBB needs an odd kernel size (its 1x1 and pooling branches are centred), got {kernel_size}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if padding is not None and padding != kernel_size // 2:
        raise ValueError(f"DBB needs padding == kernel_size // 2 = {kernel_size // 2} (as the official block), "
                         f"got {padding}")
    return kernel_size // 2


def conv_bn(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
            groups: int = 1, affine: bool = True) -> nn.Sequential:
    """``Sequential(conv=Conv2d(bias=False), bn=BatchNorm2d)``, the official ``conv_bn``."""
    seq = nn.Sequential()
    seq.add_module("conv", nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                                     groups=groups, bias=False))
    seq.add_module("bn", nn.BatchNorm2d(out_channels, affine=affine))
    return seq


class IdentityBasedConv1x1(nn.Conv2d):
    """A grouped 1x1 conv (``channels`` in and out) whose kernel is ``weight + identity``; ``weight`` starts
    at zero. The identity is a constant outside the state dict, as in the official code."""

    def __init__(self, channels: int, groups: int = 1):
        super().__init__(channels, channels, kernel_size=1, stride=1, padding=0, groups=groups, bias=False)
        if channels % groups:
            raise ValueError(f"groups={groups} must divide channels={channels}")
        per_group = channels // groups
        identity = torch.zeros(channels, per_group, 1, 1)
        identity[torch.arange(channels), torch.arange(channels) % per_group] = 1.0
        self.register_buffer("id_tensor", identity, persistent=False)
        nn.init.zeros_(self.weight)

    def get_actual_kernel(self) -> torch.Tensor:
        """``weight + identity``: the kernel the conv applies."""
        return self.weight + self.id_tensor.to(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.get_actual_kernel(), None, stride=1, padding=0, groups=self.groups)


class BNAndPadLayer(nn.Module):
    """BatchNorm, then ``pad_pixels`` of padding on each side filled with the BN's bias value (what a zero
    input becomes in eval mode: ``beta - mean * gamma / sqrt(var + eps)``, from the running statistics in
    both modes as the official layer). This makes a following unpadded ``k x k`` conv equal to a padded one
    applied to the 1x1 conv's input, which is what makes the fold exact."""

    def __init__(self, pad_pixels: int, num_features: int, eps: float = 1e-5, momentum: float = 0.1,
                 affine: bool = True):
        super().__init__()
        self.bn = nn.BatchNorm2d(num_features, eps, momentum, affine)
        self.pad_pixels = pad_pixels

    def pad_values(self) -> torch.Tensor:
        """The per-channel padding value (detached, as the official layer)."""
        bn = self.bn
        scale = torch.rsqrt(bn.running_var + bn.eps)
        if bn.weight is not None:
            scale = bn.weight.detach() * scale
        value = -bn.running_mean * scale
        return value if bn.bias is None else value + bn.bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn(x)
        p = self.pad_pixels
        if p <= 0:
            return out
        n, c, h, w = out.shape
        padded = self.pad_values().to(out).reshape(1, c, 1, 1).expand(n, c, h + 2 * p, w + 2 * p).clone()
        padded[:, :, p:-p, p:-p] = out
        return padded


class DiverseBranchBlock(nn.Module):
    """Training-form DBB (see the module docstring for the branches).

    ``padding`` must be ``kernel_size // 2`` (``None``: that). ``internal_channels_1x1_3x3`` is the width of
    the 1x1-kxk branch's middle (default, as the official block: ``in_channels`` when ``groups <
    out_channels``, else ``2 * in_channels``); equal to ``in_channels`` it uses the identity-based 1x1 conv.
    When ``groups == out_channels`` the average branch pools the input directly, which needs ``in_channels ==
    out_channels``. ``use_affine`` is the BatchNorms' ``affine`` (the official ones are affine). The official
    ``dilation`` and ``nonlinear`` are left out: only the ``k x k`` branch could be dilated, which would break
    the fold, and a nonlinearity is not part of the folded conv.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int | None = None, groups: int = 1, internal_channels_1x1_3x3: int | None = None,
                 use_affine: bool = True):
        super().__init__()
        padding = _check(in_channels, out_channels, kernel_size, stride, padding, groups)
        with_1x1 = groups < out_channels
        if not with_1x1 and in_channels != out_channels:
            raise ValueError(f"groups == out_channels: the average branch pools the input without a 1x1 conv, so "
                             f"in_channels must equal out_channels, got {in_channels} != {out_channels}")
        internal = internal_channels_1x1_3x3
        if internal is None:
            internal = in_channels if with_1x1 else 2 * in_channels
        if internal < 1 or internal % groups:
            raise ValueError(f"internal_channels_1x1_3x3={internal} must be a positive multiple of groups={groups}")
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.stride, self.padding, self.groups = stride, padding, groups
        self.internal_channels_1x1_3x3, self.use_affine = internal, use_affine

        self.dbb_origin = conv_bn(in_channels, out_channels, kernel_size, stride, padding, groups, use_affine)
        self.dbb_avg = nn.Sequential()
        if with_1x1:
            self.dbb_avg.add_module("conv", nn.Conv2d(in_channels, out_channels, 1, groups=groups, bias=False))
            self.dbb_avg.add_module("bn", BNAndPadLayer(padding, out_channels, affine=use_affine))
            self.dbb_avg.add_module("avg", nn.AvgPool2d(kernel_size, stride=stride, padding=0))
            self.dbb_1x1 = conv_bn(in_channels, out_channels, 1, stride, 0, groups, use_affine)
        else:
            self.dbb_avg.add_module("avg", nn.AvgPool2d(kernel_size, stride=stride, padding=padding))
        self.dbb_avg.add_module("avgbn", nn.BatchNorm2d(out_channels, affine=use_affine))

        self.dbb_1x1_kxk = nn.Sequential()
        if internal == in_channels:
            self.dbb_1x1_kxk.add_module("idconv1", IdentityBasedConv1x1(in_channels, groups))
        else:
            self.dbb_1x1_kxk.add_module("conv1", nn.Conv2d(in_channels, internal, 1, groups=groups, bias=False))
        self.dbb_1x1_kxk.add_module("bn1", BNAndPadLayer(padding, internal, affine=use_affine))
        self.dbb_1x1_kxk.add_module("conv2", nn.Conv2d(internal, out_channels, kernel_size, stride=stride,
                                                       padding=0, groups=groups, bias=False))
        self.dbb_1x1_kxk.add_module("bn2", nn.BatchNorm2d(out_channels, affine=use_affine))

    def config(self) -> dict:
        """Every constructor argument: ``DiverseBranchBlock(**m.config())`` rebuilds the same structure."""
        return {"in_channels": self.in_channels, "out_channels": self.out_channels, "kernel_size": self.kernel_size,
                "stride": self.stride, "padding": self.padding, "groups": self.groups,
                "internal_channels_1x1_3x3": self.internal_channels_1x1_3x3, "use_affine": self.use_affine}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.dbb_origin(x)
        if hasattr(self, "dbb_1x1"):
            out = out + self.dbb_1x1(x)
        return out + self.dbb_avg(x) + self.dbb_1x1_kxk(x)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config().items())


class DiverseBranchBlockDeploy(nn.Module):
    """Deploy-form DBB: ``dbb_reparam``, one ``k x k`` conv with bias and padding ``k // 2``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int | None = None, groups: int = 1):
        super().__init__()
        padding = _check(in_channels, out_channels, kernel_size, stride, padding, groups)
        self.dbb_reparam = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                                     groups=groups, bias=True)

    def config(self) -> dict:
        """Every constructor argument (JSON-plain): ``DiverseBranchBlockDeploy(**m.config())`` rebuilds it."""
        conv = self.dbb_reparam
        return {"in_channels": conv.in_channels, "out_channels": conv.out_channels, "kernel_size": conv.kernel_size[0],
                "stride": conv.stride[0], "padding": conv.padding[0], "groups": conv.groups}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dbb_reparam(x)

"""ACNet's Asymmetric Convolution Block (ACB): a ``k x k``, a ``k x 1`` and a ``1 x k`` conv, each with
BatchNorm, summed; its deploy form is one ``k x k`` conv with bias.

The state-dict names are those of the official ``ACBlock`` (DingXiaoH/ACNet, ``acnet/acb.py``):
``square_conv``/``square_bn``, ``ver_conv``/``ver_bn`` (``k x 1``), ``hor_conv``/``hor_bn`` (``1 x k``) and,
deployed, ``fused_conv``, so official training checkpoints load with ``strict=True``.
"""

from __future__ import annotations

import torch
from torch import nn

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def _check(in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int, dilation: int,
           groups: int, padding_mode: str) -> None:
    if in_channels < 1 or out_channels < 1:
        raise ValueError(f"channels must be positive, got in={in_channels}, out={out_channels}")
    if groups < 1 or in_channels % groups or out_channels % groups:
        raise ValueError(f"groups={groups} must divide in_channels={in_channels} and out_channels={out_channels}")
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"ACB needs an odd kernel size (the k x 1 and 1 x k kernels sit on the k x k kernel's "
                         f"centre row and column), got {kernel_size}")
    if stride < 1 or dilation < 1 or padding < 0:
        raise ValueError(f"stride and dilation must be >= 1 and padding >= 0, got {stride}, {dilation}, {padding}")
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")


class ACBlock(nn.Module):
    """Training-form ACB: ``square_bn(square_conv(x)) + ver_bn(ver_conv(x)) + hor_bn(hor_conv(x))``.

    As the official block, the asymmetric convs' paddings are shifted so that their windows align with the
    square kernel's centre column and row, and a ``padding`` smaller than the kernel's half-width crops their
    input instead. Unlike the official block, a ``dilation > 1`` shifts them by the dilated half-width, so the
    three branches stay aligned. ``use_affine`` is the BatchNorms' ``affine``; ``bias=True`` gives the three
    convs a bias (the official ones have none), which the fold keeps.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 dilation: int = 1, groups: int = 1, padding_mode: str = "zeros", use_affine: bool = True,
                 bias: bool = False):
        super().__init__()
        _check(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, padding_mode)
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self.padding_mode, self.use_affine, self.conv_bias = padding_mode, use_affine, bias

        common = dict(stride=stride, dilation=dilation, groups=groups, bias=bias, padding_mode=padding_mode)
        self.square_conv = nn.Conv2d(in_channels, out_channels, (kernel_size, kernel_size), padding=padding, **common)
        self.square_bn = nn.BatchNorm2d(out_channels, affine=use_affine)
        centre = dilation * (kernel_size // 2)
        if padding >= centre:
            self.crop = 0
            ver_padding, hor_padding = (padding, padding - centre), (padding - centre, padding)
        else:  # a negative padding: crop the input of the k x 1 conv's width and of the 1 x k conv's height
            self.crop = centre - padding
            ver_padding, hor_padding = (padding, 0), (0, padding)
        self.ver_conv = nn.Conv2d(in_channels, out_channels, (kernel_size, 1), padding=ver_padding, **common)
        self.hor_conv = nn.Conv2d(in_channels, out_channels, (1, kernel_size), padding=hor_padding, **common)
        self.ver_bn = nn.BatchNorm2d(out_channels, affine=use_affine)
        self.hor_bn = nn.BatchNorm2d(out_channels, affine=use_affine)

    def config(self) -> dict:
        """Every constructor argument: ``ACBlock(**m.config())`` rebuilds the same structure."""
        return {"in_channels": self.in_channels, "out_channels": self.out_channels, "kernel_size": self.kernel_size,
                "stride": self.stride, "padding": self.padding, "dilation": self.dilation, "groups": self.groups,
                "padding_mode": self.padding_mode, "use_affine": self.use_affine, "bias": self.conv_bias}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.crop
        ver_input = x[:, :, :, c:-c] if c else x
        hor_input = x[:, :, c:-c, :] if c else x
        return self.square_bn(self.square_conv(x)) + self.ver_bn(self.ver_conv(ver_input)) + \
            self.hor_bn(self.hor_conv(hor_input))

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config().items())


class ACBlockDeploy(nn.Module):
    """Deploy-form ACB: ``fused_conv``, the square conv's geometry with a bias."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 dilation: int = 1, groups: int = 1, padding_mode: str = "zeros"):
        super().__init__()
        _check(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, padding_mode)
        self.fused_conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                                    dilation=dilation, groups=groups, bias=True, padding_mode=padding_mode)

    def config(self) -> dict:
        """Every constructor argument (JSON-plain): ``ACBlockDeploy(**m.config())`` rebuilds it."""
        conv = self.fused_conv
        return {"in_channels": conv.in_channels, "out_channels": conv.out_channels, "kernel_size": conv.kernel_size[0],
                "stride": conv.stride[0], "padding": conv.padding[0], "dilation": conv.dilation[0],
                "groups": conv.groups, "padding_mode": conv.padding_mode}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fused_conv(x)

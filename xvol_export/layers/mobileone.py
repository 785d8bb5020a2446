"""MobileOne blocks (Vasu et al., "MobileOne: An Improved One millisecond Mobile Backbone", CVPR 2023).

Training form: ``ReLU(SE(sum_i BN_i(conv_kxk_i(x)) + BN(conv_1x1(x)) [+ BN(x)]))`` with ``num_conv_branches``
kxk branches (the 1x1 "scale" branch only when ``kernel_size > 1``); deploy form: ``ReLU(SE(conv_kxk(x)))`` with
bias. Module and parameter names are those of the official code (github apple/ml-mobileone, ``mobileone.py``), so
its unfused and reparameterized checkpoints load with ``strict=True``.

Deliberate differences from the official code: ``dilation`` applies to every branch (the official training form
ignores it), the scale branch is padded so that it stays aligned with the kxk kernel's centre tap for any
``padding >= dilation * (kernel_size // 2)`` (the official assumes ``padding = kernel_size // 2``), and
``MobileOneBlock(..., inference_mode=True)`` returns a :class:`MobileOneBlockDeploy`, a separate type.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from xvol_export.layers.repvgg import check_geometry, conv_bn, deploy_requested, resolve_identity

__all__ = ["MobileOneBlock", "MobileOneBlockDeploy", "MobileOneSEBlock"]

# The constructor arguments of the deploy form, in order; a training block's ``config()`` has them too.
DEPLOY_ARGS = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "use_se")


class MobileOneSEBlock(nn.Module):
    """Squeeze-and-excitation with the official MobileOne names: ``reduce`` and ``expand`` (1x1 convs with bias),
    ``int(in_channels * rd_ratio)`` channels wide."""

    def __init__(self, in_channels: int, rd_ratio: float = 0.0625):
        super().__init__()
        hidden = int(in_channels * rd_ratio)
        self.reduce = nn.Conv2d(in_channels, hidden, kernel_size=1, stride=1, bias=True)
        self.expand = nn.Conv2d(hidden, in_channels, kernel_size=1, stride=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.expand(F.relu(self.reduce(F.adaptive_avg_pool2d(x, 1)))))
        return x * gate


class MobileOneBlock(nn.Module):
    """Training-form MobileOne block: ``num_conv_branches`` kxk conv + BN branches, a 1x1 conv + BN (kxk > 1)
    and (same shape only) a BN identity, summed, then SE (optional) and ReLU. ``inference_mode=True`` returns
    a :class:`MobileOneBlockDeploy` instead.

    ``use_identity`` (keyword only, not in the official code): ``None`` for the official rule, ``False`` to omit
    the identity branch (``rbr_skip``), ``True`` to require it (ValueError where the shapes forbid it).
    """

    def __new__(cls, *args, **kwargs):
        bound = deploy_requested(cls, "inference_mode", args, kwargs)
        if bound is not None:
            kept = {k: v for k, v in bound.arguments.items() if k in DEPLOY_ARGS}
            return MobileOneBlockDeploy(**kept)
        return super().__new__(cls)

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 dilation: int = 1, groups: int = 1, inference_mode: bool = False, use_se: bool = False,
                 num_conv_branches: int = 1, *, use_identity: bool | None = None):
        super().__init__()
        check_geometry(in_channels, out_channels, kernel_size, stride, padding, dilation, groups)
        if isinstance(num_conv_branches, bool) or not isinstance(num_conv_branches, int) or num_conv_branches < 1:
            raise ValueError(f"num_conv_branches must be an integer of at least 1, got {num_conv_branches!r}")
        identity = resolve_identity(use_identity, in_channels, out_channels, kernel_size, stride, padding, dilation)
        _store(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, use_se)
        self.inference_mode = False
        self.num_conv_branches = num_conv_branches
        # Registration order is the official one, so state-dict keys come in the official order.
        self.se = MobileOneSEBlock(out_channels) if use_se else nn.Identity()
        self.activation = nn.ReLU()
        self.rbr_skip = nn.BatchNorm2d(in_channels) if identity else None
        self.rbr_conv = nn.ModuleList(
            conv_bn(in_channels, out_channels, kernel_size, stride, padding, dilation, groups)
            for _ in range(num_conv_branches)
        )
        self.rbr_scale = None
        if kernel_size > 1:
            self.rbr_scale = conv_bn(in_channels, out_channels, 1, stride, padding - dilation * (kernel_size // 2),
                                     1, groups)

    def config(self) -> dict:
        """The constructor arguments (``use_identity`` resolved): ``MobileOneBlock(**m.config())`` rebuilds it."""
        return {**{name: getattr(self, name) for name in DEPLOY_ARGS}, "num_conv_branches": self.num_conv_branches,
                "use_identity": self.rbr_skip is not None}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.rbr_conv[0](x)
        for branch in self.rbr_conv[1:]:
            y = y + branch(x)
        if self.rbr_scale is not None:
            y = y + self.rbr_scale(x)
        if self.rbr_skip is not None:
            y = y + self.rbr_skip(x)
        return self.activation(self.se(y))

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config().items())


class MobileOneBlockDeploy(nn.Module):
    """Deploy-form MobileOne block: ``reparam_conv`` (one kxk conv with bias), then SE (optional) and ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 dilation: int = 1, groups: int = 1, use_se: bool = False):
        super().__init__()
        check_geometry(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, centre_branch=False)
        _store(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, use_se)
        self.inference_mode = True
        self.se = MobileOneSEBlock(out_channels) if use_se else nn.Identity()
        self.activation = nn.ReLU()
        self.reparam_conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                                      bias=True)

    def config(self) -> dict:
        """The constructor arguments: ``MobileOneBlockDeploy(**m.config())`` rebuilds it."""
        return {name: getattr(self, name) for name in DEPLOY_ARGS}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.se(self.reparam_conv(x)))

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config().items())


def _store(block: nn.Module, in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int,
           dilation: int, groups: int, use_se: bool) -> None:
    if not isinstance(use_se, bool):
        raise ValueError(f"use_se must be True or False, got {use_se!r}")
    block.in_channels, block.out_channels, block.kernel_size = in_channels, out_channels, kernel_size
    block.stride, block.padding, block.dilation, block.groups, block.use_se = stride, padding, dilation, groups, use_se

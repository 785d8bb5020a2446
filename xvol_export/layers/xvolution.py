"""The X-volution block: training form (three branches with BatchNorm) and deploy form.

The exact definitions are in the project's design note on the operator; the state-dict names
of :class:`XVolution` are a checkpoint contract and must not change.
"""

from __future__ import annotations

import torch
from torch import nn

from xvol_export.layers.phase_conv import PhaseConv2d
from xvol_export.layers.pssa import (
    PixelShiftAttention,
    onehot_shift_kernel,
    pssa_aggregate,
    pssa_aggregate_by_convs,
)

LAYOUTS = ("dense", "split")
# How a split block runs its dilated conv: ``direct`` (one dilated conv; the exported form) or
# ``phases`` (a dense conv on the phase images: same parameters, faster in PyTorch on CPU).
DILATED_CONVS = ("direct", "phases")
# How a deploy block computes the attention aggregate's nine shifts: ``slices`` of a padded tensor
# (fastest in PyTorch eager) or one-hot grouped ``convs`` (fewer ops: fastest on ONNX Runtime at small batches).
AGGREGATES = ("slices", "convs")
# The constructor arguments both forms share; ``config()`` returns them so a block can be rebuilt.
GEOMETRY = ("in_channels", "out_channels", "stride", "groups", "dilation", "shift", "attn_channels", "attention",
            "dilated_branch")


def default_attn_channels(in_channels: int) -> int:
    return max(4, in_channels // 4)


class XVolution(nn.Module):
    """Training-form X-volution: 3x3 conv, dilated 5x5 conv and PSSA, each with BatchNorm, summed."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        groups: int = 1,
        dilation: int = 2,
        shift: int = 1,
        attn_channels: int | None = None,
        attention: bool = True,
        dilated_branch: bool = True,
    ):
        super().__init__()
        _store_geometry(self, in_channels, out_channels, stride, groups, dilation, shift, attn_channels, attention,
                        dilated_branch)

        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, groups=groups, bias=False)
        self.conv_bn = nn.BatchNorm2d(out_channels)
        if dilated_branch:
            self.dconv = nn.Conv2d(
                in_channels, out_channels, 5, stride=stride, padding=2 * dilation,
                dilation=dilation, groups=groups, bias=False,
            )
            self.dconv_bn = nn.BatchNorm2d(out_channels)
        if attention:
            self.attn = PixelShiftAttention(in_channels, out_channels, self.attn_channels, stride, shift)
            self.attn_bn = nn.BatchNorm2d(out_channels)

    def config(self) -> dict:
        """Every constructor argument: ``XVolution(**m.config())`` rebuilds the same structure."""
        return {name: getattr(self, name) for name in GEOMETRY}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv_bn(self.conv(x))
        if self.dilated_branch:
            y = y + self.dconv_bn(self.dconv(x))
        if self.attention:
            y = y + self.attn_bn(self.attn(x))
        return y

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config().items())


class XVolutionDeploy(nn.Module):
    """Deploy-form X-volution: one static convolution (or two, ``split``) plus the PSSA aggregate.

    ``dense``: ``static``, a ``(4d+1)x(4d+1)`` conv with bias. ``split``: ``conv`` (3x3, with the
    bias) plus ``dconv`` (5x5, dilation ``d``), which ``dilated_conv="phases"`` runs as a dense conv
    on the input's phase images (:mod:`~xvol_export.layers.phase_conv`; same state dict). Without
    the dilated branch both are one 3x3 ``static`` conv. With attention, ``proj`` is one 1x1 conv
    giving ``q, k, v`` (``2A + O`` channels) with ``attn_bn`` and ``1/sqrt(A)`` already folded in;
    ``aggregate`` chooses how the aggregate's shifts are taken (``slices`` or one-hot ``convs``).
    ``dilated_conv`` and ``aggregate`` change speed only: not the weights, not the function.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        groups: int = 1,
        dilation: int = 2,
        shift: int = 1,
        attn_channels: int | None = None,
        attention: bool = True,
        dilated_branch: bool = True,
        layout: str = "split",
        dilated_conv: str = "direct",
        aggregate: str = "slices",
    ):
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        if dilated_conv not in DILATED_CONVS:
            raise ValueError(f"dilated_conv must be one of {DILATED_CONVS}, got {dilated_conv!r}")
        if aggregate not in AGGREGATES:
            raise ValueError(f"aggregate must be one of {AGGREGATES}, got {aggregate!r}")
        _store_geometry(self, in_channels, out_channels, stride, groups, dilation, shift, attn_channels, attention,
                        dilated_branch)
        # Without a dilated branch there is nothing to split: one 3x3 conv either way.
        self.layout = layout if dilated_branch else "dense"
        self.dilated_conv = dilated_conv if self.layout == "split" else "direct"
        self.aggregate = aggregate

        if self.layout == "dense":
            size = 4 * dilation + 1 if dilated_branch else 3
            self.static = nn.Conv2d(
                in_channels, out_channels, size, stride=stride, padding=size // 2, groups=groups, bias=True
            )
        else:
            self.conv = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, groups=groups, bias=True)
            if self.dilated_conv == "phases":
                self.dconv = PhaseConv2d(in_channels, out_channels, 5, stride, dilation, groups, bias=False)
            else:
                self.dconv = nn.Conv2d(
                    in_channels, out_channels, 5, stride=stride, padding=2 * dilation,
                    dilation=dilation, groups=groups, bias=False,
                )
        if attention:
            self.proj = nn.Conv2d(in_channels, 2 * self.attn_channels + out_channels, 1, stride=stride, bias=False)
            if aggregate == "convs":
                # Constants, not weights: outside the state dict (checkpoints do not change), exported as
                # graph constants, which the INT8 pass recognizes and leaves unquantized.
                self.register_buffer("k_shift_kernel", onehot_shift_kernel(self.attn_channels), persistent=False)
                self.register_buffer("v_shift_kernel", onehot_shift_kernel(out_channels), persistent=False)

    def config(self) -> dict:
        """Every constructor argument, ``layout``, ``dilated_conv`` and ``aggregate`` included."""
        return {**{name: getattr(self, name) for name in GEOMETRY}, "layout": self.layout,
                "dilated_conv": self.dilated_conv, "aggregate": self.aggregate}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.layout == "dense":
            y = self.static(x)
        else:
            y = self.conv(x) + self.dconv(x)
        if self.attention:
            a = self.attn_channels
            q, k, v = torch.split(self.proj(x), [a, a, self.out_channels], dim=1)
            if self.aggregate == "slices":
                y = y + pssa_aggregate(q, k, v, self.shift)
            else:
                y = y + pssa_aggregate_by_convs(q, k, v, self.shift, kernels=(self.k_shift_kernel, self.v_shift_kernel))
        return y

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config().items())


def _store_geometry(block: nn.Module, in_channels: int, out_channels: int, stride: int, groups: int, dilation: int,
                    shift: int, attn_channels: int | None, attention: bool, dilated_branch: bool) -> None:
    if in_channels < 1 or out_channels < 1:
        raise ValueError(f"channels must be positive, got in={in_channels}, out={out_channels}")
    if groups < 1 or in_channels % groups or out_channels % groups:
        raise ValueError(f"groups={groups} must divide in_channels={in_channels} and out_channels={out_channels}")
    if stride < 1 or dilation < 1 or shift < 1:
        raise ValueError(f"stride, dilation and shift must be >= 1, got {stride}, {dilation}, {shift}")
    block.in_channels = in_channels
    block.out_channels = out_channels
    block.stride = stride
    block.groups = groups
    block.dilation = dilation
    block.shift = shift
    block.attn_channels = attn_channels if attn_channels is not None else default_attn_channels(in_channels)
    block.attention = attention
    block.dilated_branch = dilated_branch

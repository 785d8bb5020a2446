"""UniRepLKNet's Dilated Reparam Block: a large depthwise conv plus parallel small dilated depthwise convs, each
with BatchNorm, summed; its deploy form is the large conv alone, with bias.

The state-dict names are those of the official ``DilatedReparamBlock`` (AILab-CVC/UniRepLKNet,
``unireplknet.py``): ``lk_origin`` (no bias), ``origin_bn``, ``dil_conv_k{k}_{r}`` and ``dil_bn_k{k}_{r}`` for
each (kernel size, dilation) pair; deployed, ``lk_origin`` with bias. The official block may build
``lk_origin`` as the iGEMM ``DepthWiseConv2dImplicitGEMM`` (``attempt_use_lk_impl``), a ``Conv2d`` subclass with
the same parameters, so its checkpoints load here too; this module always uses ``nn.Conv2d``.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import MappingProxyType

import torch
from torch import nn

# The official default branches per large kernel size: (kernel sizes, dilations).
DEFAULT_BRANCHES = MappingProxyType({
    17: ((5, 9, 3, 3, 3), (1, 2, 4, 5, 7)),
    15: ((5, 7, 3, 3, 3), (1, 2, 3, 5, 7)),
    13: ((5, 7, 3, 3, 3), (1, 2, 3, 4, 5)),
    11: ((5, 5, 3, 3, 3), (1, 2, 3, 4, 5)),
    9: ((5, 5, 3, 3), (1, 2, 3, 4)),
    7: ((5, 3, 3), (1, 2, 3)),
    5: ((3, 3), (1, 2)),
})


def _check(channels: int, kernel_size: int, stride: int, groups: int) -> None:
    if channels < 1:
        raise ValueError(f"channels must be positive, got {channels}")
    if groups < 1 or channels % groups:
        raise ValueError(f"groups={groups} must divide channels={channels}")
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"the large kernel must have an odd size, got {kernel_size}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")


def _branches(kernel_size: int, kernel_sizes: Sequence[int] | None,
              dilates: Sequence[int] | None) -> tuple[tuple[int, ...], tuple[int, ...]]:
    if kernel_sizes is None and dilates is None:
        if kernel_size not in DEFAULT_BRANCHES:
            raise ValueError(f"no default dilated branches for kernel size {kernel_size} (the official tables cover "
                             f"{sorted(DEFAULT_BRANCHES)}); give kernel_sizes and dilates")
        return DEFAULT_BRANCHES[kernel_size]
    if kernel_sizes is None or dilates is None or len(kernel_sizes) != len(dilates):
        raise ValueError("give kernel_sizes and dilates together, of the same length")
    pairs = [(int(k), int(r)) for k, r in zip(kernel_sizes, dilates, strict=True)]
    for k, r in pairs:
        if k < 1 or k % 2 == 0 or r < 1 or r * (k - 1) + 1 > kernel_size:
            raise ValueError(f"branch k={k}, r={r}: needs an odd k, r >= 1 and a dilated size r(k-1)+1 <= "
                             f"{kernel_size}")
    if len(set(pairs)) != len(pairs):
        raise ValueError(f"duplicate (kernel size, dilation) branches: {pairs}")
    return tuple(k for k, _ in pairs), tuple(r for _, r in pairs)


class DilatedReparamBlock(nn.Module):
    """Training-form Dilated Reparam Block: ``origin_bn(lk_origin(x)) + sum dil_bn_k{k}_{r}(dil_conv_k{k}_{r}(x))``.

    ``channels`` in and out; ``groups`` defaults to ``channels`` (depthwise, the official block). ``stride``
    (official: 1) applies to every branch. ``kernel_sizes``/``dilates`` default to the official table for
    ``kernel_size``. ``use_affine`` is the BatchNorms' ``affine`` (official: affine).
    """

    def __init__(self, channels: int, kernel_size: int, stride: int = 1, groups: int | None = None,
                 kernel_sizes: Sequence[int] | None = None, dilates: Sequence[int] | None = None,
                 use_affine: bool = True):
        super().__init__()
        groups = channels if groups is None else groups
        _check(channels, kernel_size, stride, groups)
        self.kernel_sizes, self.dilates = _branches(kernel_size, kernel_sizes, dilates)
        self.channels, self.kernel_size, self.stride, self.groups = channels, kernel_size, stride, groups
        self.use_affine = use_affine
        self.lk_origin = nn.Conv2d(channels, channels, kernel_size, stride=stride, padding=kernel_size // 2,
                                   groups=groups, bias=False)
        self.origin_bn = nn.BatchNorm2d(channels, affine=use_affine)
        for k, r in zip(self.kernel_sizes, self.dilates, strict=True):
            conv = nn.Conv2d(channels, channels, k, stride=stride, padding=(r * (k - 1) + 1) // 2, dilation=r,
                             groups=groups, bias=False)
            self.add_module(f"dil_conv_k{k}_{r}", conv)
            self.add_module(f"dil_bn_k{k}_{r}", nn.BatchNorm2d(channels, affine=use_affine))

    def branches(self) -> list[tuple[int, int, nn.Conv2d, nn.BatchNorm2d]]:
        """``(kernel size, dilation, conv, bn)`` of each dilated branch, in order."""
        return [(k, r, getattr(self, f"dil_conv_k{k}_{r}"), getattr(self, f"dil_bn_k{k}_{r}"))
                for k, r in zip(self.kernel_sizes, self.dilates, strict=True)]

    def config(self) -> dict:
        """Every constructor argument: ``DilatedReparamBlock(**m.config())`` rebuilds the same structure."""
        return {"channels": self.channels, "kernel_size": self.kernel_size, "stride": self.stride,
                "groups": self.groups, "kernel_sizes": list(self.kernel_sizes), "dilates": list(self.dilates),
                "use_affine": self.use_affine}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.origin_bn(self.lk_origin(x))
        for _, _, conv, bn in self.branches():
            out = out + bn(conv(x))
        return out

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config().items())


class DilatedReparamBlockDeploy(nn.Module):
    """Deploy-form Dilated Reparam Block: ``lk_origin``, the large conv with bias (the official merged form)."""

    def __init__(self, channels: int, kernel_size: int, stride: int = 1, groups: int | None = None):
        super().__init__()
        groups = channels if groups is None else groups
        _check(channels, kernel_size, stride, groups)
        self.lk_origin = nn.Conv2d(channels, channels, kernel_size, stride=stride, padding=kernel_size // 2,
                                   groups=groups, bias=True)

    def config(self) -> dict:
        """Every constructor argument (JSON-plain): ``DilatedReparamBlockDeploy(**m.config())`` rebuilds it."""
        conv = self.lk_origin
        return {"channels": conv.in_channels, "kernel_size": conv.kernel_size[0], "stride": conv.stride[0],
                "groups": conv.groups}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lk_origin(x)

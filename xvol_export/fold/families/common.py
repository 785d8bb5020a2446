"""What several built-in families share: labels of convs for ``inspect``, and the squeeze-and-excitation block
that RepVGG and MobileOne keep as it is."""

from __future__ import annotations

import torch
from torch import nn


def conv_label(kh: int, kw: int, stride: int = 1, dilation: int = 1, groups: int = 1, in_channels: int = 0) -> str:
    """``conv3x1``, ``dwconv3x3`` (depthwise), ``conv3x3/g2``, with ``/d2`` (dilation) and ``/s2`` (stride)."""
    depthwise = groups > 1 and groups == in_channels
    label = f"{'dw' if depthwise else ''}conv{kh}x{kw}"
    if groups > 1 and not depthwise:
        label += f"/g{groups}"
    if dilation > 1 and (kh > 1 or kw > 1):
        label += f"/d{dilation}"
    return label + (f"/s{stride}" if stride > 1 else "")


def block_label(block: nn.Module, kernel_size: int | None = None) -> str:
    """:func:`conv_label` of a block's geometry (``kernel_size`` overrides, without dilation when 1)."""
    k = block.kernel_size if kernel_size is None else kernel_size
    return conv_label(k, k, block.stride, block.dilation if k > 1 else 1, block.groups, block.in_channels)


def se_suffix(block: nn.Module) -> str:
    """`` -> SE`` for a block with squeeze-and-excitation, else nothing."""
    return " -> SE" if block.use_se else ""


def se_graph_convs(deploy: nn.Module) -> int:
    """The deploy conv, plus the SE block's two 1x1 convs."""
    return 3 if deploy.use_se else 1


def se_weights(block: nn.Module) -> dict[str, torch.Tensor]:
    """The SE block's tensors (none without one), by the deploy block's state-dict names: the fold copies them."""
    return {f"se.{name}": tensor.detach().double() for name, tensor in block.se.state_dict().items()}

"""Pixel-shift self-attention (PSSA): the parameter-free aggregate and its projections."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def shift_offsets(shift: int) -> list[tuple[int, int]]:
    """The nine offsets ``(L*i, L*j)`` for ``i, j in (-1, 0, 1)``, row-major."""
    return [(shift * i, shift * j) for i in (-1, 0, 1) for j in (-1, 0, 1)]


def pssa_aggregate(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, shift: int, scale: float = 1.0) -> torch.Tensor:
    """Shift-softmax-sum of PSSA.

    For each offset ``d`` of :func:`shift_offsets`, ``l_d = scale * sum_c(q * shift_d(k))``;
    the weights are the softmax of the nine ``l_d`` per pixel, and the output is
    ``sum_d w_d * shift_d(v)``. ``shift_d(t)[.., y, x] = t[.., y+u, x+w]`` with zero fill
    outside the grid. ``q, k``: ``[N, A, H, W]``; ``v``: ``[N, O, H, W]``.
    """
    height, width = q.shape[-2:]
    pad = (shift, shift, shift, shift)
    k_padded = F.pad(k, pad)
    v_padded = F.pad(v, pad)

    def window(t: torch.Tensor, u: int, w: int) -> torch.Tensor:
        return t[:, :, shift + u : shift + u + height, shift + w : shift + w + width]

    offsets = shift_offsets(shift)
    logits = torch.cat([(q * window(k_padded, u, w)).sum(1, keepdim=True) for u, w in offsets], dim=1)
    if scale != 1.0:
        logits = logits * scale
    weights = torch.softmax(logits, dim=1)
    out = weights[:, 0:1] * window(v_padded, *offsets[0])
    for index, (u, w) in enumerate(offsets[1:], start=1):
        out = out + weights[:, index : index + 1] * window(v_padded, u, w)
    return out


def onehot_shift_kernel(channels: int, dtype: torch.dtype = torch.float32,
                        device: torch.device | str | None = None) -> torch.Tensor:
    """``[9 * channels, 1, 3, 3]``: for each channel, nine one-hot 3x3 kernels in :func:`shift_offsets` order."""
    return torch.eye(9, dtype=dtype, device=device).reshape(9, 1, 3, 3).repeat(channels, 1, 1, 1)


def shifted_copies(t: torch.Tensor, shift: int, kernel: torch.Tensor | None = None) -> torch.Tensor:
    """``[N, C, 9, H, W]``: ``t`` shifted by each of :func:`shift_offsets` (zero fill), as one grouped conv
    with one-hot 3x3 kernels (dilation ``shift``), so every output is an exact copy of an input pixel.
    ``kernel``: :func:`onehot_shift_kernel` of ``C`` channels, if already at hand."""
    n, c, h, w = t.shape
    if kernel is None:
        kernel = onehot_shift_kernel(c, t.dtype, t.device)
    return F.conv2d(t, kernel, padding=shift, dilation=shift, groups=c).reshape(n, c, 9, h, w)


def pssa_aggregate_by_convs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, shift: int, scale: float = 1.0,
                            kernels: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """:func:`pssa_aggregate` with the 27 window slices done as two one-hot grouped convs
    (:func:`shifted_copies`; ``kernels`` for ``k`` and ``v`` if at hand) and one multiply + sum per
    stage: about a dozen ops instead of seventy. Faster on ONNX Runtime at batch 1 and 2 (measured: the
    deploy block went from 1.08x to 1.04x its floor at batch 1), slower in PyTorch eager."""
    k_kernel, v_kernel = kernels if kernels is not None else (None, None)
    logits = (q.unsqueeze(2) * shifted_copies(k, shift, k_kernel)).sum(1)
    if scale != 1.0:
        logits = logits * scale
    weights = torch.softmax(logits, dim=1)
    return (shifted_copies(v, shift, v_kernel) * weights.unsqueeze(1)).sum(2)


class PixelShiftAttention(nn.Module):
    """Training-form PSSA: 1x1 projections ``q``, ``k``, ``v`` (stride ``s``) and the aggregate."""

    def __init__(self, in_channels: int, out_channels: int, attn_channels: int, stride: int = 1, shift: int = 1):
        super().__init__()
        self.attn_channels = attn_channels
        self.shift = shift
        self.q = nn.Conv2d(in_channels, attn_channels, 1, stride=stride, bias=False)
        self.k = nn.Conv2d(in_channels, attn_channels, 1, stride=stride, bias=False)
        self.v = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = 1.0 / math.sqrt(self.attn_channels)
        return pssa_aggregate(self.q(x), self.k(x), self.v(x), self.shift, scale)

    def extra_repr(self) -> str:
        return f"attn_channels={self.attn_channels}, shift={self.shift}"

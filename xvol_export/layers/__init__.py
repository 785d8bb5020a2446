"""Layers: the X-volution operator in its training and deploy forms."""

from xvol_export.layers.phase_conv import PhaseConv2d, conv2d_by_phases
from xvol_export.layers.pssa import PixelShiftAttention, pssa_aggregate, shift_offsets
from xvol_export.layers.xvolution import DILATED_CONVS, LAYOUTS, XVolution, XVolutionDeploy

__all__ = [
    "DILATED_CONVS",
    "LAYOUTS",
    "PhaseConv2d",
    "PixelShiftAttention",
    "XVolution",
    "XVolutionDeploy",
    "conv2d_by_phases",
    "pssa_aggregate",
    "shift_offsets",
]

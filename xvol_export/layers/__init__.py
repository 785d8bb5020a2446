"""Layers: the X-volution operator in its training and deploy forms."""

from xvol_export.layers.pssa import PixelShiftAttention, pssa_aggregate, shift_offsets
from xvol_export.layers.xvolution import LAYOUTS, XVolution, XVolutionDeploy

__all__ = [
    "LAYOUTS",
    "PixelShiftAttention",
    "XVolution",
    "XVolutionDeploy",
    "pssa_aggregate",
    "shift_offsets",
]

"""Layers: each block family's training and deploy forms (X-volution, RepVGG, ACB, DBB, MobileOne, dilated
reparam), and the X-volution operator's parts. Operators only: runtime policy lives in each family's rule."""

from xvol_export.layers.acb import ACBlock, ACBlockDeploy
from xvol_export.layers.dbb import DiverseBranchBlock, DiverseBranchBlockDeploy
from xvol_export.layers.dilated_reparam import DilatedReparamBlock, DilatedReparamBlockDeploy
from xvol_export.layers.mobileone import MobileOneBlock, MobileOneBlockDeploy
from xvol_export.layers.phase_conv import PhaseConv2d, conv2d_by_phases
from xvol_export.layers.pssa import (
    PixelShiftAttention,
    onehot_shift_kernel,
    pssa_aggregate,
    pssa_aggregate_by_convs,
    shift_offsets,
    shifted_copies,
)
from xvol_export.layers.repvgg import RepVGGBlock, RepVGGBlockDeploy
from xvol_export.layers.xvolution import (
    AGGREGATES,
    DILATED_CONVS,
    LAYOUTS,
    XVolution,
    XVolutionDeploy,
)

__all__ = [
    "ACBlock",
    "ACBlockDeploy",
    "DilatedReparamBlock",
    "DilatedReparamBlockDeploy",
    "DiverseBranchBlock",
    "DiverseBranchBlockDeploy",
    "MobileOneBlock",
    "MobileOneBlockDeploy",
    "RepVGGBlock",
    "RepVGGBlockDeploy",
    "AGGREGATES",
    "DILATED_CONVS",
    "LAYOUTS",
    "PhaseConv2d",
    "PixelShiftAttention",
    "XVolution",
    "XVolutionDeploy",
    "conv2d_by_phases",
    "onehot_shift_kernel",
    "pssa_aggregate",
    "pssa_aggregate_by_convs",
    "shift_offsets",
    "shifted_copies",
]

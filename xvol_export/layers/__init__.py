"""Layers: the X-volution operator in its training and deploy forms."""

from xvol_export.layers.phase_conv import PhaseConv2d, conv2d_by_phases
from xvol_export.layers.pssa import (
    PixelShiftAttention,
    onehot_shift_kernel,
    pssa_aggregate,
    pssa_aggregate_by_convs,
    shift_offsets,
    shifted_copies,
)
from xvol_export.layers.xvolution import (
    AGGREGATES,
    DILATED_CONVS,
    LAYOUTS,
    ONNX_CONVS_MAX_BATCH,
    TORCH_CPU_OPTIONS,
    XVolution,
    XVolutionDeploy,
    onnx_options,
)

__all__ = [
    "AGGREGATES",
    "DILATED_CONVS",
    "LAYOUTS",
    "ONNX_CONVS_MAX_BATCH",
    "PhaseConv2d",
    "PixelShiftAttention",
    "TORCH_CPU_OPTIONS",
    "XVolution",
    "XVolutionDeploy",
    "conv2d_by_phases",
    "onehot_shift_kernel",
    "onnx_options",
    "pssa_aggregate",
    "pssa_aggregate_by_convs",
    "shift_offsets",
    "shifted_copies",
]

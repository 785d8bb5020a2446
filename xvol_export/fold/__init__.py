"""Structural re-parameterization: pure fold arithmetic, the block-family registry and the model walker."""

from xvol_export.fold.blocks import fold_conv_bn, fold_xvolution
from xvol_export.fold.family import BlockFamily, FoldContext, RuntimeTarget, families, get_family, register_family
from xvol_export.fold.model import (
    BlockFold,
    FoldReport,
    fold,
    fold_both,
    runtime_options,
    set_runtime_options,
)
from xvol_export.fold.plan import FoldPlan, apply_plan

__all__ = ["BlockFamily", "BlockFold", "FoldContext", "FoldPlan", "FoldReport", "RuntimeTarget", "apply_plan",
           "families", "fold", "fold_both", "fold_conv_bn", "fold_xvolution", "get_family", "register_family",
           "runtime_options", "set_runtime_options"]

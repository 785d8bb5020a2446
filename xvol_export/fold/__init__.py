"""Structural re-parameterization: pure fold arithmetic, per-block folds and the model walker."""

from xvol_export.fold.blocks import fold_conv_bn, fold_xvolution
from xvol_export.fold.model import LAYOUT_CHOICES, BlockFold, FoldReport, fold, set_runtime_options

__all__ = ["LAYOUT_CHOICES", "BlockFold", "FoldReport", "fold", "fold_conv_bn", "fold_xvolution", "set_runtime_options"]

"""Structural re-parameterization: pure fold arithmetic, the block-family registry and the model walker.

Importing this package registers the built-in families (``families``), so every lookup in the registry sees them.
"""

from xvol_export.fold import families as _built_in  # noqa: F401  (they register on import, X-volution first)
from xvol_export.fold.conv_bn import fold_conv_bn
from xvol_export.fold.families.xvolution import fold_xvolution
from xvol_export.fold.family import BlockFamily, FoldContext, RuntimeTarget, families, get_family, register_family
from xvol_export.fold.model import (
    BlockFold,
    FoldReport,
    apply_plan,
    fold,
    fold_both,
    runtime_options,
    set_runtime_options,
)
from xvol_export.fold.plan import FoldPlan

__all__ = ["BlockFamily", "BlockFold", "FoldContext", "FoldPlan", "FoldReport", "RuntimeTarget", "apply_plan",
           "families", "fold", "fold_both", "fold_conv_bn", "fold_xvolution", "get_family", "register_family",
           "runtime_options", "set_runtime_options"]

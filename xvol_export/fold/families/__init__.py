"""The built-in block families; each module registers its family on import, X-volution first."""

# isort: off
from xvol_export.fold.families import xvolution  # noqa: F401
from xvol_export.fold.families import repvgg, acb, dbb, mobileone, dilated_reparam  # noqa: F401
# isort: on

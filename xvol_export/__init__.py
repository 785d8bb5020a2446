"""xvol: fold, verify, export and benchmark X-volution networks."""

__version__ = "0.1.0"

from xvol_export.errors import CheckFailed, XvolError  # noqa: E402
from xvol_export.fold import fold  # noqa: E402
from xvol_export.layers import XVolution, XVolutionDeploy, pssa_aggregate  # noqa: E402
from xvol_export.models import create_model, list_models  # noqa: E402

__all__ = [
    "__version__",
    "CheckFailed",
    "XvolError",
    "XVolution",
    "XVolutionDeploy",
    "pssa_aggregate",
    "create_model",
    "list_models",
    "fold",
]

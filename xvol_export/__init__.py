"""xvol: fold, verify, export and benchmark X-volution networks."""

__version__ = "0.1.0"

import os as _os  # noqa: E402
import sys as _sys  # noqa: E402

# ONNX Runtime's telemetry writes a session file into $TMPDIR on first use unless this is set before it
# loads; a run of xvol leaves nothing there (a user's own setting is kept).
_os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
_argv = getattr(_sys, "orig_argv", [])
if "-mxvol_export" in _argv or any(_argv[i:i + 2] == ["-m", "xvol_export"] for i in range(len(_argv))):
    # `python -m xvol_export`: the command line's signal handling starts before torch imports
    from xvol_cli import interrupts as _interrupts

    _interrupts.early()

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

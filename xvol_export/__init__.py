"""xvol: fold, verify, export and benchmark X-volution networks."""

__version__ = "0.1.0"

import os as _os  # noqa: E402
import sys as _sys  # noqa: E402
import types as _types  # noqa: E402

# ONNX Runtime's telemetry writes a session file into $TMPDIR on first use unless this is set before it
# loads; a run of xvol leaves nothing there (a user's own setting is kept).
_os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

from xvol_export.errors import CheckFailed, XvolError  # noqa: E402

# Loaded on first use, so that what needs no PyTorch (judging an artifact against a golden file) runs without it.
_LAZY = {
    "fold": "xvol_export.fold",
    "XVolution": "xvol_export.layers",
    "XVolutionDeploy": "xvol_export.layers",
    "pssa_aggregate": "xvol_export.layers",
    "create_model": "xvol_export.models",
    "list_models": "xvol_export.models",
}


def _lazy(name: str):
    import importlib

    return getattr(importlib.import_module(_LAZY[name]), name)


def __getattr__(name: str):
    if name in _LAZY:
        return _lazy(name)
    raise AttributeError(f"module 'xvol_export' has no attribute {name!r}")


class _Package(_types.ModuleType):
    """``xvol_export.fold`` is the function, as before the names were lazy: importing the subpackage of the same
    name sets this attribute to the subpackage, which must not hide the function."""

    fold = property(lambda self: _lazy("fold"), lambda self, value: None)


_sys.modules[__name__].__class__ = _Package

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

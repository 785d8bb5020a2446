"""xvol: fold, verify, export and benchmark X-volution networks."""

import os as _os
import sys as _sys
import types as _types

# ONNX Runtime's telemetry writes a session file into $TMPDIR on first use unless this is set before it
# loads; a run of xvol leaves nothing there (a user's own setting is kept).
_os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

from xvol_export.errors import CheckFailed, XvolError  # noqa: E402
from xvol_export.version import __version__  # noqa: E402

# What a Python user needs, loaded on first use (name: module, attribute), so that what needs no PyTorch (judging
# an artifact against a golden file) runs without it.
_LAZY = {
    # models and checkpoints
    "create_model": ("xvol_export.models", "create_model"),
    "list_models": ("xvol_export.models", "list_models"),
    "load_model": ("xvol_export.checkpoint", "load_model"),
    "save_checkpoint": ("xvol_export.checkpoint", "save_checkpoint"),
    "LoadOptions": ("xvol_export.checkpoint", "LoadOptions"),
    # fold, verify, export: the model-level functions, and the jobs the commands run
    "fold": ("xvol_export.fold", "fold"),
    "register_family": ("xvol_export.fold.family", "register_family"),
    "BlockFamily": ("xvol_export.fold.family", "BlockFamily"),
    "Reference": ("xvol_export.verify", "Reference"),
    "verify": ("xvol_export.verify", "verify"),
    "Tolerance": ("xvol_export.compare", "Tolerance"),
    "InputData": ("xvol_export.inputs", "InputData"),
    "random_inputs": ("xvol_export.inputs", "random_inputs"),
    "export": ("xvol_export.jobs.export", "export_checkpoint"),
    "fold_checkpoint": ("xvol_export.jobs.fold", "fold_checkpoint"),
    "verify_artifacts": ("xvol_export.jobs.verify", "verify_artifacts"),
    "bench_artifacts": ("xvol_export.jobs.bench", "bench_artifacts"),
    "run_pipeline": ("xvol_export.jobs.pipeline", "run_pipeline"),
    # the settings and result types of those jobs
    "FoldSettings": ("xvol_export.jobs.fold", "FoldSettings"),
    "FoldResult": ("xvol_export.jobs.fold", "FoldResult"),
    "VerifySettings": ("xvol_export.jobs.verify", "VerifySettings"),
    "ExportSettings": ("xvol_export.jobs", "ExportSettings"),
    "ExportResult": ("xvol_export.jobs", "ExportResult"),
    "Int8Options": ("xvol_export.jobs", "Int8Options"),
    "BenchSettings": ("xvol_export.jobs.bench", "BenchSettings"),
    "BenchReport": ("xvol_export.jobs.bench", "BenchReport"),
    "PipelineSettings": ("xvol_export.jobs.pipeline", "PipelineSettings"),
    "PipelineResult": ("xvol_export.jobs.pipeline", "PipelineResult"),
    "JobResult": ("xvol_export.results", "JobResult"),
    # the operator
    "XVolution": ("xvol_export.layers", "XVolution"),
    "XVolutionDeploy": ("xvol_export.layers", "XVolutionDeploy"),
    "pssa_aggregate": ("xvol_export.layers", "pssa_aggregate"),
}


def _lazy(name: str):
    import importlib

    module, attribute = _LAZY[name]
    return getattr(importlib.import_module(module), attribute)


def __getattr__(name: str):
    if name in _LAZY:
        return _lazy(name)
    raise AttributeError(f"module 'xvol_export' has no attribute {name!r}")


def _function(name: str) -> property:
    return property(lambda self: _lazy(name), lambda self, value: None)


class _Package(_types.ModuleType):
    """``xvol_export.fold``, ``.verify`` and ``.export`` are the functions: importing the subpackage of the same name
    sets this attribute to the subpackage, which must not hide the function (the subpackages stay importable by
    their full names)."""

    fold = _function("fold")
    verify = _function("verify")
    export = _function("export")


_sys.modules[__name__].__class__ = _Package

__all__ = ["__version__", "CheckFailed", "XvolError", *_LAZY]

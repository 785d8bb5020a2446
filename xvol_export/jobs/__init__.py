"""The jobs behind the commands, one module each: a frozen settings dataclass, an in-memory core, a path-in /
path-out function, and a result with the shape every job shares (:class:`~xvol_export.results.JobResult`).

Each name is imported from its module on first use, so a command that needs no model (judging an artifact
against a golden file) never loads PyTorch.
"""

import importlib

_HOMES = {
    "BenchReport": "bench", "BenchSettings": "bench", "bench_artifacts": "bench",
    "ExportResult": "export", "ExportSettings": "export", "Int8Options": "export", "export_checkpoint": "export",
    "FoldResult": "fold", "FoldSettings": "fold", "fold_checkpoint": "fold",
    "GraphReport": "inspect", "InspectReport": "inspect", "InspectSettings": "inspect",
    "inspect_artifact": "inspect", "inspect_checkpoint": "inspect", "inspect_graph": "inspect",
    "PipelineResult": "pipeline", "PipelineSettings": "pipeline", "run_pipeline": "pipeline",
    "VerifySettings": "verify", "verify_artifacts": "verify",
}


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(f"xvol_export.jobs.{_HOMES[name]}"), name)
    if name == "JobResult":
        from xvol_export.results import JobResult

        return JobResult
    if name == "VerifyReport":
        from xvol_export.verify import VerifyReport

        return VerifyReport
    raise AttributeError(f"module 'xvol_export.jobs' has no attribute {name!r}")


__all__ = [
    "BenchReport", "BenchSettings", "ExportResult", "ExportSettings", "FoldResult", "FoldSettings", "GraphReport",
    "InspectReport", "InspectSettings", "Int8Options", "JobResult", "PipelineResult", "PipelineSettings",
    "VerifyReport", "VerifySettings", "bench_artifacts", "export_checkpoint", "fold_checkpoint", "inspect_artifact",
    "inspect_checkpoint", "inspect_graph", "run_pipeline", "verify_artifacts",
]

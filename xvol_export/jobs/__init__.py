"""The jobs behind the commands, one module each: a frozen settings dataclass, an in-memory core, a path-in /
path-out function, and a result with the shape every job shares (:class:`~xvol_export.results.JobResult`)."""

from xvol_export.jobs.bench import BenchReport, BenchSettings, bench_artifacts
from xvol_export.jobs.export import ExportResult, ExportSettings, Int8Options, export_checkpoint
from xvol_export.jobs.fold import FoldResult, FoldSettings, fold_checkpoint
from xvol_export.jobs.inspect import InspectReport, InspectSettings, inspect_checkpoint, inspect_graph
from xvol_export.jobs.pipeline import PipelineResult, PipelineSettings, run_pipeline
from xvol_export.jobs.verify import VerifySettings, verify_artifacts
from xvol_export.results import JobResult
from xvol_export.verify import VerifyReport

__all__ = [
    "BenchReport", "BenchSettings", "ExportResult", "ExportSettings", "FoldResult", "FoldSettings", "InspectReport",
    "InspectSettings", "Int8Options", "JobResult", "PipelineResult", "PipelineSettings", "VerifyReport",
    "VerifySettings", "bench_artifacts", "export_checkpoint", "fold_checkpoint", "inspect_checkpoint",
    "inspect_graph", "run_pipeline", "verify_artifacts",
]

"""``xvol pipeline``: one checkpoint to every requested format and precision, proven, with one manifest."""

from xvol_export.pipeline.job import PipelineResult, PipelineSettings, load_config, run_pipeline
from xvol_export.pipeline.manifest import SCHEMA_PATH, manifest, summary_markdown, write_manifest

__all__ = ["SCHEMA_PATH", "PipelineResult", "PipelineSettings", "load_config", "manifest", "run_pipeline",
           "summary_markdown", "write_manifest"]

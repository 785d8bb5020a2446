"""The pipeline's record: its manifest and Markdown summary (the job is ``xvol_export.jobs.pipeline``)."""

from xvol_export.pipeline.manifest import SCHEMA_PATH, manifest, summary_markdown, write_manifest

__all__ = ["SCHEMA_PATH", "manifest", "summary_markdown", "write_manifest"]

"""Export: ONNX graphs (and their FP16/INT8 forms) from checkpoints, verified against the training form."""

from xvol_export.export.job import (
    FORMATS,
    PRECISIONS,
    ExportResult,
    default_export_output,
    export_checkpoint,
)

__all__ = ["FORMATS", "PRECISIONS", "ExportResult", "default_export_output", "export_checkpoint"]

"""``xvol export GRAPH.onnx --format engine``: a TensorRT engine from an ONNX graph made elsewhere, judged against
that graph run on ONNX Runtime (the training form is not in an ONNX file)."""

from __future__ import annotations

import os
from pathlib import Path

import onnx

from xvol_export import graph_info
from xvol_export.artifacts import onnx_input_size
from xvol_export.compare import Tolerance
from xvol_export.errors import XvolError
from xvol_export.export import engine as engine_step
from xvol_export.export.formats import MakeJob, make_engine_from_file
from xvol_export.inputs import InputShape, prepare_inputs
from xvol_export.io import check_output_path, sha256_file
from xvol_export.jobs.export_result import ExportResult
from xvol_export.runners import OnnxRuntimeRunner
from xvol_export.tensorrt.build import EngineSettings
from xvol_export.tensorrt.ops import compatibility_report
from xvol_export.verify import Reference


def engine_from_graph(path: Path, output: str | os.PathLike | None, engine: EngineSettings,
                      data: str | os.PathLike | None = None, seed: int | None = None,
                      tolerance: Tolerance | None = None, force: bool = False) -> ExportResult:
    """The engine of the ONNX graph at ``path`` (default ``output``: ``NAME.engine`` beside it), built with
    ``engine``, judged on ``data`` (or inputs drawn with ``seed``) against the graph on ONNX Runtime.

    The result has an export's shape; what the graph's own export decided (exporter, opset, fold) is not known
    here: the exporter is empty and the opset 0."""
    if not path.is_file():
        raise XvolError(f"{path}: no such file. Check the path (relative paths start from the current folder).")
    graph = onnx.load(str(path), load_external_data=False)
    output = Path(output) if output is not None else path.with_suffix(".engine")
    for target in engine_step.engine_files(output):
        check_output_path(target, force)
    size = onnx_input_size(path)
    data_in, used_seed = prepare_inputs(size, str(path), data, InputShape((engine.batch, *size)) if size else None,
                                        seed)
    result = ExportResult(source=str(path), source_sha256=sha256_file(path), output=str(output), format="engine",
                          precision=graph_info.graph_precision(graph), exporter="", opset=0, dynamic=False,
                          input_shape=tuple(data_in.inputs.shape), tensorrt_compatibility=compatibility_report(graph))
    reference = Reference(OnnxRuntimeRunner(path, "ONNX graph"), data_in, "ONNX graph")
    result.notes.append("judged against the ONNX graph on ONNX Runtime (the training form is not in an ONNX file)")
    made = make_engine_from_file(path, output, MakeJob(reference, result.precision, {}, tolerance, used_seed, force,
                                                       engine))
    result.record(made)
    result.written = bool(result.files)
    return result

"""`xvol export`: fold if needed, export to ONNX, check, simplify, set precision, re-verify, tag, then hand the
verified graph to its format's maker (:data:`~xvol_export.export.formats.FORMATS`), which writes the artifact."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import onnx
from torch import nn

from xvol_export import metadata_keys as keys
from xvol_export.artifacts import artifact_kind
from xvol_export.compare import Tolerance
from xvol_export.errors import XvolError
from xvol_export.export import engine as engine_step
from xvol_export.export import onnx_graph, structure
from xvol_export.export.formats import FORMATS, MakeJob, output_for
from xvol_export.export.int8 import Int8Options, load_calibration, quantize
from xvol_export.export.precision import to_fp16
from xvol_export.inputs import InputShape, prepare_inputs
from xvol_export.io import check_output_path
from xvol_export.jobs.engine import engine_from_graph
from xvol_export.jobs.export_result import ExportResult
from xvol_export.jobs.prepare import ExportSettings, PreparedExport, prepare_export
from xvol_export.limits import check_not_folder_syntax, check_output_name
from xvol_export.runners import OnnxRuntimeRunner
from xvol_export.tensorrt.build import EngineSettings
from xvol_export.tensorrt.ops import compatibility_report
from xvol_export.utils import StepClock
from xvol_export.verify import Reference, VerifyReport, verify
from xvol_export.version import __version__

__all__ = ["ExportResult", "ExportSettings", "Int8Options", "PreparedExport", "default_export_output",
           "export_checkpoint", "export_prepared", "prepare_export"]

def default_export_output(path: str | os.PathLike, precision: str, format: str = "onnx") -> Path:
    """``model.pth`` -> ``model.onnx`` (``model.fp16.onnx``, ``model.int8.onnx``; ``.xml`` for OpenVINO,
    ``model.bf16.xml`` for an IR computed in bf16) beside it."""
    return check_output_name(output_for(path, precision, format), "-o", default=True)  # a name too long


def export_checkpoint(path: str | os.PathLike, output: str | os.PathLike | None = None,
                      settings: ExportSettings = ExportSettings()) -> ExportResult:
    """Export a checkpoint to a verified ONNX graph (or IR, or engine); nothing is written unless every check passes.

    ``format="engine"`` also builds a TensorRT engine from the written graph with ``settings.engine``
    (its profiles default to ``batch`` and ``imgsz``), checks its layers' precisions and judges it
    against the same reference; ``path`` may then be an ``.onnx`` graph, judged against itself
    (:func:`xvol_export.jobs.engine.engine_from_graph`).

    A training-form checkpoint is folded first (and the fold verified); a deploy checkpoint is
    exported as it is. The fold and the graph are judged against the training form (the deploy
    model when only that exists) run once in float64, next to a baseline of the graph's precision,
    on ``data`` (``.npz``) or seeded random inputs of the export shape; with ``dynamic`` also at a
    second, different shape. The in-memory core is :func:`prepare_export` then :func:`export_prepared`.
    """
    s = settings
    s.check()
    if output is not None:
        check_not_folder_syntax(output, "-o")  # "newdir/" would write a file named newdir
        check_output_name(output, "-o")
    if FORMATS[s.format].tensorrt:
        engine = dataclasses.replace(s.engine or EngineSettings(), batch=s.batch,
                                     imgsz=s.imgsz or (s.engine and s.engine.imgsz))
        engine_step.check_engine_request(engine, str(path))
        s = dataclasses.replace(s, engine=engine)
        if artifact_kind(path) == "onnx":
            return engine_from_graph(Path(path), output, engine, s.data, s.seed, s.tolerance, s.force)
    elif artifact_kind(path) == "onnx":
        raise XvolError(f"{path}: is an ONNX graph already; xvol export makes graphs from checkpoints, and engines "
                        "from graphs (--format engine).")
    onnx_graph.check_opset(s.opset, s.exporter)
    s.check_int8()
    output = Path(output) if output is not None else default_export_output(path, s.precision, s.format)
    for target in FORMATS[s.format].files(output):
        check_output_path(target, s.force)
    prepared = prepare_export(path, s)
    calibration = load_calibration(s.calib, prepared.shape[1]) if s.precision == "int8" else None
    return export_prepared(prepared, output, s, calibration)


def export_prepared(prepared: PreparedExport, output: str | os.PathLike, settings: ExportSettings = ExportSettings(),
                    calibration: np.ndarray | None = None) -> ExportResult:
    """One format and precision of a prepared checkpoint: convert, verify against the shared reference, write.

    The graph is exported and simplified once per :class:`PreparedExport`; the reference's baseline of
    each precision is computed once too. From ``settings`` it takes the format, precision, int8 options,
    tolerance, engine settings and force; ``calibration`` holds the int8 calibration images.
    """
    p, s, output = prepared, settings, Path(output)
    timings = dict(p.timings)
    clock = StepClock(timings)
    result = ExportResult(source=str(p.path), source_sha256=p.ckpt.sha256 or "", output=str(output), format=s.format,
                          precision=s.precision, exporter=p.exporter, opset=p.opset, dynamic=p.dynamic,
                          input_shape=p.shape, notes=list(p.notes), timings=timings, fold=p.fold,
                          fold_verification=p.fold_verification, deploy_options=dict(p.deploy_options))
    if not p.fold_passed:
        result.notes.append("the fold failed verification: nothing exported")
        return result
    graph = _verified_graph(p, s, calibration, result, clock)
    if not result.passed:
        return result
    result.metadata = _metadata(p.ckpt, result)
    onnx_graph.set_metadata(graph, result.metadata)
    job = MakeJob(p.reference, s.precision, result.metadata, s.tolerance, p.seed, s.force,
                  s.engine or EngineSettings(batch=p.shape[0]), clock)
    result.record(FORMATS[s.format].make(graph, output, job))
    return result


def _verified_graph(p: PreparedExport, s: ExportSettings, calibration: np.ndarray | None, result: ExportResult,
                    clock: StepClock) -> onnx.ModelProto:
    """The graph in the result's precision, verified (simplified first, unsimplified when that fails), checked at
    another shape, summarized and checked for structure and TensorRT; every check goes into ``result``."""
    candidates = p.candidates(clock)
    result.notes += [n for n in p.notes if n not in result.notes]
    in_graph = result.graph_precision
    for label, graph in candidates:
        if in_graph != "fp32":
            with clock(f"{in_graph} conversion"):
                graph = _convert(graph, in_graph, calibration, s.int8, p.reference, result)
        with clock("verify"), onnx_graph.runnable(graph) as source:
            report = verify(p.reference, OnnxRuntimeRunner(source, f"ONNX {in_graph}"), tolerance=s.tolerance,
                            precision=in_graph, seed=p.seed)
        if report.passed or label == "unsimplified":
            break
        result.notes.append(f"the {label}-simplified graph failed verification "
                            f"({report.failure_summary()}); trying the unsimplified graph")
    result.verification = report
    result.simplifier = label if label != "unsimplified" else None
    if p.dynamic:
        with clock("verify other shape"):
            result.dynamic_check = _check_other_shape(p.model, p.reference.deploy_form, graph, p.shape, in_graph,
                                                      s.tolerance, p.seed)
    left = None
    if p.fold is not None:  # the BatchNorms the fold left, each with its reason
        reasons = {entry["name"]: entry["reason"] for entry in p.fold.left}
        left = {name: reasons.get(name, "left by the fold") for name in p.fold.remaining_batchnorms}
    result.graph = structure.graph_summary(graph, p.deploy, left, raw=candidates[-1][1])
    structural = structure.structural_failures(result.graph)
    result.failures += structural
    result.tensorrt_compatibility = compatibility_report(graph)
    problems = result.tensorrt_compatibility["problems"]
    if problems:
        result.notes.append(f"TensorRT would refuse this graph ({problems[0]}{', ...' if len(problems) > 1 else ''})")
        if FORMATS[s.format].tensorrt:
            result.failures.append("the graph uses what TensorRT's ONNX parser refuses: no engine can be built")
    if not result.passed:
        failed = [what for what, bad in (("verification", not all(r.passed for r in result.reports)),
                                          ("the structural check", bool(structural)),
                                          ("the TensorRT check", len(result.failures) > len(structural)))
                  if bad]
        result.notes.append(f"{' and '.join(failed)} failed: nothing written")
    return graph


def _convert(graph: onnx.ModelProto, precision: str, calibration: np.ndarray | None, int8: Int8Options,
             reference: Reference, result: ExportResult) -> onnx.ModelProto:
    """The fp32 ``graph`` in fp16, or int8 (:func:`~xvol_export.export.int8.quantize`, its record in ``result``)."""
    if precision == "fp16":
        return onnx_graph.check_graph(to_fp16(graph))
    truths = reference.truth.values
    first = next(iter(truths))  # int8 accuracy is measured on the graph's first output
    if int8.measures and len(truths) > 1:
        result.notes.append(f"int8 sensitivity and fallback measured on the first output, '{first}'")
    measured = dict(inputs=reference.data.inputs.numpy(), truth=truths[first],
                    measured_on=reference.data.source) if int8.measures else {}
    quantized = quantize(graph, calibration, int8, result.format, **measured)
    result.int8 = quantized.report
    result.failures += quantized.failures
    return quantized.graph


def _check_other_shape(model: nn.Module, deploy64: nn.Module | None, graph: onnx.ModelProto, shape: tuple[int, ...],
                       precision: str, tolerance: Tolerance | None, seed: int | None) -> VerifyReport:
    """A dynamic graph must also run, and agree, at another batch size and image size (its own reference)."""
    batch, channels, height, width = shape
    other = (batch + 2, channels, height + max(1, height // 4) + 1, width + max(1, width // 2))
    data, used = prepare_inputs((channels, other[2], other[3]), "the exported graph", None, InputShape(other),
                                None if seed is None else seed + 1)
    reference = Reference(model, data, "training form", per_block=False, deploy=deploy64)
    with onnx_graph.runnable(graph) as source:
        return verify(reference, OnnxRuntimeRunner(source, "ONNX (other shape)"), tolerance=tolerance,
                      precision=precision, seed=used)


def _metadata(ckpt, result: ExportResult) -> dict[str, str]:
    layouts = result.fold.layouts if result.fold else ckpt.layouts
    return {
        keys.VERSION: __version__,
        keys.SOURCE_SHA256: ckpt.sha256 or "",
        keys.ARCHITECTURE: ckpt.architecture,
        keys.CONFIG: json.dumps(ckpt.config),
        keys.FOLD_LAYOUT: json.dumps(layouts),
        keys.DEPLOY_OPTIONS: json.dumps(result.deploy_options),
        keys.PRECISION: result.graph_precision,
        keys.EXPORTER: f"{result.exporter} (opset {result.opset})",
        keys.SIMPLIFIER: result.simplifier or "none",
        keys.INPUT_SHAPE: "x".join(map(str, result.input_shape)),
        keys.DYNAMIC: json.dumps(result.dynamic),
        keys.VERIFIED: json.dumps(result.verification.summary()),
    } | ({keys.INT8_CALIBRATION: json.dumps({"method": result.int8["method"],
                                             "images": result.int8["calibration_images"]}),
          keys.INT8_LAYOUT: json.dumps(result.int8["layout"])}
         if result.int8 else {})

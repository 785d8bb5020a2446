"""`xvol export`: fold if needed, export to ONNX, check, simplify, set precision, re-verify, tag, save."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from torch import nn

import xvol_export
from xvol_export import graph_info
from xvol_export.artifacts import artifact_kind, onnx_input_size
from xvol_export.backends import BACKENDS
from xvol_export.checkpoint import Checkpoint, LoadOptions
from xvol_export.compare import Tolerance
from xvol_export.errors import XvolError
from xvol_export.export import engine as engine_step
from xvol_export.export import int8 as int8_step
from xvol_export.export import onnx_graph, openvino_ir, structure
from xvol_export.export import precision as precision_step
from xvol_export.export.int8 import CALIBRATION_KEY, INT8_LAYOUT_KEY, AccuracyBudget
from xvol_export.fold import FoldReport, RuntimeTarget, fold_both, runtime_options, set_runtime_options
from xvol_export.inputs import InputShape, load_npz, prepare_inputs
from xvol_export.io import check_output_path, sha256_file
from xvol_export.limits import check_not_folder_syntax, check_output_name, check_seed
from xvol_export.metadata_keys import INPUT_SHAPE as INPUT_SHAPE_KEY
from xvol_export.results import JobResult
from xvol_export.runners import OnnxRuntimeRunner, OpenVinoRunner
from xvol_export.runners.openvino_runner import PRECISION_OF_HINT
from xvol_export.tensorrt.build import EngineSettings
from xvol_export.tensorrt.ops import compatibility_report
from xvol_export.utils import StepClock
from xvol_export.verify import Reference, VerifyReport, verify, verify_fold
from xvol_export.verify.run import check_batch_fits

FORMATS = ("onnx", "openvino", "engine")
PRECISIONS = ("fp32", "fp16", "int8")  # in the graph
# --format openvino only: the graph and IR stay fp32, the IR records that OpenVINO computes it in bf16
INFERENCE_ONLY_PRECISIONS = ("bf16",)


@dataclass(frozen=True)
class Int8Options:
    """How an int8 graph is made: ONNX Runtime's calibration ``method`` (minmax, entropy, percentile),
    a per-layer ``sensitivity`` report, and ``budget``: keep the most sensitive layers in float until
    it is met (``--int8-fallback --accuracy-budget``). The last two measure on the verification data, on the
    runtime the graph is for. ``target``: that runtime (tensorrt, onnxruntime, openvino; ``auto``: the export's
    format's, onnxruntime for an ONNX graph), which sets the Q/DQ layout; ``weight_bits``: 8, 7, or ``auto``
    (7 where the target's CPU kernels would saturate on this machine's ISA)."""

    method: str = "minmax"
    sensitivity: bool = False
    budget: AccuracyBudget | None = None
    target: str = "auto"
    weight_bits: str = "auto"

    def layout(self, format: str = "onnx") -> precision_step.Int8Layout:
        """The Q/DQ layout for an export of ``format`` (:func:`xvol_export.export.precision.int8_layout`)."""
        target = self.target
        if target == "auto":
            target = {"engine": "tensorrt", "openvino": "openvino"}.get(format, "onnxruntime")
        return precision_step.int8_layout(target, self.weight_bits)


@dataclass
class ExportResult(JobResult):
    """One export: the fold and every check (fold, graph, other shape, IR, engine), what was written and why not."""

    source: str
    source_sha256: str
    output: str
    format: str
    precision: str
    exporter: str
    opset: int
    dynamic: bool
    input_shape: tuple[int, ...]
    simplifier: str | None = None
    deploy_options: dict[str, str] = field(default_factory=dict)  # how the deploy blocks compute in the graph
    fold: FoldReport | None = None
    fold_verification: VerifyReport | None = None
    verification: VerifyReport | None = None
    dynamic_check: VerifyReport | None = None
    ir_verification: VerifyReport | None = None  # --format openvino: the IR on OpenVINO
    graph: dict = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    written: bool = False
    failures: list[str] = field(default_factory=list)
    int8: dict | None = None  # calibration method, sensitivity report, fallback (kept-float layers and why)
    inference_precision: str | None = None  # --format openvino: what OpenVINO computed the IR in (read back)
    engine: dict | None = None  # --format engine: precision plan, profiles, layer precision check, build time
    engine_verification: VerifyReport | None = None  # --format engine: the engine on TensorRT
    tensorrt_compatibility: dict | None = None  # would TensorRT's ONNX parser take the graph (checked on the CPU)

    @property
    def graph_precision(self) -> str:
        """The precision in the graph: bf16 is OpenVINO's inference precision on an fp32 graph."""
        return "fp32" if self.precision in INFERENCE_ONLY_PRECISIONS else self.precision

    @property
    def reports(self) -> list[VerifyReport]:
        return [r for r in (self.fold_verification, self.verification, self.dynamic_check, self.ir_verification,
                            self.engine_verification) if r is not None]

    @property
    def passed(self) -> bool:
        return not self.failures and all(r.passed for r in self.reports)

    def failure_summary(self) -> str:
        parts = list(self.failures)
        labels = ((self.fold_verification, "fold"), (self.verification, "ONNX"), (self.dynamic_check, "other shape"),
                  (self.ir_verification, "OpenVINO IR"), (self.engine_verification, "TensorRT engine"))
        parts += [f"{label}: {r.failure_summary()}" for r, label in labels if r is not None and not r.passed]
        return "; ".join(parts)

    def to_dict(self) -> dict:
        return {
            **self.job_fields(),
            "source": self.source,
            "source_sha256": self.source_sha256,
            "output": self.output,
            "written": self.written,
            "format": self.format,
            "precision": self.precision,
            "graph_precision": self.graph_precision,
            "inference_precision": self.inference_precision,
            "exporter": self.exporter,
            "opset": self.opset,
            "dynamic": self.dynamic,
            "input_shape": list(self.input_shape),
            "simplifier": self.simplifier,
            "deploy_options": self.deploy_options,
            "fold": self.fold.to_dict() if self.fold else None,
            "fold_verification": self.fold_verification.to_dict() if self.fold_verification else None,
            "verification": self.verification.to_dict() if self.verification else None,
            "dynamic_check": self.dynamic_check.to_dict() if self.dynamic_check else None,
            "ir_verification": self.ir_verification.to_dict() if self.ir_verification else None,
            "engine": self.engine,
            "engine_verification": self.engine_verification.to_dict() if self.engine_verification else None,
            "tensorrt_compatibility": self.tensorrt_compatibility,
            "graph": self.graph,
            "metadata": self.metadata,
            "failures": self.failures,
            "int8": self.int8,
        }


def default_export_output(path: str | os.PathLike, precision: str, format: str = "onnx") -> Path:
    """``model.pth`` -> ``model.onnx`` (``model.fp16.onnx``, ``model.int8.onnx``; ``.xml`` for OpenVINO,
    ``model.bf16.xml`` for an IR computed in bf16) beside it."""
    path = Path(path)
    tag = "" if precision == "fp32" else f".{precision}"
    suffix = {"openvino": ".xml", "engine": ".engine"}.get(format, ".onnx")
    return check_output_name(path.with_name(f"{path.stem}{tag}{suffix}"), "-o", default=True)  # a name too long


@dataclass(frozen=True)
class ExportSettings:
    """How ``xvol export`` makes an artifact; every field is one of its options.

    ``format``: onnx, openvino or engine; ``precision``: fp32, fp16, int8 (Q/DQ, calibrated on ``calib``)
    or bf16 (OpenVINO's inference precision on an fp32 IR); the graph is exported by ``exporter`` at
    ``opset``, at ``batch`` and ``imgsz`` (default the model's) or ``dynamic``, simplified by ``simplifier``;
    ``layout`` chooses how a training-form checkpoint folds; verification runs on ``data`` (``.npz``) or
    random inputs drawn with ``seed``; ``tolerance`` (Polygraphy's) replaces the precision's default gate;
    ``int8`` the calibration method, sensitivity report and fallback; ``engine`` TensorRT's build settings.
    """

    format: str = "onnx"
    precision: str = "fp32"
    opset: int = onnx_graph.DEFAULT_OPSET
    exporter: str = "torchscript"
    dynamic: bool = False
    batch: int = 1
    imgsz: tuple[int, int] | None = None
    simplify: bool = True
    simplifier: str = "onnxslim"
    layout: str = "auto"
    calib: str | os.PathLike | None = None
    data: str | os.PathLike | None = None
    seed: int | None = None
    tolerance: Tolerance | None = None
    force: bool = False
    load: LoadOptions = LoadOptions()
    int8: Int8Options = Int8Options()
    engine: EngineSettings | None = None

    def check(self) -> None:
        """:class:`XvolError` for settings no run could satisfy, before any work."""
        _check_choices(self.format, self.precision, self.simplifier, self.batch, self.imgsz)
        if self.seed is not None:
            check_seed(self.seed)


def export_checkpoint(path: str | os.PathLike, output: str | os.PathLike | None = None,
                      settings: ExportSettings = ExportSettings()) -> ExportResult:
    """Export a checkpoint to a verified ONNX graph (or IR, or engine); nothing is written unless every check passes.

    ``format="engine"`` also builds a TensorRT engine from the written graph with ``settings.engine``
    (its profiles default to ``batch`` and ``imgsz``), checks its layers' precisions and judges it
    against the same reference; ``path`` may then be an ``.onnx`` graph, judged against itself.

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
    if s.format == "engine":
        engine = dataclasses.replace(s.engine or EngineSettings(), batch=s.batch,
                                     imgsz=s.imgsz or (s.engine and s.engine.imgsz))
        engine_step.check_engine_request(engine, str(path))
        s = dataclasses.replace(s, engine=engine)
        if artifact_kind(path) == "onnx":
            return _export_graph_engine(Path(path), output, engine, s.data, s.seed, s.tolerance, s.force)
    elif artifact_kind(path) == "onnx":
        raise XvolError(f"{path}: is an ONNX graph already; xvol export makes graphs from checkpoints, and engines "
                        "from graphs (--format engine).")
    onnx_graph.check_opset(s.opset, s.exporter)
    int8 = s.int8
    if s.precision == "int8" and (int8.sensitivity or int8.budget is not None) and s.data is None:
        raise XvolError("--int8-sensitivity and --int8-fallback measure the int8 graph on real images: pass --data "
                        "FILE.npz with held-out inputs (random inputs cannot judge an int8 graph).")
    if s.precision != "int8" and (int8.sensitivity or int8.budget is not None):
        raise XvolError("--int8-sensitivity and --int8-fallback go with --precision int8.")
    if s.precision == "int8" and s.calib is None:
        raise XvolError("--precision int8 needs calibration data: pass --calib FILE.npz with an 'input' array of "
                        "representative images (a few hundred, preprocessed like the model's inputs).")
    output = Path(output) if output is not None else default_export_output(path, s.precision, s.format)
    targets = {"openvino": openvino_ir.ir_files(output),
               "engine": [*engine_step.engine_files(output), output.with_suffix(".onnx")]}.get(s.format, [output])
    for target in targets:
        check_output_path(target, s.force)
    prepared = prepare_export(path, s)
    calibration = _load_calibration(s.calib, prepared.shape[1]) if s.precision == "int8" else None
    return export_prepared(prepared, output, s, calibration)


@dataclass
class PreparedExport:
    """What every export of one checkpoint shares, computed once: the loaded model, its fold and the fold's
    verification, the float64 reference on the verification inputs, and the exported (and simplified) graph."""

    path: Path
    ckpt: Checkpoint
    model: nn.Module
    deploy: nn.Module  # fp32, with the deploy blocks' fastest form for ONNX Runtime
    shape: tuple[int, ...]
    reference: Reference
    seed: int | None
    exporter: str
    opset: int
    dynamic: bool
    simplify: bool
    simplifier: str
    deploy_options: dict[str, str] = field(default_factory=dict)
    fold: FoldReport | None = None
    fold_verification: VerifyReport | None = None
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    _candidates: list[tuple[str, onnx.ModelProto]] | None = None

    @property
    def fold_passed(self) -> bool:
        return self.fold_verification is None or self.fold_verification.passed

    def candidates(self, clock: StepClock) -> list[tuple[str, onnx.ModelProto]]:
        """The fp32 graph, simplified first when asked, then unsimplified: exported once, on first use."""
        if self._candidates is None:
            with clock("export"):
                raw = onnx_graph.check_graph(onnx_graph.export_onnx(self.deploy, self.shape, opset=self.opset,
                                                                    dynamic=self.dynamic, exporter=self.exporter))
            self._candidates = [("unsimplified", raw)]
            if self.simplify:
                with clock("simplify"):
                    try:
                        simplified = onnx_graph.check_graph(onnx_graph.simplify(raw, self.simplifier))
                        self._candidates.insert(0, (self.simplifier, simplified))
                    except XvolError:
                        raise
                    except Exception as err:  # noqa: BLE001 - any simplifier failure: keep the plain graph
                        self.notes.append(f"{self.simplifier} failed ({type(err).__name__}: {err}); kept the "
                                          "unsimplified graph")
        return self._candidates


def prepare_export(path: str | os.PathLike, settings: ExportSettings = ExportSettings()) -> PreparedExport:
    """Load ``path``, run the training form once in float64 on the verification inputs, and fold (verified):
    what :func:`export_prepared` needs for every format and precision of one checkpoint (the settings' load,
    batch, imgsz, data, seed, layout and graph fields are used; format and precision are each export's)."""
    load, batch, imgsz, data, seed = settings.load, settings.batch, settings.imgsz, settings.data, settings.seed
    dynamic = settings.dynamic
    timings: dict[str, float] = {}
    clock = StepClock(timings)
    with clock("load"):
        model, ckpt = load.load(path)
    input_size = getattr(model, "input_size", None)
    if input_size is None:
        raise XvolError(f"{ckpt.label}: the model records no input size (channels, height, width), so xvol cannot "
                        "build its export input. Give the model an input_size attribute in its factory.")
    channels = input_size[0]
    height, width = imgsz or input_size[1:]
    shape = (batch, channels, height, width)
    check_batch_fits(model, shape, f"exporting {ckpt.label} at batch {batch} ({'x'.join(map(str, shape))})",
                     "Export at a smaller --batch (or with --dynamic, which takes any batch).")
    data_in, used_seed = prepare_inputs((channels, height, width), ckpt.label, data,
                                        InputShape((max(batch, 2), channels, height, width)), seed)
    if data is not None and not dynamic and tuple(data_in.inputs.shape[2:]) != (height, width):
        raise XvolError(f"{data}: images of size {tuple(data_in.inputs.shape[2:])} do not fit a graph exported at "
                        f"{height}x{width}; pass --imgsz {height},{width} to match the data, or --dynamic.")
    with clock("reference"):  # the training form in float64, once for every check of this input set
        reference = Reference(model, data_in, "training form" if not ckpt.folded else "deploy form")
    prepared = PreparedExport(Path(path), ckpt, model, model, shape, reference, used_seed, settings.exporter,
                              settings.opset, dynamic, settings.simplify, settings.simplifier, notes=list(ckpt.notes),
                              timings=timings)
    deploy = model
    if ckpt.folded:
        prepared.notes.append("deploy checkpoint: exported as it is and verified against itself in float64 "
                              "(the training form is not in the file)")
    else:
        with clock("fold"):
            # Folded straight to fp32, the graph's precision: a half-precision checkpoint's fold is not rounded twice.
            deploy, deploy64, prepared.fold = fold_both(model, layout=settings.layout,
                                                        input_shape=(1, channels, height, width), dtype="fp32")
            prepared.fold_verification = verify_fold(reference, deploy, deploy64, seed=used_seed)
    # The graph is exported in fp32 (a half-precision deploy checkpoint is widened exactly); a precision
    # converts it. It gets the deploy blocks' fastest form for ONNX Runtime (same weights, same function).
    prepared.deploy_options = runtime_options(deploy, RuntimeTarget("onnxruntime", "cpu", batch, dynamic))
    prepared.deploy = set_runtime_options(deploy, **prepared.deploy_options).float()
    return prepared


def export_prepared(prepared: PreparedExport, output: str | os.PathLike, settings: ExportSettings = ExportSettings(),
                    calibration: np.ndarray | None = None) -> ExportResult:
    """One format and precision of a prepared checkpoint: convert, verify against the shared reference, write.

    The graph is exported and simplified once per :class:`PreparedExport`; the reference's baseline of
    each precision is computed once too. From ``settings`` it takes the format, precision, int8 options,
    tolerance, engine settings and force; ``calibration`` holds the int8 calibration images.
    """
    format, precision, int8, tolerance = settings.format, settings.precision, settings.int8, settings.tolerance
    force, engine = settings.force, settings.engine
    output = Path(output)
    timings = dict(prepared.timings)
    clock = StepClock(timings)
    p = prepared
    result = ExportResult(str(p.path), p.ckpt.sha256 or "", str(output), format, precision, p.exporter, p.opset,
                          p.dynamic, p.shape, notes=list(p.notes), timings=timings, fold=p.fold,
                          fold_verification=p.fold_verification, deploy_options=dict(p.deploy_options))
    if not p.fold_passed:
        result.notes.append("the fold failed verification: nothing exported")
        return result
    candidates = p.candidates(clock)
    result.notes += [n for n in p.notes if n not in result.notes]
    in_graph = result.graph_precision
    for label, graph in candidates:
        if in_graph != "fp32":
            with clock(f"{in_graph} conversion"):
                graph = _apply_precision(graph, in_graph, calibration, int8, p.reference, result)
        with clock("verify"), onnx_graph.runnable(graph) as source:
            report = verify(p.reference, OnnxRuntimeRunner(source, f"ONNX {in_graph}"), tolerance=tolerance,
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
                                                      tolerance, p.seed)

    left = None
    if p.fold is not None:  # the BatchNorms the fold left, each with its reason
        reasons = {entry["name"]: entry["reason"] for entry in p.fold.left}
        left = {name: reasons.get(name, "left by the fold") for name in p.fold.remaining_batchnorms}
    result.graph = structure.graph_summary(graph, p.deploy, left, raw=candidates[-1][1])
    structural = structure.structural_failures(result.graph)
    result.failures += structural
    result.tensorrt_compatibility = _tensorrt_compatibility(graph)
    if result.tensorrt_compatibility["problems"]:
        result.notes.append(f"TensorRT would refuse this graph ({result.tensorrt_compatibility['problems'][0]}"
                            f"{', ...' if len(result.tensorrt_compatibility['problems']) > 1 else ''})")
        if format == "engine":
            result.failures.append("the graph uses what TensorRT's ONNX parser refuses: no engine can be built")
    if not result.passed:
        failed = [what for what, bad in (("verification", not all(r.passed for r in result.reports)),
                                          ("the structural check", bool(structural)),
                                          ("the TensorRT check", len(result.failures) > len(structural)))
                  if bad]
        result.notes.append(f"{' and '.join(failed)} failed: nothing written")
        return result

    result.metadata = _metadata(p.ckpt, result)
    onnx_graph.set_metadata(graph, result.metadata)
    if format == "openvino":
        return save_openvino_ir(graph, output, p.reference, tolerance, p.seed, force, result, clock)
    onnx_output = output.with_suffix(".onnx") if format == "engine" else output
    with clock("save"):
        result.files = [str(q) for q in onnx_graph.save_onnx(graph, onnx_output, force)]
    result.written = True
    if format == "engine":
        with clock("engine"):
            add_engine(result, onnx_output, output, engine or EngineSettings(batch=p.shape[0]), p.reference,
                        tolerance, p.seed, force)
    return result


def add_engine(result: ExportResult, onnx_path: Path, output: Path, engine: EngineSettings, reference: Reference,
               tolerance: Tolerance | None, seed: int | None, force: bool) -> None:
    """Build the engine of the verified graph at ``onnx_path`` into ``output``, judged against ``reference``;
    its checks, failures and files go into ``result``."""
    report, result.engine, failures, files = engine_step.build_verified_engine(
        onnx_path, output, engine, reference, tolerance, seed, force)
    result.engine_verification = report
    result.failures += failures
    result.files += [str(f) for f in files]
    if not files:
        result.notes.append("the engine failed its checks: no engine written")


def _export_graph_engine(path: Path, output: str | os.PathLike | None, engine: EngineSettings,
                         data: str | os.PathLike | None, seed: int | None, tolerance: Tolerance | None,
                         force: bool) -> ExportResult:
    """An engine from an existing ONNX graph, judged against the graph run on ONNX Runtime."""
    if not path.is_file():
        raise XvolError(f"{path}: no such file. Check the path (relative paths start from the current folder).")
    graph = onnx.load(str(path), load_external_data=False)
    precision = graph_info.graph_precision(graph)
    output = Path(output) if output is not None else path.with_suffix(".engine")
    for target in engine_step.engine_files(output):
        check_output_path(target, force)
    size = onnx_input_size(path)
    batch = engine.batch
    data_in, used_seed = prepare_inputs(size, str(path), data, InputShape((batch, *size)) if size else None, seed)
    result = ExportResult(str(path), sha256_file(path), str(output), "engine", precision, "", 0, False,
                          tuple(data_in.inputs.shape))
    result.tensorrt_compatibility = _tensorrt_compatibility(graph)
    reference = Reference(OnnxRuntimeRunner(path, "ONNX graph"), data_in, "ONNX graph")
    result.notes.append("judged against the ONNX graph on ONNX Runtime (the training form is not in an ONNX file)")
    add_engine(result, path, output, engine, reference, tolerance, used_seed, force)
    result.written = bool(result.files)
    return result


def _tensorrt_compatibility(graph: onnx.ModelProto) -> dict:
    return compatibility_report(graph)


def save_openvino_ir(graph: onnx.ModelProto, output: Path, reference: Reference, tolerance: Tolerance | None,
                     seed: int | None, force: bool, result: ExportResult, clock: StepClock) -> ExportResult:
    """Convert the verified graph to IR beside ``output``, judge the IR on OpenVINO, then move it into place.

    The IR records the precision OpenVINO is to compute it in (``xvol/inference_precision``: bf16 for
    ``--precision bf16``, else fp32); it is run as any runner opening it will run it (that recorded
    precision) and judged by the gate of what OpenVINO really computed in (bf16: the training form's
    bf16 baseline).
    """
    inference = "bf16" if result.precision == "bf16" else "fp32"
    result.metadata[openvino_ir.INFERENCE_PRECISION_KEY] = inference
    staging = openvino_ir.staging_folder(output)
    try:
        with clock("openvino"):
            staged = staging / output.name
            openvino_ir.save_ir(graph, staged, result.metadata)
            runner = OpenVinoRunner(staged, f"OpenVINO IR {result.precision}")  # the IR's recorded precision
            result.ir_verification = verify(reference, runner, tolerance=tolerance, seed=seed)
            result.inference_precision = PRECISION_OF_HINT.get(runner.compiled_precision, runner.compiled_precision)
        if result.inference_precision != inference:
            result.notes.append(f"the IR records {inference} for OpenVINO, but its CPU plugin computes "
                                f"{result.inference_precision} on this processor: verified as it ran here")
        if not result.ir_verification.passed:
            result.notes.append("the OpenVINO IR failed verification: nothing written")
            return result
        with clock("save"):
            result.files = [str(p) for p in openvino_ir.move_into_place(staged, output, force)]
        result.written = True
        return result
    finally:
        openvino_ir.remove(staging)


def _check_choices(format: str, precision: str, simplifier: str, batch: int, imgsz) -> None:
    if format not in FORMATS:
        raise XvolError(f"Unknown format '{format}'. Choose one of: {', '.join(FORMATS)}.")
    missing = BACKENDS["openvino"].unavailable() if format == "openvino" else None
    if missing:
        raise XvolError(f"--format openvino: {missing}.")
    if precision in INFERENCE_ONLY_PRECISIONS and format != "openvino":
        raise XvolError(f"--precision {precision} is a precision OpenVINO computes in, not one of a graph: use it with "
                        f"--format openvino (an fp32 IR that OpenVINO runs in {precision}). For a half-precision ONNX "
                        "graph, export --precision fp16.")
    if precision not in PRECISIONS + INFERENCE_ONLY_PRECISIONS:
        raise XvolError(f"Unknown precision '{precision}'. Choose one of: {', '.join(PRECISIONS)} (in the graph), or "
                        f"{', '.join(INFERENCE_ONLY_PRECISIONS)} with --format openvino (OpenVINO computes an fp32 IR "
                        "in it).")
    if simplifier not in onnx_graph.SIMPLIFIERS:
        raise XvolError(f"Unknown simplifier '{simplifier}'. Choose one of: {', '.join(onnx_graph.SIMPLIFIERS)}.")
    if batch < 1:
        raise XvolError(f"--batch must be at least 1, got {batch}.")
    if imgsz is not None and (len(imgsz) != 2 or min(imgsz) < 1):
        raise XvolError(f"--imgsz must be one or two positive sizes (224 or 224,320), got {imgsz}.")


def _load_calibration(calib: str | os.PathLike, channels: int) -> np.ndarray:
    images = load_npz(calib).inputs.numpy()
    if images.ndim != 4 or images.shape[1] != channels:
        raise XvolError(
            f"{calib}: calibration images of shape {images.shape} do not fit the model, which takes {channels} "
            f"channel(s): the 'input' array must be N x {channels} x H x W, preprocessed like the model's inputs."
        )
    return images


def _apply_precision(graph: onnx.ModelProto, precision: str, calibration: np.ndarray | None, int8: Int8Options,
                     reference: Reference, result: ExportResult) -> onnx.ModelProto:
    if precision == "fp16":
        return onnx_graph.check_graph(precision_step.to_fp16(graph))
    layout = int8.layout(result.format)
    result.int8 = {"method": int8.method, "calibration_images": len(calibration), "layout": layout.to_dict()}
    if not int8.sensitivity and int8.budget is None:
        return onnx_graph.check_graph(precision_step.to_int8_qdq(graph, calibration, onnx_graph.INPUT_NAME,
                                                                 calibrate_method=int8.method, layout=layout))
    inputs = reference.data.inputs.numpy()
    first = next(iter(reference.truth.values))  # int8 accuracy is measured on the graph's first output
    truth = reference.truth.values[first]
    if len(reference.truth.values) > 1:
        result.notes.append(f"int8 sensitivity and fallback measured on the first output, '{first}'")
    sensitivity = int8_step.layer_sensitivity(graph, calibration, inputs, truth, method=int8.method,
                                              input_name=onnx_graph.INPUT_NAME, layout=layout)
    result.int8.update(sensitivity=sensitivity.to_dict(), measured_on=reference.data.source)
    if int8.budget is None:
        return onnx_graph.check_graph(sensitivity.base.variant())  # calibrated once, for the report too
    fallback = int8_step.quantize_with_fallback(graph, calibration, inputs, truth, int8.budget, method=int8.method,
                                                input_name=onnx_graph.INPUT_NAME, sensitivity=sensitivity,
                                                layout=layout)
    result.int8["fallback"] = fallback.to_dict()
    if not fallback.met:
        result.failures.append(f"--accuracy-budget: {fallback.summary()}")
    return onnx_graph.check_graph(fallback.graph)


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
        "xvol.version": xvol_export.__version__,
        "xvol.source_sha256": ckpt.sha256 or "",
        "xvol.architecture": ckpt.architecture,
        "xvol.config": json.dumps(ckpt.config),
        "xvol.fold_layout": json.dumps(layouts),
        "xvol.deploy_options": json.dumps(result.deploy_options),
        "xvol.precision": result.graph_precision,
        "xvol.exporter": f"{result.exporter} (opset {result.opset})",
        "xvol.simplifier": result.simplifier or "none",
        INPUT_SHAPE_KEY: "x".join(map(str, result.input_shape)),
        "xvol.dynamic": json.dumps(result.dynamic),
        "xvol.verified": json.dumps(result.verification.summary()),
    } | ({CALIBRATION_KEY: json.dumps({"method": result.int8["method"],
                                               "images": result.int8["calibration_images"]}),
          INT8_LAYOUT_KEY: json.dumps(result.int8["layout"])}
         if result.int8 else {})


"""The export formats as a table: one row per format with the files it writes, the precisions it takes, the
runtime its int8 graph is laid out for, what it needs on this machine, and its maker.

A maker turns a verified ONNX graph into the format's artifact, checks it where it runs, and moves it into
place only when it passed; it answers with :class:`Made` (files, checks, failures, notes, details), which the
job records. Adding a format is adding a row.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import onnx

from xvol_export.backends import BACKENDS
from xvol_export.cleanup import staged
from xvol_export.compare import Tolerance
from xvol_export.export import engine as engine_step
from xvol_export.export import onnx_graph, openvino_ir
from xvol_export.export.int8 import TARGET_OF_FORMAT
from xvol_export.metadata_keys import INFERENCE_PRECISION
from xvol_export.runners import OpenVinoRunner
from xvol_export.runners.openvino_runner import PRECISION_OF_HINT
from xvol_export.tensorrt.build import EngineSettings
from xvol_export.tensorrt.environment import engine_build_missing
from xvol_export.utils import StepClock
from xvol_export.verify import Reference, VerifyReport, verify

GRAPH_PRECISIONS = ("fp32", "fp16", "int8")  # in the graph
# --format openvino only: the graph and IR stay fp32, the IR records that OpenVINO computes it in bf16
INFERENCE_ONLY_PRECISIONS = ("bf16",)


@dataclass
class MakeJob:
    """What a maker needs besides the graph: the shared reference, the gate, and where its time goes."""

    reference: Reference
    precision: str
    metadata: dict[str, str]
    tolerance: Tolerance | None = None
    seed: int | None = None
    force: bool = False
    engine: EngineSettings | None = None  # --format engine: TensorRT's build settings
    clock: StepClock = field(default_factory=lambda: StepClock({}))


@dataclass
class Made:
    """What a maker did: ``files`` written (``written``: the artifact, or a graph it rests on, is in place),
    ``checks`` (the result's report fields, by name), ``details`` (other result fields), failures and notes."""

    files: list[Path] = field(default_factory=list)
    written: bool = False
    checks: dict[str, VerifyReport | None] = field(default_factory=dict)
    details: dict = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def then(self, other: Made) -> Made:
        """This step followed by ``other`` (written stays true once anything was)."""
        return Made([*self.files, *other.files], self.written or other.written, {**self.checks, **other.checks},
                    {**self.details, **other.details}, [*self.failures, *other.failures], [*self.notes, *other.notes])


def make_onnx(graph: onnx.ModelProto, output: Path, job: MakeJob) -> Made:
    """The verified graph, written at ``output``."""
    with job.clock("save"):
        return Made(onnx_graph.save_onnx(graph, output, job.force), written=True)


def make_openvino(graph: onnx.ModelProto, output: Path, job: MakeJob) -> Made:
    """Convert the verified graph to IR beside ``output``, judge the IR on OpenVINO, then move it into place.

    The IR records the precision OpenVINO is to compute it in (``xvol/inference_precision``: bf16 for
    ``--precision bf16``, else fp32); it is run as any runner opening it will run it (that recorded
    precision) and judged by the gate of what OpenVINO really computed in (bf16: the training form's
    bf16 baseline).
    """
    inference = "bf16" if job.precision == "bf16" else "fp32"
    metadata = {**job.metadata, INFERENCE_PRECISION: inference}
    made = Made(details={"metadata": metadata})
    with staged(output) as aside:
        with job.clock("openvino"):
            openvino_ir.save_ir(graph, aside, metadata)
            runner = OpenVinoRunner(aside, f"OpenVINO IR {job.precision}")  # the IR's recorded precision
            report = verify(job.reference, runner, tolerance=job.tolerance, seed=job.seed)
            computed = PRECISION_OF_HINT.get(runner.compiled_precision, runner.compiled_precision)
        made.checks["ir_verification"] = report
        made.details["inference_precision"] = computed
        if computed != inference:
            made.notes.append(f"the IR records {inference} for OpenVINO, but its CPU plugin computes {computed} on "
                              "this processor: verified as it ran here")
        if not report.passed:
            made.notes.append("the OpenVINO IR failed verification: nothing written")
            return made
        with job.clock("save"):
            made.files = openvino_ir.move_into_place(aside, output, job.force)
        made.written = True
        return made


def make_engine_from_file(onnx_path: Path, output: Path, job: MakeJob) -> Made:
    """The engine of the verified graph at ``onnx_path``, built into ``output`` and judged against the reference."""
    with job.clock("engine"):
        report, summary, failures, files = engine_step.build_verified_engine(
            onnx_path, output, job.engine, job.reference, job.tolerance, job.seed, job.force)
    notes = [] if files else ["the engine failed its checks: no engine written"]
    return Made(list(files), bool(files), {"engine_verification": report}, {"engine": summary}, failures, notes)


def make_engine(graph: onnx.ModelProto, output: Path, job: MakeJob) -> Made:
    """The verified graph written beside the engine (``NAME.onnx``: the engine is rebuilt from it on other GPU
    types), then its engine."""
    graph_made = make_onnx(graph, output.with_suffix(".onnx"), job)
    return graph_made.then(make_engine_from_file(output.with_suffix(".onnx"), output, job))


@dataclass(frozen=True)
class Format:
    """One export format: ``suffix`` of its main file, ``files`` it writes for an output, ``precisions`` it takes,
    ``int8_target`` (the runtime its int8 graph is laid out for), ``missing`` (why this machine cannot make it,
    or None, ``runtime`` naming what it needs), ``make`` (a verified graph -> the artifact, checked),
    ``make_from_file`` (the same from a verified graph already written; None for ONNX itself), and ``tensorrt``:
    its graph goes through TensorRT's ONNX parser, built with :class:`EngineSettings` (checked with them, before
    any work)."""

    name: str
    suffix: str
    files: Callable[[Path], list[Path]]
    precisions: tuple[str, ...]
    int8_target: str
    missing: Callable[[], str | None]
    runtime: str
    make: Callable[[onnx.ModelProto, Path, MakeJob], Made]
    make_from_file: Callable[[Path, Path, MakeJob], Made] | None = None
    tensorrt: bool = False


def make_openvino_from_file(onnx_path: Path, output: Path, job: MakeJob) -> Made:
    """:func:`make_openvino` of the verified graph written at ``onnx_path``."""
    return make_openvino(onnx.load(str(onnx_path)), output, job)


FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("onnx", ".onnx", lambda out: [out], GRAPH_PRECISIONS, TARGET_OF_FORMAT["onnx"], lambda: None,
           "ONNX Runtime", make_onnx),
    Format("openvino", ".xml", lambda out: list(openvino_ir.ir_files(out)),
           GRAPH_PRECISIONS + INFERENCE_ONLY_PRECISIONS, TARGET_OF_FORMAT["openvino"],
           BACKENDS["openvino"].unavailable, "OpenVINO", make_openvino, make_openvino_from_file),
    Format("engine", ".engine", lambda out: [*engine_step.engine_files(out), out.with_suffix(".onnx")],
           GRAPH_PRECISIONS, TARGET_OF_FORMAT["engine"], engine_build_missing, "TensorRT", make_engine,
           make_engine_from_file, tensorrt=True),
)}


def output_for(path: str | os.PathLike, precision: str, format: str = "onnx") -> Path:
    """``model.pth`` -> ``model.onnx`` (``model.fp16.onnx``, ``model.int8.onnx``; the format's suffix)."""
    path = Path(path)
    tag = "" if precision == "fp32" else f".{precision}"
    return path.with_name(f"{path.stem}{tag}{FORMATS[format].suffix}")

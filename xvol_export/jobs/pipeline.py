"""The pipeline job: load, fold and run the reference once, then every format and precision, then bench.

Every graph is exported from one :class:`~xvol_export.jobs.export.PreparedExport` (one load, one fold,
one float64 reference, one export and simplification); each precision's ONNX graph is verified and
written, and the OpenVINO IR and TensorRT engine of that precision are made from the written graph
and judged against the same reference.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from xvol_export.checkpoint import LoadOptions
from xvol_export.errors import XvolError
from xvol_export.export import onnx_graph
from xvol_export.export.formats import FORMATS, GRAPH_PRECISIONS, MakeJob
from xvol_export.export.int8 import Int8Options, load_calibration, parse_budget
from xvol_export.golden import GOLDEN_NAME, save_golden
from xvol_export.io import check_output_path
from xvol_export.jobs.bench import BenchReport, BenchSettings, bench_artifacts
from xvol_export.jobs.export import (
    ExportResult,
    ExportSettings,
    PreparedExport,
    default_export_output,
    export_prepared,
    prepare_export,
)
from xvol_export.pipeline.manifest import MANIFEST, write_manifest
from xvol_export.results import JobResult
from xvol_export.tensorrt.build import EngineSettings
from xvol_export.utils import StepClock


@dataclass(frozen=True)
class PipelineSettings:
    """What a pipeline makes and how: the same fields as ``xvol pipeline``'s options and its config file."""

    formats: tuple[str, ...] = ("onnx",)
    precisions: tuple[str, ...] = ("fp32",)
    calib: str | None = None
    data: str | None = None
    seed: int = 0  # fixed by default: two runs make the same artifacts
    bench: bool = False
    require: tuple[str, ...] = ()  # formats that must be made here (engine: fail instead of skipping)
    batch: int = 1
    imgsz: tuple[int, int] | None = None
    dynamic: bool = False
    opset: int = onnx_graph.DEFAULT_OPSET
    exporter: str = "torchscript"
    simplify: bool = True
    simplifier: str = "onnxslim"
    layout: str = "auto"
    calib_method: str = "minmax"
    int8_target: str = "auto"  # the ONNX int8 graph's runtime (the IR and the engine each get their own layout)
    int8_weight_bits: str = "auto"
    int8_fallback: bool = False
    accuracy_budget: str = "cosine=0.99"
    bench_iterations: int = 50
    bench_batches: tuple[int, ...] = (1,)
    # how to read the checkpoint, TensorRT's build options, and whether to overwrite: options of the run, not fields
    # of a config file
    load: LoadOptions = field(default=LoadOptions(), metadata={"config": False})
    engine: EngineSettings | None = field(default=None, metadata={"config": False})
    force: bool = field(default=False, metadata={"config": False})

    def check(self) -> None:
        """:class:`XvolError` for a request no run could satisfy, before any work."""
        for name, values, choices in (("formats", self.formats, tuple(FORMATS)),
                                      ("precisions", self.precisions, GRAPH_PRECISIONS),
                                      ("require", self.require, tuple(FORMATS))):
            unknown = [v for v in values if v not in choices]
            if unknown or (name != "require" and not values):
                raise XvolError(f"--{name}: {', '.join(unknown) or 'nothing given'}; choose from "
                                f"{', '.join(choices)}.")
        missing = [f for f in self.require if f not in self.formats]
        if missing:
            raise XvolError(f"--require {','.join(missing)}: not among --formats {','.join(self.formats)}.")
        if "int8" in self.precisions and self.calib is None:
            raise XvolError("--precisions int8 needs calibration images: pass --calib FILE.npz with an 'input' array.")
        if self.int8_fallback and self.data is None:
            raise XvolError("--int8-fallback measures the int8 graphs on real images: pass --data FILE.npz with "
                            "held-out inputs.")
        self.int8_options()  # the int8 choices and the budget, checked before any work
        if self.engine is not None:
            self.engine_settings().check()
        if not 0 <= self.seed < 2**32:
            raise XvolError(f"--seed must be from 0 to {2**32 - 1}, got {self.seed}.")
        other = [b for b in self.bench_batches if b != self.batch]
        if self.bench and other and not self.dynamic:
            raise XvolError(f"bench_batches {','.join(map(str, other))}: the graphs are exported at the fixed batch "
                            f"{self.batch}; pass --dynamic to time other batches, or bench batch {self.batch} only.")
        if not 1 <= self.bench_iterations <= 1_000_000:
            raise XvolError(f"bench_iterations must be from 1 to 1000000, got {self.bench_iterations}.")

    def int8_options(self) -> Int8Options:
        """The int8 options of every int8 graph this pipeline makes (each format its own target unless the ONNX
        graph's is given), checked as they are made."""
        budget = parse_budget(self.accuracy_budget) if self.int8_fallback else None
        return Int8Options(method=self.calib_method, budget=budget, target=self.int8_target,
                           weight_bits=str(self.int8_weight_bits))

    def engine_settings(self) -> EngineSettings:
        """How every engine is built: ``engine``'s options at this pipeline's batch and image size."""
        return dataclasses.replace(self.engine or EngineSettings(), batch=self.batch, imgsz=self.imgsz)

    def to_dict(self) -> dict:
        """The config-file fields (what the manifest records)."""
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in config_fields()}

    @classmethod
    def from_sources(cls, config: str | os.PathLike | None = None, **given) -> "PipelineSettings":
        """The config file's fields (see :func:`load_config`), overridden by ``given`` values that are not None."""
        values = load_config(config) if config is not None else {}
        values.update({k: v for k, v in given.items() if v is not None})
        return cls(**values)


def config_fields() -> list[dataclasses.Field]:
    """The fields of :class:`PipelineSettings` a config file (and the manifest) holds."""
    return [f for f in dataclasses.fields(PipelineSettings) if f.metadata.get("config", True)]


def load_config(path: str | os.PathLike) -> dict:
    """The pipeline fields of a TOML file (top level, or a ``[pipeline]`` table), checked against the fields
    :class:`PipelineSettings` has. Lists may be TOML arrays or comma-separated strings."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib

    path = Path(path)
    if not path.is_file():
        raise XvolError(f"{path}: no such config file.")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise XvolError(f"{path}: is not a readable TOML file ({err}).") from None
    data = data.get("pipeline", data)
    known = {f.name: f for f in config_fields()}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise XvolError(f"{path}: unknown field(s) {', '.join(unknown)}; the fields are {', '.join(known)}.")
    values = {}
    for name, value in data.items():
        default = known[name].default
        if isinstance(default, tuple) or name == "imgsz":
            items = [v.strip() for v in value.split(",")] if isinstance(value, str) else value
            if not isinstance(items, list):
                raise XvolError(f"{path}: '{name}' must be a list or a comma-separated string, got {value!r}.")
            value = tuple(int(v) if name in ("bench_batches", "imgsz") else str(v) for v in items)
        elif isinstance(default, bool) and not isinstance(value, bool):
            raise XvolError(f"{path}: '{name}' must be true or false, got {value!r}.")
        elif isinstance(default, int) and not isinstance(default, bool) and not isinstance(value, int):
            raise XvolError(f"{path}: '{name}' must be an integer, got {value!r}.")
        values[name] = value
    return values


@dataclass(kw_only=True)
class PipelineResult(JobResult):
    """Everything a pipeline made and checked: the exports (one per format and precision), what was skipped
    and why, the benchmark, and the failures; ``files`` are the exports' files (the manifest is written apart,
    at ``manifest``, its content in ``manifest_content``). Its JSON lists the fields in the order declared."""

    source: str
    out_dir: str
    settings: PipelineSettings
    seed: int | None = None
    exports: list[ExportResult] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)  # {"stage", "reason"}
    bench: list[BenchReport] = field(default_factory=list)  # the CPU artifacts; the engines on the GPU
    failures: list[str] = field(default_factory=list)
    golden: str | None = None  # the golden file, for `xvol verify ARTIFACT --golden` on the deployment host
    manifest: str | None = field(default=None, metadata={"json": False})
    manifest_content: dict | None = field(default=None, repr=False, metadata={"json": False})

    @property
    def passed(self) -> bool:
        return not self.failures and all(e.passed for e in self.exports)

    def failure_summary(self) -> str:
        parts = list(self.failures)
        parts += [f"{e.format} {e.precision}: {e.failure_summary()}" for e in self.exports if not e.passed]
        return "; ".join(parts)


def run_pipeline(checkpoint: str | os.PathLike, out_dir: str | os.PathLike,
                 settings: PipelineSettings = PipelineSettings()) -> PipelineResult:
    """Make and prove every requested format and precision of ``checkpoint`` in ``out_dir``; see the module."""
    settings.check()
    force = settings.force
    out = Path(out_dir)
    if not out.parent.is_dir():
        raise XvolError(f"{out}: its folder '{out.parent}' does not exist. Create it first or choose another --out.")
    if out.exists() and not out.is_dir():
        raise XvolError(f"{out}: is a file; --out names a folder for the artifacts and the manifest.")
    result = PipelineResult(source=str(checkpoint), out_dir=str(out), settings=settings)
    formats = _available_formats(settings, result)
    planned = _planned_files(Path(checkpoint), out, settings.precisions, formats)
    out.mkdir(exist_ok=True)
    for path in [*planned, out / GOLDEN_NAME, out / MANIFEST]:
        check_output_path(path, force)
    clock = StepClock(result.timings)

    export = ExportSettings(batch=settings.batch, imgsz=settings.imgsz, data=settings.data, seed=settings.seed,
                            layout=settings.layout, exporter=settings.exporter, opset=settings.opset,
                            dynamic=settings.dynamic, simplify=settings.simplify, simplifier=settings.simplifier,
                            force=force, load=settings.load, int8=settings.int8_options())
    prepared = prepare_export(checkpoint, export)
    result.seed = prepared.seed
    result.timings.update(prepared.timings)
    calibration = load_calibration(settings.calib, prepared.shape[1]) if "int8" in settings.precisions else None
    for precision in settings.precisions:
        before = set(result.timings)
        graph_output = out / default_export_output(Path(checkpoint), precision).name
        exported = export_prepared(prepared, graph_output, dataclasses.replace(export, precision=precision),
                                   calibration)
        result.exports.append(exported)
        result.timings.update({f"{precision} {k}": v for k, v in exported.timings.items()
                               if k not in prepared.timings and k not in before})
        if not exported.written:
            continue
        graph_path = Path(exported.files[0])
        for fmt in formats:
            with clock(f"{precision} {fmt}"):
                if precision == "int8" and exported.int8["layout"]["target"] != FORMATS[fmt].int8_target:
                    result.exports.append(_int8_for(fmt, graph_path, prepared, export, calibration, settings))
                else:
                    result.exports.append(_from_graph(fmt, exported, graph_path, prepared, settings))
    if result.passed:
        with clock("golden file"):
            result.golden = str(save_golden(out / GOLDEN_NAME, prepared.reference, settings.precisions, force))
    if settings.bench and result.passed:
        with clock("bench"):
            result.bench = _bench(result, formats, settings)
    result.files = [f for e in result.exports for f in e.files] + ([result.golden] if result.golden else [])
    path, result.manifest_content = write_manifest(result, force)
    result.manifest = str(path)
    return result


def _int8_for(fmt: str, graph_path: Path, prepared: PreparedExport, export: ExportSettings, calibration,
              settings: PipelineSettings) -> ExportResult:
    """An int8 IR or engine laid out for its own runtime, quantized (and, with a budget, fallen back) for it: an
    OpenVINO IR from the fp32 graph quantized for OpenVINO; an engine from a TensorRT-layout graph written
    beside the ONNX Runtime one (``NAME.int8.tensorrt.onnx``)."""
    int8 = dataclasses.replace(export.int8, target=FORMATS[fmt].int8_target)
    if fmt == "openvino":
        return export_prepared(prepared, graph_path.with_suffix(".xml"),
                               dataclasses.replace(export, format="openvino", precision="int8", int8=int8), calibration)
    trt_graph = graph_path.with_name(f"{graph_path.stem}.tensorrt.onnx")
    graph = export_prepared(prepared, trt_graph, dataclasses.replace(export, precision="int8", int8=int8),
                            calibration)
    if not graph.written:
        return graph
    engine_path = graph_path.with_suffix(".engine")
    engine = dataclasses.replace(graph, format="engine", output=str(engine_path))  # the graph's files stay listed
    engine.record(FORMATS["engine"].make_from_file(trt_graph, engine_path, MakeJob(
        prepared.reference, "int8", graph.metadata, None, prepared.seed, export.force, settings.engine_settings())))
    engine.written = bool(engine.files)
    return engine


def _available_formats(settings: PipelineSettings, result: PipelineResult) -> list[str]:
    """The formats beyond ONNX this machine can make; the others are skipped (or, when required, failed)."""
    formats = []
    for fmt in settings.formats:
        if fmt == "onnx":
            continue
        missing = FORMATS[fmt].missing()
        if missing is None:
            formats.append(fmt)
        elif fmt in settings.require:
            result.failures.append(f"{fmt}: required (--require {fmt}) but cannot be made here: {missing}")
        else:
            result.skipped.append({"stage": fmt, "reason": f"skipped: no {FORMATS[fmt].runtime} on this machine "
                                                           f"({missing})"})
    return formats


def _planned_files(checkpoint: Path, out: Path, precisions: tuple[str, ...], formats: list[str]) -> list[Path]:
    files = []
    for precision in precisions:
        graph = out / default_export_output(checkpoint, precision).name
        files.append(graph)
        for fmt in formats:
            files += [f for f in FORMATS[fmt].files(graph.with_suffix(FORMATS[fmt].suffix)) if f != graph]
            if precision == "int8" and FORMATS[fmt].tensorrt:  # its own TensorRT-layout graph
                files.append(graph.with_name(f"{graph.stem}.tensorrt.onnx"))
    return files


def _from_graph(fmt: str, exported: ExportResult, graph_path: Path, prepared: PreparedExport,
                settings: PipelineSettings) -> ExportResult:
    """The OpenVINO IR or TensorRT engine of a written, verified graph, judged against the same reference: a
    result of its own, carrying the graph's record."""
    output = graph_path.with_suffix(FORMATS[fmt].suffix)
    derived = exported.for_artifact(fmt, output)
    job = MakeJob(prepared.reference, exported.precision, derived.metadata, None, prepared.seed, settings.force,
                  settings.engine_settings(), StepClock(derived.timings))
    derived.record(FORMATS[fmt].make_from_file(graph_path, output, job))
    return derived


def _bench(result: PipelineResult, formats: list[str], settings: PipelineSettings) -> list[BenchReport]:
    """Everything made, timed interleaved: the graphs on ONNX Runtime (and OpenVINO) with the IR in one table;
    the engines, on the GPU, in another."""
    made = [e.output for e in result.exports if e.written]  # an int8 engine's files start with its graph
    cpu = [f for f in made if Path(f).suffix in (".onnx", ".xml")]
    engines = [f for f in made if Path(f).suffix == ".engine"]
    reports = []
    for artifacts, device, backends in ((cpu, "cpu", ["onnxruntime", *(["openvino"] if "openvino" in formats else [])]),
                                        (engines, "cuda", ["tensorrt"])):
        if artifacts:
            bench_settings = BenchSettings(device=device, batches=settings.bench_batches,
                                           iterations=settings.bench_iterations, warmup=5, seed=settings.seed,
                                           backend=",".join(backends))
            reports.append(bench_artifacts(artifacts, bench_settings))
    return reports

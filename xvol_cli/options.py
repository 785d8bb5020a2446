"""Options shared by several commands, declared once as groups (:mod:`xvol_cli.groups`), and their parsing into
library types."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from xvol_cli.groups import group
from xvol_export.compare import ERROR_STATS, Tolerance, parse_tolerance
from xvol_export.errors import XvolError
from xvol_export.inputs import InputShape, parse_shape
from xvol_export.io import check_outputs as io_check_outputs
from xvol_export.limits import check_output_name

if TYPE_CHECKING:
    from xvol_export.checkpoint import LoadOptions

JsonPath = Annotated[Optional[Path], typer.Option("--json", help="Also write the report as JSON to this file.")]
Force = Annotated[bool, typer.Option("--force", help="Overwrite existing output files.")]
Layout = Annotated[str, typer.Option(
    "--layout", help="Layout of folded blocks whose family has layouts (X-volution's: dense, split; see the "
    "families' own), or auto: per block, by the family's cost model.")]
InputShapeOpt = Annotated[Optional[str], typer.Option(
    "--input-shape", help="Input shape: 1x3x224x224, [1,3,224,224] or 1,3,224,224, optional 'name:' prefix.")]
Data = Annotated[Optional[Path], typer.Option(
    "--data", help=".npz with an 'input' array (and optional 'labels') to verify on instead of random inputs.")]
Seed = Annotated[Optional[int], typer.Option("--seed", help="Seed for random inputs (default: a fresh one, reported).")]
Atol = Annotated[Optional[float], typer.Option(
    "--atol", help="Absolute tolerance against the float64 reference; given, Polygraphy's check replaces the "
    "default scale-free gate.")]
Rtol = Annotated[Optional[float], typer.Option("--rtol", help="Relative tolerance (as --atol).")]
ErrorStat = Annotated[Optional[str], typer.Option(
    "--check-error-stat", help=f"Statistic checked against --atol/--rtol: {', '.join(ERROR_STATS)} "
    "(default elemwise; median for int8).")]
TrustPickle = Annotated[bool, typer.Option(
    "--trust-pickle", help="Allow checkpoints that need full unpickling (runs code from the file).")]
Arch = Annotated[Optional[str], typer.Option(
    "--arch", help="Registered architecture of a bare state dict (see 'xvol doctor'); as --model.")]
ArchConfig = Annotated[Optional[str], typer.Option(
    "--arch-config", help="Constructor arguments of --arch as JSON, e.g. '{\"num_classes\": 10}'.")]
ModelOpt = Annotated[Optional[str], typer.Option(
    "--model", help="The model of a state dict: a registered name, or your own package.module:factory (imported "
    "from the current folder or PYTHONPATH; needed again to read a checkpoint of it).")]
ModelKwargs = Annotated[Optional[str], typer.Option(
    "--model-kwargs", help="Arguments of --model as a JSON object, e.g. '{\"num_classes\": 10}'.")]
Ema = Annotated[bool, typer.Option("--ema", help="Use the EMA weights of a training checkpoint.")]
# The library's settings that these options give, by their Python names: its messages name the flags instead.
SETTING_FLAGS = {"model": "--model", "model_kwargs": "--model-kwargs", "arch": "--arch", "config": "--arch-config",
                 "trust_pickle": "--trust-pickle", "use_ema": "--ema", "layout": "--layout",
                 "calib_method": "--calib-method", "int8_target": "--int8-target",
                 "int8_weight_bits": "--int8-weight-bits"}


def check_outputs(force: bool, inputs: list[Path | None], **outputs: Path | None) -> None:
    """Refuse bad output paths before any work is done, so a failed run writes nothing: each keyword is an
    option's name (``json=`` for --json, ``save_inputs=`` for --save-inputs)."""
    named = {f"--{name.replace('_', '-')}": path for name, path in outputs.items()}
    for option, path in named.items():
        if path is not None:
            check_output_name(path, option)  # a name the file system cannot hold: refused, with the fix
    io_check_outputs(named, list(inputs), force)


def shape_option(text: str | None) -> InputShape | None:
    return None if text is None else parse_shape(text)


def imgsz_option(text: str | None) -> tuple[int, int] | None:
    """``224`` or ``224,320`` / ``224x320`` (height, width)."""
    if text is None:
        return None
    parts = [p.strip() for p in text.replace("x", ",").split(",")]
    if len(parts) not in (1, 2) or not all(p.isascii() and p.isdigit() and int(p) > 0 for p in parts):
        raise XvolError(f"Cannot read --imgsz '{text}'. Give one size (224) or height,width (224,320).")
    sizes = [int(p) for p in parts]
    return (sizes[0], sizes[-1])


def int_list_option(text: str, name: str) -> tuple[int, ...]:
    """``1,8,32`` -> ``(1, 8, 32)``: positive integers."""
    parts = [p.strip() for p in text.split(",")]
    if not all(p.isascii() and p.isdigit() and int(p) > 0 for p in parts):
        raise XvolError(f"Cannot read {name} '{text}'. Give positive integers separated by commas, e.g. 1,8,32.")
    return tuple(int(p) for p in parts)


def float_list_option(text: str, name: str) -> tuple[float, ...]:
    """``90,95,99.9`` -> ``(90.0, 95.0, 99.9)``: numbers within 0..100."""
    try:
        values = tuple(float(p) for p in text.split(","))
    except ValueError:
        values = ()
    if not values or not all(0 <= v <= 100 for v in values):
        raise XvolError(f"Cannot read {name} '{text}'. Give numbers from 0 to 100 separated by commas, e.g. 90,95,99.")
    return values


def layout_option(layout: str) -> str:
    from xvol_export.fold.family import layout_choices

    if layout not in layout_choices():
        raise XvolError(f"Unknown layout '{layout}'. Choose one of: {', '.join(layout_choices())}.")
    return layout


def tolerance_option(atol: float | None, rtol: float | None, stat: str | None,
                     precision: str = "fp32") -> Tolerance | None:
    """A Polygraphy tolerance when the user gave any of its options (the rest from the precision's
    defaults), else None: the default gate judges."""
    if (atol, rtol, stat) == (None, None, None):
        return None
    return parse_tolerance(precision, atol, rtol, stat)


def load_options(trust_pickle: bool, arch: str | None, arch_config: str | None, ema: bool,
                 model: str | None = None, model_kwargs: str | None = None) -> LoadOptions:
    from xvol_export.checkpoint import LoadOptions
    from xvol_export.models.spec import ModelSpec

    for option, text in (("--arch", arch), ("--model", model)):
        if text is not None:
            ModelSpec.parse(text, option)  # its syntax only: a factory is imported when the checkpoint is read
    return LoadOptions(trust_pickle=trust_pickle, arch=arch, config=_json_object(arch_config, "--arch-config"),
                       use_ema=ema, model=model, model_kwargs=_json_object(model_kwargs, "--model-kwargs"))


def _json_object(text: str | None, option: str) -> dict | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise XvolError(f"{option} is not valid JSON ({err}). Example: '{{\"num_classes\": 10}}'.") from None
    if not isinstance(value, dict):
        raise XvolError(f"{option} must be a JSON object, e.g. '{{\"num_classes\": 10}}'.")
    return value


def dtype_option(dtype: str | None) -> str | None:
    from xvol_export.checkpoint import DTYPES

    if dtype is not None and dtype not in DTYPES:
        raise XvolError(f"Unknown --dtype '{dtype}'. Choose one of: {', '.join(DTYPES)}.")
    return dtype


def int8_options(method: str, sensitivity: bool, fallback: bool, budget: str, target: str = "auto",
                 weight_bits: str = "auto"):
    """The library's ``Int8Options``, which checks every choice (its messages name this command line's flags)."""
    from xvol_export.jobs import Int8Options

    return Int8Options(method=method, sensitivity=sensitivity, budget=budget if fallback else None, target=target,
                       weight_bits=str(weight_bits))


def name_list_option(text: str | None) -> tuple[str, ...] | None:
    """``onnx,openvino`` -> ``("onnx", "openvino")``; None stays None (not given)."""
    if text is None:
        return None
    return tuple(part.strip() for part in text.split(",") if part.strip())


@dataclass(frozen=True)
class LoadRequest:
    """How the user asked checkpoints to be read; :meth:`options` makes the library's ``LoadOptions`` of it
    (and checks it), so that commands which read no checkpoint never load PyTorch."""

    trust_pickle: bool = False
    arch: str | None = None
    arch_config: str | None = None
    ema: bool = False
    model: str | None = None
    model_kwargs: str | None = None

    def options(self) -> LoadOptions:
        return load_options(self.trust_pickle, self.arch, self.arch_config, self.ema, self.model, self.model_kwargs)


def _load_group(trust_pickle: TrustPickle = False, arch: Arch = None, arch_config: ArchConfig = None,
                ema: Ema = False, model: ModelOpt = None, model_kwargs: ModelKwargs = None) -> LoadRequest:
    return LoadRequest(trust_pickle, arch, arch_config, ema, model, model_kwargs)


@dataclass(frozen=True)
class ToleranceRequest:
    """What the user gave of Polygraphy's tolerance options; :meth:`tolerance` completes it for a precision."""

    atol: float | None = None
    rtol: float | None = None
    stat: str | None = None

    def tolerance(self, precision: str = "fp32") -> Tolerance | None:
        return tolerance_option(self.atol, self.rtol, self.stat, precision)


def _tolerance_group(atol: Atol = None, rtol: Rtol = None, check_error_stat: ErrorStat = None) -> ToleranceRequest:
    return ToleranceRequest(atol, rtol, check_error_stat)


@dataclass(frozen=True)
class InputRequest:
    """Where verification inputs come from: ``data`` (.npz), else random ones drawn with ``seed``."""

    data: Path | None = None
    seed: int | None = None


def _inputs_group(data: Data = None, seed: Seed = None) -> InputRequest:
    return InputRequest(data, seed)


@dataclass(frozen=True)
class Int8Request:
    """What the user gave of the int8 options (None: not given, so a pipeline's config file may say it);
    :meth:`options` completes it with the defaults into the library's ``Int8Options``."""

    method: str | None = None
    sensitivity: bool = False
    fallback: bool = False
    budget: str | None = None
    target: str | None = None
    weight_bits: str | None = None

    def options(self):
        return int8_options(self.method or "minmax", self.sensitivity, self.fallback, self.budget or "cosine=0.99",
                            self.target or "auto", self.weight_bits or "auto")


CalibMethod = Annotated[Optional[str], typer.Option(
    "--calib-method", help="int8 calibration: minmax, entropy or percentile (ONNX Runtime's; default minmax).")]
Int8Sensitivity = Annotated[bool, typer.Option(
    "--int8-sensitivity", help="int8: report each layer's effect, quantized alone and left alone in float (needs "
    "--data).")]
Int8Fallback = Annotated[bool, typer.Option(
    "--int8-fallback", help="int8: keep the most sensitive layers in float until --accuracy-budget is met, measured "
    "on the runtime the graph is for (needs --data).")]
AccuracyBudgetOpt = Annotated[Optional[str], typer.Option(
    "--accuracy-budget", help="With --int8-fallback: cosine=0.99 or top1=0.99 against the float64 training form "
    "(default cosine=0.99).")]
Int8Target = Annotated[Optional[str], typer.Option(
    "--int8-target", help="The runtime the int8 graph is laid out for: tensorrt (s8 activations), onnxruntime (u8, "
    "integer kernels), openvino (u8); auto (default): the format's (an ONNX graph: onnxruntime).")]
Int8WeightBits = Annotated[Optional[str], typer.Option(
    "--int8-weight-bits", help="8, 7, or auto (default): 7 where the target's CPU kernels would saturate without "
    "VNNI on this machine's ISA (see xvol doctor).")]


def _int8_group(calib_method: CalibMethod = None, int8_sensitivity: Int8Sensitivity = False,
                int8_fallback: Int8Fallback = False, accuracy_budget: AccuracyBudgetOpt = None,
                int8_target: Int8Target = None, int8_weight_bits: Int8WeightBits = None) -> Int8Request:
    return Int8Request(calib_method, int8_sensitivity, int8_fallback, accuracy_budget, int8_target, int8_weight_bits)


@dataclass(frozen=True)
class GraphRequest:
    """How the ONNX graph is made, as the user gave it (None: not given, so the job's default or a pipeline's
    config file decides); :meth:`settings` gives the fields ``ExportSettings`` and ``PipelineSettings`` share."""

    opset: int | None = None
    exporter: str | None = None
    dynamic: bool | None = None
    batch: int | None = None
    imgsz: str | None = None
    simplify: bool | None = None
    simplifier: str | None = None

    def settings(self) -> dict[str, Any]:
        given = {"opset": self.opset, "exporter": self.exporter, "dynamic": self.dynamic, "batch": self.batch,
                 "imgsz": imgsz_option(self.imgsz), "simplify": self.simplify, "simplifier": self.simplifier}
        return {name: value for name, value in given.items() if value is not None}


Opset = Annotated[Optional[int], typer.Option(
    "--opset", help="ONNX opset (torchscript: 17-20, dynamo: 18-23; default 17).", show_default=False)]
Exporter = Annotated[Optional[str], typer.Option("--exporter", help="torchscript (default) or dynamo.")]
Dynamic = Annotated[Optional[bool], typer.Option(
    "--dynamic/--static", help="Symbolic batch, height and width (default static).", show_default=False)]
Batch = Annotated[Optional[int], typer.Option("--batch", help="Batch size of the graph (default 1).")]
Imgsz = Annotated[Optional[str], typer.Option(
    "--imgsz", help="Image size: 224 or 224,320 (H,W); default the model's.")]
Simplify = Annotated[Optional[bool], typer.Option(
    "--simplify/--no-simplify", help="Simplify the graph (default: simplify).", show_default=False)]
Simplifier = Annotated[Optional[str], typer.Option("--simplifier", help="onnxslim (default) or onnxsim.")]


def _graph_group(opset: Opset = None, exporter: Exporter = None, dynamic: Dynamic = None, batch: Batch = None,
                 imgsz: Imgsz = None, simplify: Simplify = None, simplifier: Simplifier = None) -> GraphRequest:
    return GraphRequest(opset, exporter, dynamic, batch, imgsz, simplify, simplifier)


@dataclass(frozen=True)
class EngineRequest:
    """TensorRT's build options as the user gave them; :meth:`settings` makes the library's ``EngineSettings``."""

    workspace: float | None = None
    opt_level: int | None = None
    min_shapes: tuple[str, ...] = ()
    opt_shapes: tuple[str, ...] = ()
    max_shapes: tuple[str, ...] = ()
    timing_cache: Path | None = None
    version_compatible: bool = False
    hardware_compat: str = "none"
    tf32: bool = False
    fp16_tactics: bool = False

    @property
    def given(self) -> bool:
        """Whether any option differs from its default."""
        return self != EngineRequest()

    def settings(self):
        from xvol_export.tensorrt.build import EngineSettings

        return EngineSettings(
            workspace_gib=self.workspace, opt_level=self.opt_level, min_shapes=self.min_shapes,
            opt_shapes=self.opt_shapes, max_shapes=self.max_shapes,
            timing_cache=str(self.timing_cache) if self.timing_cache else None,
            version_compatible=self.version_compatible, hardware_compat=self.hardware_compat, tf32=self.tf32,
            fp16_tactics=self.fp16_tactics)


Workspace = Annotated[Optional[float], typer.Option(
    "--workspace", help="engine: TensorRT's workspace memory limit, GiB (default: the GPU's).")]
OptLevel = Annotated[Optional[int], typer.Option(
    "--opt-level", help="engine: builder optimization level 0-5 (TensorRT's default 3).")]
MinShapes = Annotated[Optional[list[str]], typer.Option(
    "--min-shapes", help="engine: a profile's smallest input shape (input:1x3x224x224; name;name for several "
    "inputs); repeat for more profiles. Default: from --batch, --imgsz, --dynamic.")]
OptShapes = Annotated[Optional[list[str]], typer.Option(
    "--opt-shapes", help="engine: the shape each profile is tuned for (default: its max).")]
MaxShapes = Annotated[Optional[list[str]], typer.Option(
    "--max-shapes", help="engine: a profile's largest input shape.")]
TimingCache = Annotated[Optional[Path], typer.Option(
    "--timing-cache", help="engine: TensorRT timing cache, read if it exists and written after the build.")]
VersionCompatible = Annotated[bool, typer.Option(
    "--version-compatible", help="engine: runs on later TensorRT versions of the same major version.")]
HardwareCompat = Annotated[str, typer.Option(
    "--hardware-compat", help="engine: none (this GPU type), ampere+ (any Ampere or newer GPU), or same-cc "
    "(any GPU of this compute capability).")]
Tf32 = Annotated[bool, typer.Option("--tf32", help="engine: let fp32 layers use TF32 math.")]
Fp16Tactics = Annotated[bool, typer.Option(
    "--fp16-tactics", help="engine, fp32 graph, TensorRT 10 only: let TensorRT run layers in fp16 where faster "
    "(prefer --precision fp16).")]


def _engine_group(workspace: Workspace = None, opt_level: OptLevel = None, min_shapes: MinShapes = None,
                  opt_shapes: OptShapes = None, max_shapes: MaxShapes = None, timing_cache: TimingCache = None,
                  version_compatible: VersionCompatible = False, hardware_compat: HardwareCompat = "none",
                  tf32: Tf32 = False, fp16_tactics: Fp16Tactics = False) -> EngineRequest:
    return EngineRequest(workspace, opt_level, tuple(min_shapes or ()), tuple(opt_shapes or ()),
                         tuple(max_shapes or ()), timing_cache, version_compatible, hardware_compat, tf32,
                         fp16_tactics)


LOAD = group(_load_group)  # how to read a checkpoint
TOLERANCE = group(_tolerance_group)  # Polygraphy's tolerance, in place of the default gate
INPUTS = group(_inputs_group)  # the verification inputs
INT8 = group(_int8_group)  # how an int8 graph is made and for which runtime
GRAPH = group(_graph_group)  # how the ONNX graph is exported and simplified
ENGINE = group(_engine_group)  # how TensorRT builds an engine

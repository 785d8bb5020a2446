"""Options shared by several commands, and their parsing into library types."""

from __future__ import annotations

import functools
import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Callable, Optional

import typer

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
                 "trust_pickle": "--trust-pickle", "use_ema": "--ema", "layout": "--layout"}


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
    from xvol_export.export.precision import CALIBRATION_METHODS, INT8_TARGETS, WEIGHT_BITS
    from xvol_export.jobs.export import Int8Options

    if method not in CALIBRATION_METHODS:
        raise XvolError(f"Unknown --calib-method '{method}'. Choose one of: {', '.join(CALIBRATION_METHODS)}.")
    if target not in ("auto", *INT8_TARGETS):
        raise XvolError(f"Unknown --int8-target '{target}'. Choose one of: auto, {', '.join(INT8_TARGETS)}.")
    if str(weight_bits) not in WEIGHT_BITS:
        raise XvolError(f"Unknown --int8-weight-bits '{weight_bits}'. Choose one of: {', '.join(WEIGHT_BITS)}.")
    parsed = None
    if fallback:
        from xvol_export.export.int8 import parse_budget

        parsed = parse_budget(budget)
    return Int8Options(method=method, sensitivity=sensitivity, budget=parsed, target=target,
                       weight_bits=str(weight_bits))


def name_list_option(text: str | None) -> tuple[str, ...] | None:
    """``onnx,openvino`` -> ``("onnx", "openvino")``; None stays None (not given)."""
    if text is None:
        return None
    return tuple(part.strip() for part in text.split(",") if part.strip())


# ------------------------------------------------------------------------------------------ option groups

@dataclass(frozen=True)
class OptionGroup:
    """Options several commands take, declared once: ``options`` are the parameters a command gets in place of
    the group's one parameter, and ``build`` makes the library value the command receives from theirs."""

    options: tuple[inspect.Parameter, ...]
    build: Callable[..., Any]


def _group(build: Callable[..., Any]) -> OptionGroup:
    """A group from a builder whose parameters are the options (annotated with ``typer.Option``, with defaults)."""
    options = tuple(inspect.signature(build, eval_str=True).parameters.values())
    return OptionGroup(options, build)


def with_options(**groups: OptionGroup):
    """Decorator: each parameter of the command named like a keyword is replaced, on the command line, by that
    group's options; the command receives the group's built value under the parameter's name."""
    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(command, eval_str=True)
        unknown = set(groups) - set(signature.parameters)
        if unknown:
            raise TypeError(f"{command.__name__} has no parameter {', '.join(sorted(unknown))}")
        parameters: list[inspect.Parameter] = []
        for parameter in signature.parameters.values():
            parameters += groups[parameter.name].options if parameter.name in groups else [parameter]

        @functools.wraps(command)
        def run(**values):
            for name, group in groups.items():
                values[name] = group.build(**{o.name: values.pop(o.name) for o in group.options})
            return command(**values)

        run.__signature__ = signature.replace(parameters=parameters)  # what Typer reads
        run.__annotations__ = {p.name: p.annotation for p in parameters}
        return run

    return decorate


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


LOAD = _group(_load_group)  # how to read a checkpoint
TOLERANCE = _group(_tolerance_group)  # Polygraphy's tolerance, in place of the default gate
INPUTS = _group(_inputs_group)  # the verification inputs
INT8 = _group(_int8_group)  # how an int8 graph is made and for which runtime

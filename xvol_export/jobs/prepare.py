"""What every export of one checkpoint shares: the export's settings (checked before any work) and the prepared
checkpoint (loaded, folded and verified, its float64 reference run once, its graph exported once)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import onnx
from torch import nn

from xvol_export.checkpoint import Checkpoint, LoadOptions
from xvol_export.compare import Tolerance
from xvol_export.errors import XvolError
from xvol_export.export import onnx_graph
from xvol_export.export.formats import FORMATS, GRAPH_PRECISIONS, INFERENCE_ONLY_PRECISIONS
from xvol_export.export.int8 import Int8Options
from xvol_export.fold import FoldReport, RuntimeTarget, fold_both, runtime_options, set_runtime_options
from xvol_export.inputs import InputShape, prepare_inputs
from xvol_export.limits import check_seed
from xvol_export.tensorrt.build import EngineSettings
from xvol_export.utils import StepClock
from xvol_export.verify import Reference, VerifyReport, verify_fold
from xvol_export.verify.run import check_batch_fits


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

    def check_int8(self) -> None:
        """:class:`XvolError` for int8 options that do not go with the precision, or lack their data."""
        measures = self.int8.measures
        if self.precision == "int8" and measures and self.data is None:
            raise XvolError("--int8-sensitivity and --int8-fallback measure the int8 graph on real images: pass "
                            "--data FILE.npz with held-out inputs (random inputs cannot judge an int8 graph).")
        if self.precision != "int8" and measures:
            raise XvolError("--int8-sensitivity and --int8-fallback go with --precision int8.")
        if self.precision == "int8" and self.calib is None:
            raise XvolError("--precision int8 needs calibration data: pass --calib FILE.npz with an 'input' array of "
                            "representative images (a few hundred, preprocessed like the model's inputs).")


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


def _check_choices(format: str, precision: str, simplifier: str, batch: int, imgsz) -> None:
    row = FORMATS.get(format)
    if row is None:
        raise XvolError(f"Unknown format '{format}'. Choose one of: {', '.join(FORMATS)}.")
    missing = None if row.tensorrt else row.missing()  # an engine is checked with its build settings
    if missing:
        raise XvolError(f"--format {format}: {missing}.")
    if precision in INFERENCE_ONLY_PRECISIONS and precision not in row.precisions:
        raise XvolError(f"--precision {precision} is a precision OpenVINO computes in, not one of a graph: use it with "
                        f"--format openvino (an fp32 IR that OpenVINO runs in {precision}). For a half-precision ONNX "
                        "graph, export --precision fp16.")
    if precision not in row.precisions:
        raise XvolError(f"Unknown precision '{precision}'. Choose one of: {', '.join(GRAPH_PRECISIONS)} (in the "
                        f"graph), or {', '.join(INFERENCE_ONLY_PRECISIONS)} with --format openvino (OpenVINO computes "
                        "an fp32 IR in it).")
    if simplifier not in onnx_graph.SIMPLIFIERS:
        raise XvolError(f"Unknown simplifier '{simplifier}'. Choose one of: {', '.join(onnx_graph.SIMPLIFIERS)}.")
    if batch < 1:
        raise XvolError(f"--batch must be at least 1, got {batch}.")
    if imgsz is not None and (len(imgsz) != 2 or min(imgsz) < 1):
        raise XvolError(f"--imgsz must be one or two positive sizes (224 or 224,320), got {imgsz}.")

"""The backend registry: which artifact kinds each backend opens, whether it can run here, and its runner.

One record per backend. ``xvol bench`` and ``xvol verify`` look backends up here, so a new backend is
one record (and its runner module). Artifact kinds: ``checkpoint`` (.pth, .pt, .safetensors),
``onnx`` (.onnx), ``openvino`` (OpenVINO IR .xml) and ``engine`` (TensorRT .engine, .plan, .trt).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from xvol_export.errors import XvolError
from xvol_export.runners import Runner
from xvol_export.tensorrt.environment import INSTALL as TENSORRT_INSTALL

if TYPE_CHECKING:
    from torch import nn

    from xvol_export.tensorrt.build import EngineSettings


@dataclass(frozen=True)
class RunnerOptions:
    """What every runner may be asked for; each backend takes what applies to it."""

    device: str = "cpu"
    threads: int | None = None
    allow_spinning: bool = True  # ONNX Runtime: False when other runtimes share the cores
    cuda_graph: bool = False
    data_transfers: bool = True
    # The precision to compute in (fp32, bf16, fp16); None: the artifact's own (OpenVINO: f32 for fp32 graphs, or
    # what an IR records). Only OpenVINO can change it; the others accept their artifact's own precision only.
    precision: str | None = None
    # TensorRT: how to build the engine when the artifact is an ONNX graph (None: one profile at batch 1)
    engine: EngineSettings | None = None


PRECISION_CHOICES = ("fp32", "bf16", "fp16")


def cuda_index(device: str) -> int:
    """``cuda`` -> 0, ``cuda:N`` -> N."""
    return int(device[5:]) if ":" in device else 0


def check_precision(precision: str | None) -> None:
    """:class:`XvolError` naming the choices when ``precision`` is not one of them (None is fine)."""
    if precision is not None and precision not in PRECISION_CHOICES:
        raise XvolError(f"Unknown --precision '{precision}'. Choose one of: {', '.join(PRECISION_CHOICES)}.")


def _own_precision_only(path: Path, backend: str, own: str, precision: str | None) -> None:
    """torch and onnxruntime run their artifact's own precision: another one is refused, saying where to get it."""
    check_precision(precision)
    if precision is None or precision == own:
        return
    if backend == "torch":
        where = f"the checkpoint's own precision, {own} (xvol fold --dtype {precision} for a {precision} checkpoint)"
    else:
        graph = "fp16" if precision == "bf16" else precision
        where = f"the graph's own precision, {own} (export --precision {graph} for an {graph} graph)"
    raise XvolError(f"{path}: --precision {precision} applies to the openvino backend; {backend} runs {where}.")


@dataclass(frozen=True)
class Backend:
    """One runtime (``title`` for people): the artifact ``kinds`` it opens, the ``module`` it needs
    (``install`` says how to get it), the ``devices`` it runs on, and ``make(path, model, name, options)``
    building its runner."""

    name: str
    title: str
    kinds: tuple[str, ...]
    module: str
    install: str
    devices: str
    make: Callable[[Path, nn.Module | None, str, RunnerOptions], Runner]
    missing: Callable[[], str | None] | None = None  # a finer check than "the module imports", where needed

    def unavailable(self) -> str | None:
        """Why this backend cannot run here, with what to install; None when it can."""
        if self.missing is not None:
            reason = self.missing()
            return f"{reason}. 'xvol doctor' shows what this machine has" if reason else None
        if importlib.util.find_spec(self.module) is None:
            return (f"{self.title} is not installed here ({self.module} cannot be imported): {self.install}. "
                    "'xvol doctor' shows what this machine has")
        return None


def _torch(path: Path, model: nn.Module | None, name: str, options: RunnerOptions) -> Runner:
    from xvol_export.dtypes import dtype_name
    from xvol_export.runners import TorchRunner

    if options.precision is not None and model is not None:
        weights = next((t for t in model.parameters() if t.is_floating_point()), None)
        _own_precision_only(path, "torch", "fp32" if weights is None else dtype_name(weights.dtype), options.precision)
    return TorchRunner(model, name, device=options.device, cuda_graph=options.cuda_graph,
                       data_transfers=options.data_transfers)


def _onnxruntime(path: Path, model: nn.Module | None, name: str, options: RunnerOptions) -> Runner:
    from xvol_export.runners import OnnxRuntimeRunner

    providers = ("CPUExecutionProvider",)
    if options.device.startswith("cuda"):
        providers = (("CUDAExecutionProvider", {"device_id": cuda_index(options.device)}),)
    runner = OnnxRuntimeRunner(path, name, providers=providers, threads=options.threads,
                               allow_spinning=options.allow_spinning)
    if options.precision is not None:
        try:
            own = runner.precision
        except Exception:  # noqa: BLE001 - a damaged file: opening the artifact says so
            return runner
        _own_precision_only(path, "onnxruntime", own, options.precision)
    return runner


def _openvino(path: Path, model: nn.Module | None, name: str, options: RunnerOptions) -> Runner:
    from xvol_export.runners import OpenVinoRunner
    from xvol_export.runners.openvino_runner import HINTS

    check_precision(options.precision)
    if options.device != "cpu":
        raise XvolError(f"{path}: the openvino backend runs on the CPU here; --device {options.device} is for "
                        "torch, onnxruntime and tensorrt.")
    hint = HINTS[options.precision] if options.precision else None  # None: the IR's recorded one, else f32
    return OpenVinoRunner(path, name, inference_precision=hint, threads=options.threads)


def _tensorrt(path: Path, model: nn.Module | None, name: str, options: RunnerOptions) -> Runner:
    from xvol_export.runners.tensorrt_runner import TensorRTRunner
    from xvol_export.tensorrt.cache import cached_engine

    if options.precision is not None:
        raise XvolError(f"{path}: --precision {options.precision} applies to the openvino backend; a TensorRT engine "
                        "runs the precision of the graph it was built from (xvol export --precision).")
    device = "cuda:0" if options.device == "cpu" else options.device  # TensorRT runs on a GPU only
    if not device.startswith("cuda"):
        raise XvolError(f"{path}: the tensorrt backend runs on cuda or cuda:N, not {options.device}.")
    index = cuda_index(device)
    engine = cached_engine(path, options.engine, index) if path.suffix.lower() == ".onnx" else path
    return TensorRTRunner(engine, name, device_index=index, cuda_graph=options.cuda_graph,
                          data_transfers=options.data_transfers)


def _tensorrt_missing() -> str | None:
    from xvol_export.tensorrt.environment import cuda_missing, tensorrt_missing

    return tensorrt_missing() or cuda_missing()


BACKENDS: dict[str, Backend] = {
    backend.name: backend
    for backend in (
        Backend("torch", "PyTorch", ("checkpoint",), "torch", "pip install torch", "cpu, cuda, cuda:N", _torch),
        Backend("onnxruntime", "ONNX Runtime", ("onnx",), "onnxruntime",
                "pip install onnxruntime (onnxruntime-gpu for CUDA)", "cpu, cuda, cuda:N", _onnxruntime),
        Backend("openvino", "OpenVINO", ("onnx", "openvino"), "openvino", "pip install 'xvol[openvino]'", "cpu",
                _openvino),
        # an ONNX graph on tensorrt: an engine is built first, or reused from the engine cache
        Backend("tensorrt", "TensorRT", ("engine", "onnx"), "tensorrt",
                TENSORRT_INSTALL, "cuda, cuda:N",
                _tensorrt, _tensorrt_missing),
    )
}
KIND_NAMES = {"checkpoint": "a checkpoint", "onnx": "an ONNX graph", "openvino": "an OpenVINO IR",
              "engine": "a TensorRT engine"}
# The backend an artifact kind runs on when none is named: the first that opens it.
DEFAULT_BACKEND = {kind: next(b for b in BACKENDS.values() if kind in b.kinds)
                   for kind in ("checkpoint", "onnx", "openvino", "engine")}


def get_backend(name: str) -> Backend:
    """The backend called ``name``; :class:`XvolError` naming the choices otherwise."""
    if name not in BACKENDS:
        raise XvolError(f"Unknown backend '{name}'. Choose one of: {', '.join(sorted(BACKENDS))}.")
    return BACKENDS[name]


def backends_for(path: str | Path, kind: str, names: tuple[str, ...] | None) -> list[Backend]:
    """The backends to run an artifact of ``kind`` on: ``names`` (each must open that kind), else its default.

    Each must be available here; :class:`XvolError` says why not and what to install.
    """
    chosen = [get_backend(name) for name in names] if names else [DEFAULT_BACKEND[kind]]
    for backend in chosen:
        if kind not in backend.kinds:
            openers = [b.name for b in BACKENDS.values() if kind in b.kinds]
            runs_on = " or ".join(openers) if len(openers) < 3 else f"{', '.join(openers[:-1])} or {openers[-1]}"
            raise XvolError(f"{path}: {KIND_NAMES[kind]} runs on the {runs_on} backend, not {backend.name}. Export "
                            "it first (xvol export) to run it on another backend.")
        missing = backend.unavailable()
        if missing:
            raise XvolError(f"{path}: {missing}.")
    return chosen

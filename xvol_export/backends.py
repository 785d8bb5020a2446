"""The backend registry: which artifact kinds each backend opens, whether it can run here, and its runner.

One record per backend. ``xvol bench`` and ``xvol verify`` look backends up here, so a new backend is
one record (and its runner module). Artifact kinds: ``checkpoint`` (.pth, .pt, .safetensors),
``onnx`` (.onnx), ``openvino`` (OpenVINO IR .xml) and ``engine`` (TensorRT .engine, .plan, .trt).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from torch import nn

from xvol_export.errors import XvolError
from xvol_export.runners import Runner


@dataclass(frozen=True)
class RunnerOptions:
    """What every runner may be asked for; each backend takes what applies to it."""

    device: str = "cpu"
    threads: int | None = None
    allow_spinning: bool = True  # ONNX Runtime: False when other runtimes share the cores
    cuda_graph: bool = False
    data_transfers: bool = True


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

    def unavailable(self) -> str | None:
        """Why this backend cannot run here, with what to install; None when it can."""
        if importlib.util.find_spec(self.module) is None:
            return (f"{self.title} is not installed here ({self.module} cannot be imported): {self.install}. "
                    "'xvol doctor' shows what this machine has")
        return None


def _torch(path: Path, model: nn.Module | None, name: str, options: RunnerOptions) -> Runner:
    from xvol_export.runners import TorchRunner

    return TorchRunner(model, name, device=options.device, cuda_graph=options.cuda_graph,
                       data_transfers=options.data_transfers)


def _onnxruntime(path: Path, model: nn.Module | None, name: str, options: RunnerOptions) -> Runner:
    from xvol_export.runners import OnnxRuntimeRunner

    providers = ("CPUExecutionProvider",)
    if options.device.startswith("cuda"):
        index = int(options.device[5:]) if ":" in options.device else 0
        providers = (("CUDAExecutionProvider", {"device_id": index}),)
    return OnnxRuntimeRunner(path, name, providers=providers, threads=options.threads,
                             allow_spinning=options.allow_spinning)


def _openvino(path: Path, model: nn.Module | None, name: str, options: RunnerOptions) -> Runner:
    from xvol_export.runners import OpenVinoRunner

    if options.device != "cpu":
        raise XvolError(f"{path}: the openvino backend runs on the CPU here; --device {options.device} is for "
                        "torch, onnxruntime and tensorrt.")
    return OpenVinoRunner(path, name, threads=options.threads)


def _tensorrt(path: Path, model: nn.Module | None, name: str, options: RunnerOptions) -> Runner:
    raise XvolError(f"{path}: the tensorrt backend's runner is not built yet; 'xvol doctor' shows this machine.")


BACKENDS: dict[str, Backend] = {
    backend.name: backend
    for backend in (
        Backend("torch", "PyTorch", ("checkpoint",), "torch", "pip install torch", "cpu, cuda, cuda:N", _torch),
        Backend("onnxruntime", "ONNX Runtime", ("onnx",), "onnxruntime",
                "pip install onnxruntime (onnxruntime-gpu for CUDA)", "cpu, cuda, cuda:N", _onnxruntime),
        Backend("openvino", "OpenVINO", ("onnx", "openvino"), "openvino", "pip install 'xvol[openvino]'", "cpu",
                _openvino),
        Backend("tensorrt", "TensorRT", ("engine",), "tensorrt",
                "it needs an NVIDIA GPU and NVIDIA's TensorRT libraries (pip install 'xvol[tensorrt]' on such a "
                "machine); export --format onnx here and build the engine on the target GPU", "cuda, cuda:N",
                _tensorrt),
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
            runs_on = " or ".join(b.name for b in BACKENDS.values() if kind in b.kinds)
            raise XvolError(f"{path}: {KIND_NAMES[kind]} runs on the {runs_on} backend, not {backend.name}. Export "
                            "it first (xvol export) to run it on another backend.")
        missing = backend.unavailable()
        if missing:
            raise XvolError(f"{path}: {missing}.")
    return chosen

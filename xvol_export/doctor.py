"""What this machine can do: versions, devices, runtimes and providers, TensorRT availability."""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import platform

import xvol_export
from xvol_export.models import list_models

_PACKAGES = ("torch", "numpy", "onnx", "onnxruntime", "onnxsim", "onnxslim", "openvino", "safetensors", "typer",
             "rich")


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _cuda() -> dict:
    import torch

    if not torch.cuda.is_available():
        return {"available": False, "devices": [], "torch_cuda": torch.version.cuda}
    devices = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        devices.append({"index": index, "name": props.name, "compute_capability": f"{props.major}.{props.minor}",
                        "memory_gib": round(props.total_memory / 2**30, 1)})
    return {"available": True, "devices": devices, "torch_cuda": torch.version.cuda}


def _onnxruntime() -> dict:
    try:
        import onnxruntime
    except ImportError as err:
        return {"available": False, "reason": str(err)}
    return {"available": True, "version": onnxruntime.__version__,
            "providers": onnxruntime.get_available_providers()}


def _openvino() -> dict:
    from xvol_export.runners.openvino_runner import openvino_missing

    missing = openvino_missing()
    if missing:
        return {"available": False, "reason": missing}
    import openvino as ov

    core = ov.Core()
    # What the CPU plugin would compute an fp32 graph in by default (bf16 on bf16-capable processors);
    # xvol's OpenVINO runner asks for f32 instead.
    cpu_default = (core.get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name()
                   if "CPU" in core.available_devices else None)
    return {"available": True, "version": ov.__version__, "devices": list(core.available_devices),
            "cpu_default_inference_precision": cpu_default}


def _tensorrt() -> dict:
    try:
        trt = importlib.import_module("tensorrt")
    except Exception as err:  # noqa: BLE001 - a broken install raises more than ImportError
        return {"available": False,
                "reason": f"TensorRT is not installed ({type(err).__name__}: {err}). It needs an NVIDIA GPU and "
                          "NVIDIA's TensorRT libraries; install them with pip install 'xvol[tensorrt]' on such a "
                          "machine."}
    return {"available": True, "version": getattr(trt, "__version__", "unknown")}


def machine_report() -> dict:
    """A JSON-safe description of this machine for ``xvol doctor``."""
    return {
        "xvol_version": xvol_export.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": {"name": cpu_name(), "logical_cores": os.cpu_count()},
        "packages": package_versions(),
        "cuda": _cuda(),
        "onnxruntime": _onnxruntime(),
        "openvino": _openvino(),
        "tensorrt": _tensorrt(),
        "architectures": list_models(),
    }

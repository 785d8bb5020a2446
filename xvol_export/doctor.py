"""What this machine can do: versions, devices, runtimes and providers, TensorRT, and feature by feature
whether each xvol command works here (and, when it does not, why and what to install).

Everything heavy is imported inside the probes, and every probe catches what a broken install raises
(OSError, RuntimeError, ...), so ``xvol doctor`` reports a broken runtime instead of crashing on it.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess

from xvol_export import env
from xvol_export.backends import BACKENDS
from xvol_export.fold.family import broken_plugins
from xvol_export.models import list_models
from xvol_export.tensorrt.environment import INSTALL, tensorrt_missing
from xvol_export.version import __version__

_PACKAGES = ("torch", "numpy", "onnx", "onnxruntime", "onnxsim", "onnxslim", "onnxscript", "openvino", "tensorrt",
             "polygraphy", "safetensors", "typer", "rich")

TENSORRT_INSTALL = INSTALL
POLYGRAPHY_INSTALL = "pip install polygraphy"
_NVIDIA_SMI_TIMEOUT_S = 5


def package_versions() -> dict[str, str | None]:
    """Every package doctor reports, None where it is not installed."""
    found = env.package_versions(_PACKAGES)
    return {name: found.get(name) for name in _PACKAGES}


def _error(err: BaseException) -> str:
    return f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else 'no message'}"


def _module_missing(module: str, install: str) -> str | None:
    """Why ``module`` cannot be imported here, with what to install; None when it can (found, not imported).

    A namespace package (a folder without ``__init__.py``, such as the one type stubs leave) does not count.
    """
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError) as err:
        return f"{module} cannot be found ({_error(err)}): {install}"
    if spec is None or spec.origin in (None, "namespace"):
        return f"{module} is not installed: {install}"
    return None


# ------------------------------------------------------------------------------------------- GPU

def _nvidia_driver() -> tuple[str | None, str | None]:
    """The NVIDIA driver version from ``nvidia-smi`` and, when there is none, why not."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None, "nvidia-smi is not on PATH (no NVIDIA driver installed, or not visible here)"
    try:
        proc = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                              text=True, timeout=_NVIDIA_SMI_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return None, f"nvidia-smi did not answer within {_NVIDIA_SMI_TIMEOUT_S} s"
    except OSError as err:
        return None, f"nvidia-smi could not run ({_error(err)})"
    versions = sorted({line.strip() for line in proc.stdout.splitlines() if line.strip()})
    if proc.returncode != 0 or not versions:
        said = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        return None, f"nvidia-smi failed (exit {proc.returncode}{': ' + said[0] if said else ''})"
    return ", ".join(versions), None


def _gpu() -> tuple[dict, str | None]:
    """What PyTorch sees: CUDA devices, the CUDA version PyTorch was built with, and the NVIDIA driver.

    Also returns, when there is no usable GPU, a one-line reason for the feature rows (None when there is one).
    """
    import torch

    report = {"available": False, "reason": None, "torch": torch.__version__, "torch_cuda": torch.version.cuda,
              "device_count": 0, "devices": [], "driver_version": None, "driver_reason": None}
    report["driver_version"], report["driver_reason"] = _nvidia_driver()
    try:
        available = torch.cuda.is_available()
        if available:
            for index in range(torch.cuda.device_count()):
                props = torch.cuda.get_device_properties(index)
                report["devices"].append({"index": index, "name": props.name,
                                          "compute_capability": f"{props.major}.{props.minor}",
                                          "memory_gib": round(props.total_memory / 2**30, 1)})
    except Exception as err:  # noqa: BLE001 - a broken driver or CUDA runtime: report it
        report["reason"] = f"PyTorch {torch.__version__} could not query CUDA ({_error(err)})"
        report["devices"] = []
        return report, f"no CUDA GPU: {report['reason']}"
    report["device_count"] = len(report["devices"])
    report["available"] = bool(report["devices"])
    if report["available"]:
        return report, None
    if torch.version.cuda is None:
        reason = (f"PyTorch {torch.__version__} is a CPU-only build (no CUDA): install a CUDA build of PyTorch "
                  "(https://pytorch.org/get-started/locally/) on a machine with an NVIDIA GPU")
        short = f"no CUDA GPU: PyTorch {torch.__version__} is a CPU-only build"
    else:
        reason = f"PyTorch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA device"
        short = f"no CUDA GPU: {reason}"
        hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
        if hidden is not None:
            reason += f" (CUDA_VISIBLE_DEVICES={hidden!r})"
        elif report["driver_version"]:
            reason += (f"; NVIDIA driver {report['driver_version']} is installed: check that it supports "
                       f"CUDA {torch.version.cuda}")
    if report["driver_version"] is None:
        reason += f"; {report['driver_reason']}"
        short += ", and no NVIDIA driver (nvidia-smi not found)" if "not on PATH" in report["driver_reason"] else ""
    report["reason"] = reason
    return report, short


def _cuda(gpu: dict) -> dict:
    """The ``cuda`` section of earlier reports (kept for the JSON's readers): ``gpu`` has more."""
    return {"available": gpu["available"], "devices": gpu["devices"], "torch_cuda": gpu["torch_cuda"]}


# -------------------------------------------------------------------------------------- runtimes

def _onnxruntime() -> dict:
    try:
        import onnxruntime
    except Exception as err:  # noqa: BLE001 - a broken install raises more than ImportError
        return {"available": False, "reason": f"ONNX Runtime does not import ({_error(err)}): "
                                              f"{BACKENDS['onnxruntime'].install}"}
    return {"available": True, "version": onnxruntime.__version__,
            "providers": onnxruntime.get_available_providers()}


def _openvino() -> dict:
    missing = BACKENDS["openvino"].unavailable()
    if missing:
        return {"available": False, "reason": missing}
    try:
        import openvino as ov

        core = ov.Core()
        devices = list(core.available_devices)
        # What the CPU plugin would compute an fp32 graph in by default (bf16 on bf16-capable processors);
        # xvol's OpenVINO runner asks for f32 instead.
        cpu_default = (core.get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name()
                       if "CPU" in devices else None)
    except Exception as err:  # noqa: BLE001 - a broken install raises more than ImportError
        return {"available": False, "reason": f"OpenVINO is installed but does not work ({_error(err)}): "
                                              f"{BACKENDS['openvino'].install}"}
    return {"available": True, "version": ov.__version__, "devices": devices, "available_devices": devices,
            "cpu_default_inference_precision": cpu_default}


def _polygraphy() -> dict:
    missing = _module_missing("polygraphy", POLYGRAPHY_INSTALL)
    if missing:
        return {"available": False, "version": None, "reason": f"Polygraphy: {missing}"}
    try:
        polygraphy = importlib.import_module("polygraphy")
    except Exception as err:  # noqa: BLE001
        return {"available": False, "version": None,
                "reason": f"Polygraphy is installed but does not import ({_error(err)}): {POLYGRAPHY_INSTALL}"}
    return {"available": True, "version": getattr(polygraphy, "__version__", "unknown"), "reason": None}


def _distributions(prefix: str) -> dict[str, str]:
    """Installed distributions whose name starts with ``prefix`` (tensorrt, tensorrt-cu12, tensorrt-stubs...)."""
    found = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"] or ""
        if name.lower().replace("_", "-").startswith(prefix):
            found[name] = dist.version
    return dict(sorted(found.items()))


def _tensorrt(gpu: dict, no_gpu: str | None, polygraphy: dict) -> tuple[dict, dict[str, str | None]]:
    """TensorRT's version and whether it can build engines here (TensorRT, a CUDA GPU, Polygraphy, and a
    builder TensorRT can create), with ``reason`` naming what is missing and how to install it.

    Also returns each requirement's problem (None when met), for the feature rows.
    """
    distributions = _distributions("tensorrt")
    problem = tensorrt_missing()
    trt = None if problem else importlib.import_module("tensorrt")
    version = getattr(trt, "__version__", "unknown") if trt is not None else None
    problems = {"tensorrt": problem,
                "gpu": no_gpu,
                "polygraphy": polygraphy["reason"],
                "builder": None}
    if trt is not None and gpu["available"]:
        try:
            builder = trt.Builder(trt.Logger(trt.Logger.ERROR))
            if builder is None:
                raise RuntimeError("trt.Builder returned None")
            del builder
        except Exception as err:  # noqa: BLE001
            problems["builder"] = (f"TensorRT {version} cannot create a builder on this GPU ({_error(err)}): check "
                                   "that the NVIDIA driver supports the CUDA version TensorRT was built for")
    # the section names every route to TensorRT; the feature rows give the one that works everywhere
    missing = [f"{p} (or pip install 'xvol[tensorrt]')" if p is problem else p for p in problems.values() if p]
    reason = f"TensorRT cannot build engines here: {'; '.join(missing)}" if missing else None
    report = {"available": trt is not None, "version": version, "distributions": distributions,
              "can_build": not missing, "reason": reason}
    return report, problems


# -------------------------------------------------------------------------------------- features

def _row(feature: str, needs: str, *problems: str | None) -> dict:
    """One feature: it works when none of ``problems`` is set; ``reason`` joins those that are."""
    found = list(dict.fromkeys(p for p in problems if p))  # in order, each once
    return {"feature": feature, "works": not found, "needs": needs, "reason": "; ".join(found) if found else None}


def features(no_gpu: str | None, onnxruntime: dict, openvino: dict,
             trt_problems: dict[str, str | None]) -> list[dict]:
    """Each xvol feature, whether it works on this machine and, when not, why and what to install."""
    torch = BACKENDS["torch"].unavailable()
    ort = BACKENDS["onnxruntime"].unavailable() or (None if onnxruntime["available"] else onnxruntime["reason"])
    ov = BACKENDS["openvino"].unavailable() or (None if openvino["available"] else openvino["reason"])
    onnx = _module_missing("onnx", "pip install onnx")
    export = (torch, onnx, ort)  # export verifies every graph on ONNX Runtime before writing it
    cuda = no_gpu and (f"{no_gpu}: install a CUDA build of PyTorch on a machine with an NVIDIA GPU"
                       if "CPU-only" in no_gpu else no_gpu)
    ort_cuda = None
    if onnxruntime["available"] and "CUDAExecutionProvider" not in onnxruntime["providers"]:
        ort_cuda = ("ONNX Runtime has no CUDAExecutionProvider here (providers: "
                    f"{', '.join(onnxruntime['providers'])}): pip install onnxruntime-gpu")
    trt, trt_gpu = trt_problems["tensorrt"], trt_problems["gpu"]
    return [
        _row("fold", "torch", torch),
        _row("verify", "torch; onnxruntime for .onnx graphs", torch, ort),
        _row("export --format onnx", "torch, onnx, onnxruntime", *export),
        _row("export --simplifier onnxslim", "onnxslim", *export, _module_missing("onnxslim", "pip install onnxslim")),
        _row("export --simplifier onnxsim", "onnxsim", *export,
             _module_missing("onnxsim", "pip install 'xvol[onnxsim]' (or pip install onnxsim)")),
        _row("export --exporter dynamo", "onnxscript", *export,
             _module_missing("onnxscript", "pip install 'xvol[dynamo]' (or pip install onnxscript)")),
        _row("export --format openvino", "openvino", *export, ov),
        _row("export --format engine", "TensorRT, a CUDA GPU, Polygraphy", *export, trt, trt_gpu,
             trt_problems["polygraphy"], trt_problems["builder"]),
        _row("bench --device cuda", "a CUDA build of PyTorch and an NVIDIA GPU", torch, cuda),
        _row("bench --cuda-graph", "a CUDA build of PyTorch and an NVIDIA GPU", torch, cuda),
        _row("bench --backend onnxruntime --device cuda", "onnxruntime-gpu and an NVIDIA GPU", ort, ort_cuda, no_gpu),
        _row("bench --backend openvino", "openvino", ov),
        _row("bench --backend tensorrt", "TensorRT and a CUDA GPU", trt, trt_gpu),
    ]


def machine_report() -> dict:
    """A JSON-safe description of this machine for ``xvol doctor``."""
    gpu, no_gpu = _gpu()
    onnxruntime = _onnxruntime()
    openvino = _openvino()
    polygraphy = _polygraphy()
    tensorrt, trt_problems = _tensorrt(gpu, no_gpu, polygraphy)
    machine = env.machine()  # the one description every report carries; doctor adds what it means here
    return {
        "xvol_version": __version__,
        "python": machine["python"],
        "platform": machine["platform"],
        "cpu": {"name": machine["cpu"], "logical_cores": machine["logical_cores"], "isa": machine["isa"],
                "onednn_cap": machine["onednn_cap"], "onednn_isa": machine["onednn_isa"], "meaning": env.isa_meaning()},
        "packages": package_versions(),
        "gpu": gpu,
        "cuda": _cuda(gpu),
        "onnxruntime": onnxruntime,
        "openvino": openvino,
        "tensorrt": tensorrt,
        "polygraphy": polygraphy,
        "features": features(no_gpu, onnxruntime, openvino, trt_problems),
        "architectures": list_models(),
        "broken_plugins": [str(plugin) for plugin in broken_plugins()],
    }

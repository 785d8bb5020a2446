"""What TensorRT work needs on this machine, and the TensorRT version and GPU an engine meets here."""

from __future__ import annotations

import importlib
import importlib.metadata
from dataclasses import dataclass

INSTALL = ("pip install --extra-index-url https://pypi.nvidia.com 'xvol[tensorrt]' on a machine with an NVIDIA GPU "
           "(TensorRT's wheels come from NVIDIA's index)")


def tensorrt_missing() -> str | None:
    """Why TensorRT's Python bindings cannot be used here, with what to install; None when they can.

    The ``tensorrt-stubs`` package alone makes ``import tensorrt`` succeed with an empty namespace
    package, so a real installation is recognised by its ``Builder`` and ``__version__``.
    """
    try:
        trt = importlib.import_module("tensorrt")
    except ImportError:
        return f"TensorRT is not installed: {INSTALL}"
    except Exception as err:  # noqa: BLE001 - a broken install raises OSError, RuntimeError, ...
        first = str(err).strip().splitlines()[0] if str(err).strip() else "no message"
        return f"TensorRT is installed but does not import ({type(err).__name__}: {first}): {INSTALL}"
    if not hasattr(trt, "Builder") or not hasattr(trt, "__version__"):
        stubs = ", ".join(f"{d.metadata['Name']} {d.version}" for d in importlib.metadata.distributions()
                          if "tensorrt" in (d.metadata["Name"] or "").lower()) or "no TensorRT distribution"
        return (f"TensorRT is not installed (the tensorrt module here is an empty namespace package from {stubs}; "
                f"type stubs are not TensorRT): {INSTALL}")
    return None


def polygraphy_missing() -> str | None:
    """Why NVIDIA's Polygraphy cannot be imported here; None when it can."""
    try:
        importlib.import_module("polygraphy")
    except Exception as err:  # noqa: BLE001
        return f"Polygraphy is not installed ({type(err).__name__}: {err}): pip install polygraphy"
    return None


def cuda_missing() -> str | None:
    """Why PyTorch sees no CUDA GPU here (TensorRT runs on one); None when it does."""
    import torch

    if not torch.cuda.is_available():
        return (f"there is no CUDA GPU PyTorch can use here (torch {torch.__version__}, CUDA build: "
                f"{torch.version.cuda or 'no'}); TensorRT engines are built and run on an NVIDIA GPU")
    return None


def engine_build_missing() -> str | None:
    """Why an engine cannot be built here (TensorRT, Polygraphy or a GPU missing); None when it can."""
    return tensorrt_missing() or polygraphy_missing() or cuda_missing()


@dataclass(frozen=True)
class TensorRTEnvironment:
    """The TensorRT version and the GPU (name, compute capability ``major.minor``) an engine is built or run on."""

    tensorrt: str
    gpu_name: str
    compute_capability: str

    @classmethod
    def current(cls, device_index: int = 0) -> "TensorRTEnvironment":
        """This machine's TensorRT and CUDA device ``device_index`` (both must be present)."""
        import tensorrt as trt
        import torch

        props = torch.cuda.get_device_properties(device_index)
        return cls(trt.__version__, props.name, f"{props.major}.{props.minor}")

"""One runner interface for every backend, used by verify and bench alike. ``TorchRunner`` is imported on first
use, so the other runners work where PyTorch is not installed."""

from xvol_export.runners.base import InputSpec, Runner, Timing
from xvol_export.runners.onnxruntime_runner import OnnxRuntimeRunner
from xvol_export.runners.openvino_runner import OpenVinoRunner


def __getattr__(name: str):
    if name == "TorchRunner":
        from xvol_export.runners.torch_runner import TorchRunner

        return TorchRunner
    raise AttributeError(f"module 'xvol_export.runners' has no attribute {name!r}")


__all__ = ["InputSpec", "OnnxRuntimeRunner", "OpenVinoRunner", "Runner", "Timing", "TorchRunner"]

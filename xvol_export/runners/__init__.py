"""One runner interface for every backend, used by verify and bench alike."""

from xvol_export.runners.base import InputSpec, Runner, Timing
from xvol_export.runners.onnxruntime_runner import OnnxRuntimeRunner
from xvol_export.runners.openvino_runner import OpenVinoRunner
from xvol_export.runners.torch_runner import TorchRunner

__all__ = ["InputSpec", "OnnxRuntimeRunner", "OpenVinoRunner", "Runner", "Timing", "TorchRunner"]

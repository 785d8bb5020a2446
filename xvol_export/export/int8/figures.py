"""How close an int8 graph's output stays to the reference: the figures, measured on the graph's own runtime."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx

from xvol_export.compare import compare_arrays
from xvol_export.errors import XvolError


@dataclass(frozen=True)
class Figures:
    """Output agreement of a graph with the reference (``truth``) on the evaluation inputs."""

    cosine: float
    top1_agreement: float | None
    rel_l2: float

    def to_dict(self) -> dict:
        return {"cosine": self.cosine, "top1_agreement": self.top1_agreement, "rel_l2": self.rel_l2}


LABELS = {"cosine": "cosine", "top1": "top-1 agreement"}


def format_figure(metric: str, value: float | None) -> str:
    """Rounded down, so a figure short of a budget never prints as the budget."""
    if value is None:
        return "n/a"
    if metric == "top1":
        return f"{math.floor(100 * value * 100 + 1e-9) / 100:.2f}%"
    return f"{math.floor(value * 1e6) / 1e6:.6f}"


def evaluate(graph: onnx.ModelProto, inputs: np.ndarray, truth: np.ndarray, input_name: str = "input",
             backend: str = "onnxruntime") -> Figures:
    """Run ``graph`` on ``backend`` (``onnxruntime`` or ``openvino``, on the CPU, OpenVINO pinned to f32 as xvol
    runs int8 IRs) on ``inputs`` and compare its output with ``truth``: the figures of the runtime the graph is
    for, whose int8 kernels (and their saturation) decide what it computes."""
    from xvol_export.export.onnx_graph import runnable
    from xvol_export.runners import OnnxRuntimeRunner, OpenVinoRunner
    from xvol_export.verify.outputs import run_batches

    with runnable(graph) as source:
        runner = (OpenVinoRunner(source, "int8", inference_precision="f32") if backend == "openvino"
                  else OnnxRuntimeRunner(source, "int8"))
        with runner:
            if input_name not in runner.input_names():
                names = ", ".join(repr(n) for n in runner.input_names())
                raise XvolError(f"The graph has no input named {input_name!r} (its inputs: {names}); "
                                "pass the image input's name.")
            output = next(iter(run_batches(runner, inputs, min(len(inputs), 32)).values()))
    if output.shape != truth.shape:
        raise XvolError(f"The reference output has shape {truth.shape}, but the graph gives {output.shape} on "
                        f"inputs of shape {inputs.shape}; pass the reference model's output on the same inputs.")
    stats = compare_arrays(truth, output, quantiles=False)
    return Figures(stats.cosine, stats.top1_agreement, stats.rel_l2)


def check_eval(inputs, truth) -> tuple[np.ndarray, np.ndarray]:
    """Held-out ``inputs`` and the reference's ``truth`` on them, checked: float32 images, float64 outputs."""
    inputs, truth = np.asarray(inputs), np.asarray(truth)
    if not np.issubdtype(inputs.dtype, np.floating) or inputs.ndim != 4 or len(inputs) == 0:
        raise XvolError(f"Evaluation inputs must be a non-empty N x C x H x W float array, got {inputs.dtype} of "
                        f"shape {inputs.shape}; pass preprocessed held-out images.")
    if not np.isfinite(inputs).all():
        raise XvolError(f"Evaluation inputs of shape {inputs.shape} hold NaN or Inf values; pass finite images.")
    if truth.ndim < 1 or len(truth) != len(inputs) or not np.issubdtype(truth.dtype, np.floating):
        raise XvolError(f"The reference output (shape {truth.shape}, {truth.dtype}) must be the float outputs of "
                        f"the {len(inputs)} evaluation inputs, one row per image.")
    return np.ascontiguousarray(inputs, dtype=np.float32), np.asarray(truth, dtype=np.float64)

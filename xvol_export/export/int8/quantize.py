"""One call for an int8 graph: calibrate, lay out Q/DQ for the target, and (when asked) rank the layers and keep the
most sensitive in float until the accuracy budget is met."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from xvol_export.export.int8.fallback import quantize_with_fallback
from xvol_export.export.int8.options import Int8Options
from xvol_export.export.int8.qdq import to_int8_qdq
from xvol_export.export.int8.sensitivity import layer_sensitivity
from xvol_export.export.onnx_graph import INPUT_NAME, check_graph


@dataclass
class Quantized:
    """An int8 graph and its record: ``report`` (calibration method and images, layout; with measurement the
    sensitivity report, what it was measured on, and the fallback) and ``failures`` (a budget not met)."""

    graph: onnx.ModelProto
    report: dict
    failures: list[str] = field(default_factory=list)


def quantize(graph: onnx.ModelProto, calibration: np.ndarray, options: Int8Options | None = None,
             format: str = "onnx", *, inputs: np.ndarray | None = None, truth: np.ndarray | None = None,
             measured_on: str | None = None, input_name: str = INPUT_NAME) -> Quantized:
    """The int8 Q/DQ form of the fp32 ``graph`` for an export of ``format``, calibrated on ``calibration``.

    With ``options.sensitivity`` or ``options.budget`` the graph is measured on held-out ``inputs`` against the
    reference's ``truth`` on them (the first output; ``measured_on`` names the data in the report); a budget
    keeps the most sensitive layers in float until it is met, and one that cannot be met is a failure.
    """
    options = options or Int8Options()
    layout = options.layout(format)
    report = {"method": options.method, "calibration_images": len(calibration), "layout": layout.to_dict()}
    if not options.measures:
        return Quantized(check_graph(to_int8_qdq(graph, calibration, input_name, calibrate_method=options.method,
                                                 layout=layout)), report)
    sensitivity = layer_sensitivity(graph, calibration, inputs, truth, method=options.method,
                                    input_name=input_name, layout=layout)
    report.update(sensitivity=sensitivity.to_dict(), measured_on=measured_on)
    if options.budget is None:
        return Quantized(check_graph(sensitivity.base.variant()), report)  # calibrated once, for the report too
    fallback = quantize_with_fallback(graph, calibration, inputs, truth, options.budget, method=options.method,
                                      input_name=input_name, sensitivity=sensitivity, layout=layout)
    report["fallback"] = fallback.to_dict()
    failures = [] if fallback.met else [f"--accuracy-budget: {fallback.summary()}"]
    return Quantized(check_graph(fallback.graph), report, failures)

"""Per-layer int8 sensitivity: each quantizable layer alone quantized and alone in float, ranked."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import onnx

from xvol_export.export.int8.figures import Figures, check_eval, evaluate
from xvol_export.export.int8.layout import Int8Layout
from xvol_export.export.int8.variants import QuantizedBase, calibrated_base


def runtime_of(layout: Int8Layout) -> str:
    """The runtime whose figures decide for a layout: OpenVINO's own, else ONNX Runtime's (TensorRT's Q/DQ graph
    runs there as DQ -> float op, a faithful simulation of it)."""
    return "openvino" if layout.target == "openvino" else "onnxruntime"


@dataclass
class LayerSensitivity:
    name: str
    op_type: str
    quantized_alone: Figures  # only this layer quantized
    float_alone: Figures  # only this layer left in float

    def to_dict(self) -> dict:
        return {"name": self.name, "op_type": self.op_type, "quantized_alone": self.quantized_alone.to_dict(),
                "float_alone": self.float_alone.to_dict()}


@dataclass
class SensitivityReport:
    """Per quantizable layer, the output figures with it alone quantized and with it alone in float."""

    method: str
    calibration_images: int
    eval_images: int
    all_quantized: Figures
    all_float: Figures
    layers: list[LayerSensitivity]
    ranking: list[str]  # most sensitive first
    calibration_s: float
    variant_s: float  # mean seconds per variant: graph surgery, session and run
    base: QuantizedBase | None = field(default=None, repr=False, compare=False)

    def layer(self, name: str) -> LayerSensitivity:
        return next(item for item in self.layers if item.name == name)

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "calibration_images": self.calibration_images,
            "eval_images": self.eval_images,
            "all_quantized": self.all_quantized.to_dict(),
            "all_float": self.all_float.to_dict() if self.all_float else None,
            "ranking": list(self.ranking),
            "layers": [item.to_dict() for item in self.layers],
            "calibration_s": self.calibration_s,
            "variant_s": self.variant_s,
        }


def layer_sensitivity(fp32_graph: onnx.ModelProto, calibration: np.ndarray, inputs: np.ndarray, truth: np.ndarray,
                      *, method: str = "minmax", input_name: str = "input", base: QuantizedBase | None = None,
                      layout: Int8Layout | None = None) -> SensitivityReport:
    """Quantize once with ``method``, then measure each quantizable layer alone quantized and alone in float.

    ``truth`` is the reference output on ``inputs`` (the training form in float64); figures are cosine,
    top-1 agreement and relative L2 against it. The ranking puts first the layer whose staying in float
    lifts the cosine most (ties: the larger error when it alone is quantized). ``base`` reuses a
    :func:`quantize_once` result instead of calibrating; ``layout`` (default TensorRT's) says how the graph is
    quantized, and each variant runs on its target's runtime (OpenVINO for an OpenVINO layout, else ONNX
    Runtime), whose int8 kernels decide what it computes.
    """
    inputs, truth = check_eval(inputs, truth)
    base = calibrated_base(fp32_graph, calibration, method, input_name, base, layout)
    op_types = {n.name: n.op_type for n in base.fp32.graph.node}
    start = time.perf_counter()
    backend = runtime_of(base.layout)
    run = lambda floats: evaluate(base.variant(floats), inputs, truth, input_name, backend)  # noqa: E731
    all_quantized = run(())
    all_float = run(base.layers)
    layers = []
    for name in base.layers:
        others = [other for other in base.layers if other != name]
        layers.append(LayerSensitivity(name, op_types[name], quantized_alone=run(others), float_alone=run([name])))
    variants = 2 + 2 * len(base.layers)
    ranking = [item.name for item in sorted(layers, key=lambda item: (-item.float_alone.cosine,
                                                                        -item.quantized_alone.rel_l2))]
    return SensitivityReport(base.method, base.calibration_images, len(inputs), all_quantized, all_float, layers,
                             ranking, base.calibration_s, (time.perf_counter() - start) / variants, base)

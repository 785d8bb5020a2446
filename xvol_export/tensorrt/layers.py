"""Did the engine run every layer at the precision the graph asked? Read from TensorRT's layer information.

The engine inspector's JSON (built with detailed profiling verbosity) lists every layer with its name,
made of the ONNX node names it fused (``/conv1/Conv + /relu/Relu``), and its tensors' formats
(``Row major linear FP16 format``). Each compute node of the graph (Conv, ConvTranspose, Gemm,
MatMul) is expected at its graph precision: int8 where its input and weights come from DequantizeLinear, else
the graph's float type (or any precision the plan allows for float layers).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import onnx

from xvol_export.tensorrt.plan import PrecisionPlan

COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# Format/Datatype tokens in TensorRT's layer information, to xvol's precision names
_DATATYPES = (("bf16", "bf16"), ("fp16", "fp16"), ("half", "fp16"), ("fp32", "fp32"), ("float", "fp32"),
              ("int8", "int8"), ("fp8", "fp8"), ("int4", "int4"), ("fp4", "fp4"))
_NAME_SEPARATORS = re.compile(r"\s\+\s|[\s()\[\]{},]+")


def expected_precisions(graph: onnx.ModelProto) -> dict[str, str]:
    """Every compute node's name, to ``int8`` (input and weights fed by DequantizeLinear: TensorRT fuses them into an
    int8 layer) or its float type (``fp16``, ``fp32``)."""
    producers = {out: node for node in graph.graph.node for out in node.output}
    float16 = {init.name for init in graph.graph.initializer if init.data_type == onnx.TensorProto.FLOAT16}
    float16 |= {v.name for v in (*graph.graph.input, *graph.graph.value_info)
                if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16}
    expected = {}
    for index, node in enumerate(graph.graph.node):
        if node.op_type not in COMPUTE_OPS:
            continue
        name = node.name or f"{node.op_type}_{index}"
        fed = [producers.get(i) for i in node.input[:2]]
        if len(fed) == 2 and all(p is not None and p.op_type == "DequantizeLinear" for p in fed):
            expected[name] = "int8"
        elif node.input[0] in float16 or (len(node.input) > 1 and node.input[1] in float16):
            expected[name] = "fp16"
        else:
            expected[name] = "fp32"
    return expected


def tensor_precision(tensor_format: str) -> str | None:
    """``Row major linear FP16 format`` -> ``fp16``; None when the text names no datatype."""
    text = tensor_format.lower()
    return next((name for token, name in _DATATYPES if token in text), None)


@dataclass(frozen=True)
class LayerPrecisionCheck:
    """Compute nodes found in the engine's layers, and those running at another precision than asked."""

    checked: int
    expected: int
    mismatches: tuple[str, ...]
    unreadable: bool = False

    @property
    def passed(self) -> bool:
        return not self.mismatches and not self.unreadable and (self.checked > 0 or self.expected == 0)

    def failure(self) -> str:
        if self.unreadable:
            return ("the engine's layer information lists no layer details (build with detailed profiling "
                    "verbosity): layer precisions could not be checked")
        if self.checked == 0 and self.expected:
            return (f"none of the graph's {self.expected} compute nodes appears in the engine's layer information: "
                    "layer precisions could not be checked")
        shown = "; ".join(self.mismatches[:5]) + (f"; and {len(self.mismatches) - 5} more"
                                                  if len(self.mismatches) > 5 else "")
        return f"{len(self.mismatches)} of {self.checked} compute layers run at another precision than asked: {shown}"

    def to_dict(self) -> dict:
        return {"passed": self.passed, "checked": self.checked, "expected": self.expected,
                "mismatches": list(self.mismatches)}


def check_layer_precisions(layer_info: dict, expected: dict[str, str], plan: PrecisionPlan) -> LayerPrecisionCheck:
    """Compare each engine layer holding an expected compute node with that node's precision.

    A node expected in a float type may run in any of ``plan.float_layers``; an int8 node only in int8.
    """
    layers = layer_info.get("Layers", [])
    if layers and not any(isinstance(layer, dict) for layer in layers):
        return LayerPrecisionCheck(0, len(expected), (), unreadable=True)
    checked, mismatches = 0, []
    for layer in layers:
        if not isinstance(layer, dict) or _is_reformat(layer):
            continue
        name = str(layer.get("Name", ""))
        nodes = [token for token in _NAME_SEPARATORS.split(name) if token in expected]
        inputs = layer.get("Inputs") or []
        ran = tensor_precision(str(inputs[0].get("Format/Datatype", ""))) if inputs else None
        for node in nodes:
            checked += 1
            allowed = ("int8",) if expected[node] == "int8" else plan.float_layers
            if expected[node] == "fp16" and "fp16" not in allowed:
                allowed = ("fp16",)
            if ran is None or ran not in allowed:
                mismatches.append(f"{node} runs in {ran or 'an unknown type'} (layer '{name}'), asked "
                                  f"{' or '.join(allowed)}")
    return LayerPrecisionCheck(checked, len(expected), tuple(mismatches))


def _is_reformat(layer: dict) -> bool:
    """A copy TensorRT inserts to change a tensor's format: it names the layer it feeds, but computes nothing."""
    return layer.get("LayerType") == "Reformat" or str(layer.get("Name", "")).startswith("Reformatting CopyNode")

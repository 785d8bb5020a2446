"""What an ONNX graph holds, read without PyTorch: its metadata, precision, ops and input dims (the runners,
the TensorRT build and the export all ask)."""

from __future__ import annotations

import collections

import onnx

from xvol_export.metadata_keys import PRECISION


def read_metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def graph_precision(model: onnx.ModelProto) -> str:
    """int8 for a Q/DQ graph, fp16 for a graph with float16 weights, else fp32 (xvol's metadata first)."""
    tagged = read_metadata(model).get(PRECISION)
    if tagged in ("fp32", "fp16", "int8"):
        return tagged
    if any(node.op_type in ("QuantizeLinear", "DequantizeLinear") for node in model.graph.node):
        return "int8"
    if any(init.data_type == onnx.TensorProto.FLOAT16 for init in model.graph.initializer):
        return "fp16"
    return "fp32"


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    return dict(collections.Counter(node.op_type for node in model.graph.node))


def input_dims(model: onnx.ModelProto) -> list[int | str]:
    """The first input's dims: ints where fixed, names where symbolic."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return [d.dim_param if d.dim_param else d.dim_value for d in dims]

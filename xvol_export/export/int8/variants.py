"""The quantizable layers of a graph, and "these layers stay in float" variants cut from one calibrated Q/DQ graph.

Calibration is the expensive part of ONNX Runtime's ``quantize_static``, so it runs once per
method: the whole graph is quantized once (:func:`quantize_once`), and every "these layers stay
in float" variant is cut from that Q/DQ graph (:func:`keep_in_float`). A variant computes what
``quantize_static(..., nodes_to_exclude=those layers)`` with the same calibration computes
(checked in ``tests/test_int8.py``). One rule follows from quantize_static: it puts one Q/DQ pair on
an activation, and every consumer of that tensor reads it, so a float layer whose input also feeds
a quantized layer reads that input's Q/DQ values (only its weight is float); a tensor whose
quantized consumers are all kept in float loses its Q/DQ pair.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import onnx

from xvol_export.errors import XvolError
from xvol_export.export.int8.layout import INT8_OP_TYPES, Int8Layout, int8_layout
from xvol_export.export.int8.options import check_method
from xvol_export.export.int8.qdq import int8_float_nodes, named_nodes, to_int8_qdq

_QDQ = ("QuantizeLinear", "DequantizeLinear")


def quantizable_layers(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes :func:`to_int8_qdq` quantizes (Conv/Gemm/MatMul other than one-hot shift convs),
    in graph order. Unnamed or duplicate names are those :func:`to_int8_qdq` gives (``OpType_xvol_INDEX``)."""
    model = named_nodes(model)
    shifts = set(int8_float_nodes(model))
    return [n.name for n in model.graph.node if n.op_type in INT8_OP_TYPES and n.name not in shifts]


def keep_in_float(quantized: onnx.ModelProto, fp32: onnx.ModelProto, layers: Iterable[str],
                  quantize_outputs: bool = False) -> onnx.ModelProto:
    """A copy of the Q/DQ graph ``quantized`` (from :func:`to_int8_qdq` of ``fp32``) with ``layers`` in float.

    Each layer's weight (and bias) is the float one of ``fp32`` again; an activation's Q/DQ pair is removed
    when no quantized layer reads it any more and (``quantize_outputs``: a layout that quantizes outputs) no
    quantized layer produces it (its readers get the float tensor back), as quantize_static's
    ``nodes_to_exclude`` would leave it. Q/DQ nodes and initializers left unused are dropped.
    """
    fp32 = named_nodes(fp32)
    floats = set(layers)
    graph = onnx.ModelProto()
    graph.CopyFrom(quantized)
    g = graph.graph
    nodes = {n.name: n for n in g.node}
    quantizable = set(quantizable_layers(fp32))
    unknown = sorted(floats - quantizable)
    if unknown:
        raise XvolError(f"Not quantizable layers of this graph: {', '.join(unknown)}. Name Conv/Gemm/MatMul nodes "
                        "from quantizable_layers(graph).")
    missing = sorted(name for name in quantizable if name not in nodes)
    if missing:
        raise XvolError(f"The quantized graph lacks nodes of the fp32 graph ({', '.join(missing[:3])}); pass the "
                        "fp32 graph it was quantized from.")
    reference = {n.name: n for n in fp32.graph.node}
    fp32_inits = {init.name: init for init in fp32.graph.initializer}
    inits = {init.name for init in g.initializer}
    producer = {out: n for n in g.node for out in n.output}

    # Weights (constant -> DequantizeLinear) of float layers: back to the fp32 graph's own tensors.
    for name in floats:
        node, original = nodes[name], reference[name]
        for index, tensor in enumerate(node.input):
            source = producer.get(tensor)
            if source is None or source.op_type != "DequantizeLinear":
                continue
            feeder = producer.get(source.input[0])
            if feeder is not None and feeder.op_type == "QuantizeLinear":
                continue  # an activation pair: below
            weight = original.input[index]
            if weight not in fp32_inits:
                raise XvolError(f"The fp32 graph's weight {weight!r} of {name!r} is not an initializer; pass the "
                                "fp32 graph the Q/DQ graph was made from.")
            restored = weight if weight not in producer else f"{weight}_xvol_float"  # a DQ may output that name
            node.input[index] = restored
            if restored not in inits:
                tensor = onnx.TensorProto()
                tensor.CopyFrom(fp32_inits[weight])
                tensor.name = restored
                g.initializer.append(tensor)
                inits.add(restored)

    # Activation pairs: kept while a quantized layer reads them.
    quantized_layers = quantizable - floats
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in g.node:
        for tensor in node.input:
            readers.setdefault(tensor, []).append(node)
    graph_outputs = {o.name for o in g.output}
    for dq in [n for n in g.node if n.op_type == "DequantizeLinear"]:
        q = producer.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear":
            continue
        consumers = readers.get(dq.output[0], [])
        if any(c.name in quantized_layers for c in consumers):
            continue
        made_by = producer.get(q.input[0])
        if quantize_outputs and made_by is not None and made_by.name in quantized_layers:
            continue  # a quantized layer's own output pair
        if dq.output[0] in graph_outputs:
            if made_by is None or not quantize_outputs:
                continue  # a graph output's own pair (not a layer's): it stays
            # the float layer gives the graph output itself again, under its name
            name, old_name = dq.output[0], q.input[0]
            for node in [*readers.get(old_name, []), made_by]:
                for field in (node.input, node.output):
                    renamed = [name if t == old_name else t for t in field]
                    del field[:]
                    field.extend(renamed)
            del dq.output[:]
            dq.output.append(f"{old_name}_xvol_unused")  # the pair is unread now: pruned below
            continue
        for consumer in consumers:
            for index, tensor in enumerate(consumer.input):
                if tensor == dq.output[0]:
                    consumer.input[index] = q.input[0]
    return _prune(graph)


def _prune(graph: onnx.ModelProto) -> onnx.ModelProto:
    """Drop Q/DQ nodes whose outputs nothing reads, then initializers nothing reads (in place)."""
    g = graph.graph
    outputs = {o.name for o in g.output}
    while True:
        read = {t for n in g.node for t in n.input} | outputs
        dead = [i for i, n in enumerate(g.node) if n.op_type in _QDQ and not any(o in read for o in n.output)]
        if not dead:
            break
        for index in reversed(dead):
            del g.node[index]
    read = {t for n in g.node for t in n.input} | outputs
    kept = [init for init in g.initializer if init.name in read]
    if len(kept) != len(g.initializer):
        del g.initializer[:]
        g.initializer.extend(kept)
    produced = {t for n in g.node for t in n.output}
    value_infos = [v for v in g.value_info if v.name in read or v.name in produced]
    if len(value_infos) != len(g.value_info):
        del g.value_info[:]
        g.value_info.extend(value_infos)
    return graph


@dataclass
class QuantizedBase:
    """One calibration's result: the fp32 graph, its all-quantized Q/DQ form (in ``layout``) and its quantizable
    layers."""

    fp32: onnx.ModelProto
    quantized: onnx.ModelProto
    layers: list[str]
    method: str
    calibration_images: int
    calibration_s: float
    layout: Int8Layout = field(default_factory=lambda: int8_layout("tensorrt"))

    def variant(self, float_layers: Iterable[str] = ()) -> onnx.ModelProto:
        """The Q/DQ graph with ``float_layers`` kept in float (the all-quantized graph when none)."""
        float_layers = list(float_layers)
        if not float_layers:
            graph = onnx.ModelProto()
            graph.CopyFrom(self.quantized)
            return graph
        return keep_in_float(self.quantized, self.fp32, float_layers, self.layout.quantize_outputs)


def quantize_once(fp32_graph: onnx.ModelProto, calibration: np.ndarray, *, method: str = "minmax",
                  input_name: str = "input", layout: Int8Layout | None = None) -> QuantizedBase:
    """Calibrate and quantize ``fp32_graph`` once (:func:`to_int8_qdq`, in ``layout``: default TensorRT's);
    variants are cut from the result."""
    check_method(method)
    fp32 = named_nodes(fp32_graph)
    start = time.perf_counter()
    layout = layout or int8_layout("tensorrt")
    quantized = to_int8_qdq(fp32, calibration, input_name, calibrate_method=method, layout=layout)
    return QuantizedBase(fp32, quantized, quantizable_layers(fp32), method, int(np.shape(calibration)[0]),
                         time.perf_counter() - start, layout)


def calibrated_base(fp32_graph, calibration, method, input_name, base: QuantizedBase | None,
                    layout: Int8Layout | None = None) -> QuantizedBase:
    """``base`` if it was calibrated with ``method`` in ``layout``, else a new :func:`quantize_once`."""
    if base is None:
        return quantize_once(fp32_graph, calibration, method=method, input_name=input_name, layout=layout)
    if base.method != method:
        raise XvolError(f"The quantized graph was calibrated with {base.method}, not {method}; pass "
                        f"method={base.method!r}.")
    if layout is not None and base.layout != layout:
        raise XvolError(f"The quantized graph is laid out for {base.layout.target}, not {layout.target}; "
                        "quantize again for this target.")
    return base


def runtime_of(layout: Int8Layout) -> str:
    """The runtime whose figures decide for a layout: OpenVINO's own, else ONNX Runtime's (TensorRT's Q/DQ graph
    runs there as DQ -> float op, a faithful simulation of it)."""
    return "openvino" if layout.target == "openvino" else "onnxruntime"

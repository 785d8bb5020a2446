"""Would TensorRT's ONNX parser take this graph? A CPU-only check against onnx-tensorrt's operator table.

``ops.json`` holds onnx-tensorrt's ``docs/operators.md`` as data: which operators it parses, the
tensor types each takes, and the documented restrictions a graph shows statically (attribute values,
inputs that must be constant, ranks, types). Nothing here runs TensorRT; a graph that passes can still
fail in TensorRT for reasons the table does not state, but one that fails would be refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from xvol_export.errors import XvolError

_TABLE = json.loads(resources.files("xvol_export.tensorrt").joinpath("ops.json").read_text("utf-8"))
_OPS: dict[str, dict] = _TABLE["operators"]
TENSORRT_OPS_SOURCE = f"onnx-tensorrt {_TABLE['source']['version']}"

_STANDARD_DOMAINS = ("", "ai.onnx")
_LISTED = 10  # incompatibilities named in check_tensorrt_compatible's message
_RANDOM = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Bernoulli", "Multinomial"}
# the doc's type names <-> ONNX element types (a name this onnx lacks, e.g. FLOAT4E2M1 before 1.18, is skipped)
_ONNX_TYPE = {doc: getattr(onnx.TensorProto, name) for doc, name in _TABLE["onnx_names"].items()
              if hasattr(onnx.TensorProto, name)}
_DOC_TYPE = {code: doc for doc, code in _ONNX_TYPE.items()}
_DEMOTED = _TABLE["demoted"]  # DOUBLE is cast down to FP32 by the parser


@dataclass(frozen=True)
class Incompatibility:
    """One reason TensorRT would refuse a graph: the node (its name or ``OpType#index``), its type, and why."""

    node: str
    op_type: str
    reason: str


def tensorrt_incompatibilities(graph: onnx.ModelProto) -> list[Incompatibility]:
    """Every node of ``graph`` (subgraphs and model-local functions included) that onnx-tensorrt would refuse.

    Checks the ai.onnx opset range, unknown, unsupported and custom-domain operators, the tensor types
    each operator takes (from ONNX shape inference; a failed inference only means fewer type checks) and
    the documented attribute and input restrictions. An empty list: nothing in the table objects.
    """
    found: list[Incompatibility] = []
    low, high = _TABLE["opset"]
    for opset in graph.opset_import:
        if opset.domain in _STANDARD_DOMAINS and not low <= opset.version <= high:
            found.append(Incompatibility("(model)", "opset_import", f"ai.onnx opset {opset.version} is outside "
                                         f"{TENSORRT_OPS_SOURCE}'s range, opset {low} to {high}"))
    model = _inferred(graph)
    functions = {(f.domain, f.name): f for f in model.functions}
    outputs = {o.name for o in model.graph.output}
    _check_graph(model.graph, _Scope(graph_outputs=outputs), "", functions, found)
    return found


def compatibility_report(graph: onnx.ModelProto) -> dict:
    """:func:`tensorrt_incompatibilities` as JSON-plain data: the table checked against, the verdict, the problems."""
    problems = tensorrt_incompatibilities(graph)
    return {"checked_against": TENSORRT_OPS_SOURCE, "compatible": not problems,
            "problems": [f"{p.node} ({p.op_type}): {p.reason}" for p in problems]}


def check_tensorrt_compatible(graph: onnx.ModelProto, path_label: str) -> None:
    """Raise :class:`XvolError` (exit code 2) naming the nodes TensorRT would refuse in ``graph`` and the fix."""
    found = tensorrt_incompatibilities(graph)
    if not found:
        return
    shown = "; ".join(f"node '{p.node}' ({p.op_type}): {p.reason}" for p in found[:_LISTED])
    more = f"; and {len(found) - _LISTED} more" if len(found) > _LISTED else ""
    nodes = len({p.node for p in found})
    counted = f"{nodes} nodes break" if nodes != 1 else "1 node breaks"
    raise XvolError(f"{path_label}: TensorRT would refuse this graph: {counted} {TENSORRT_OPS_SOURCE}'s operator "
                    f"table: {shown}{more}. Export with another opset / "
                    "precision, or replace the operator.")


# ------------------------------------------------------------------------------------------- internals

@dataclass
class _Scope:
    """What a graph knows about its tensors: element types, dims (None: unknown), constant values."""

    types: dict[str, int] = field(default_factory=dict)
    dims: dict[str, list[int | None]] = field(default_factory=dict)
    weights: dict[str, onnx.TensorProto | None] = field(default_factory=dict)  # initializers and Constant outputs
    built: set[str] = field(default_factory=set)  # values known when the engine is built
    graph_outputs: set[str] = field(default_factory=set)

    def child(self) -> _Scope:
        return _Scope(dict(self.types), dict(self.dims), dict(self.weights), set(self.built), self.graph_outputs)


def _inferred(graph: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(graph, check_type=False, strict_mode=False, data_prop=True)
    except Exception:  # noqa: BLE001 - a graph inference cannot type is still checked, with fewer type checks
        return graph


def _learn(scope: _Scope, graph: onnx.GraphProto) -> None:
    for value in (*graph.input, *graph.output, *graph.value_info):
        tensor = value.type.tensor_type
        if value.type.HasField("tensor_type") and tensor.elem_type:
            scope.types[value.name] = tensor.elem_type
        if value.type.HasField("tensor_type") and tensor.HasField("shape"):
            scope.dims[value.name] = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
    for init in graph.initializer:
        scope.types[init.name] = init.data_type
        scope.dims[init.name] = list(init.dims)
        scope.weights[init.name] = init
        scope.built.add(init.name)
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in _STANDARD_DOMAINS and node.output:
            scope.weights[node.output[0]] = _constant_value(node)
            scope.built.add(node.output[0])
        elif node.op_type in ("Shape", "Size") and node.input and _static(scope.dims.get(node.input[0])):
            scope.built.update(node.output)
        elif (node.input and node.op_type not in _RANDOM and not _subgraphs(node)
              and all(not name or name in scope.built for name in node.input)):
            scope.built.update(node.output)


def _constant_value(node: onnx.NodeProto) -> onnx.TensorProto | None:
    for attr in node.attribute:
        if attr.name == "value":
            return attr.t
        if attr.name in ("value_float", "value_floats", "value_int", "value_ints"):
            value = helper.get_attribute_value(attr)
            dtype = np.float32 if "float" in attr.name else np.int64
            return numpy_helper.from_array(np.asarray(value, dtype=dtype))
    return None


def _subgraphs(node: onnx.NodeProto) -> list[tuple[str, onnx.GraphProto]]:
    found = []
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            found.append((attr.name, attr.g))
        elif attr.type == onnx.AttributeProto.GRAPHS:
            found += [(f"{attr.name}[{i}]", g) for i, g in enumerate(attr.graphs)]
    return found


def _static(dims: list[int | None] | None) -> bool:
    return dims is not None and all(d is not None for d in dims)


def _check_graph(graph: onnx.GraphProto, scope: _Scope, prefix: str, functions: dict, found: list) -> None:
    _learn(scope, graph)
    for index, node in enumerate(graph.node):
        label = prefix + (node.name or f"{node.op_type}#{index}")
        if node.domain not in _STANDARD_DOMAINS:
            function = functions.get((node.domain, node.op_type))
            if function is not None:  # a model-local function: TensorRT imports its body
                _check_graph(helper.make_graph(function.node, function.name, [], []), _Scope(), f"{label}/",
                             functions, found)
            else:
                found.append(Incompatibility(label, node.op_type, f"custom operator {node.domain}::{node.op_type} "
                                             "is not an ONNX operator: TensorRT parses it only through a plugin "
                                             "registered under that name"))
            continue
        for reason in _node_reasons(node, scope):
            found.append(Incompatibility(label, node.op_type, reason))
        for name, sub in _subgraphs(node):
            _check_graph(sub, scope.child(), f"{label}/{name}/", functions, found)


def _node_reasons(node: onnx.NodeProto, scope: _Scope) -> list[str]:
    spec = _OPS.get(node.op_type)
    if spec is None:
        return [f"{node.op_type} is not in {TENSORRT_OPS_SOURCE}'s operator table (docs/operators.md)"]
    if not spec["supported"]:
        note = f"; {spec['note']}" if spec.get("note") else ""
        return [f"{node.op_type} is not supported by {TENSORRT_OPS_SOURCE} (docs/operators.md marks it N){note}"]
    reasons = []
    reported = set()
    for name in (*node.input, *node.output):
        code = scope.types.get(name) if name else None
        if code is None or name in reported:
            continue
        doc = _DOC_TYPE.get(code)
        if doc is None or doc not in _TABLE["data_types"]:
            reported.add(name)
            reasons.append(f"tensor '{name}' is {_type_name(code)}, a type TensorRT does not take "
                           f"(it takes {', '.join(_TABLE['data_types'])})")
        elif doc in _TABLE["io_only_types"] and name in node.output and name not in scope.graph_outputs:
            reported.add(name)
            reasons.append(f"output '{name}' is {doc}: TensorRT takes {doc} only as a network input or output")
    typed = spec.get("types_of", "input")
    names = node.input if typed == "input" else node.output if typed == "output" else ()
    if names and names[0] and names[0] not in reported:
        code = scope.types.get(names[0])
        if code is not None and not _type_ok(code, spec["types"]):
            reasons.append(f"{typed} '{names[0]}' is {_type_name(code)}; {node.op_type} takes "
                           f"{', '.join(spec['types'])}")
    attrs = {a.name: a for a in node.attribute}
    for rule in spec.get("rules", ()):
        reason = _rule_reason(rule, node, attrs, scope)
        if reason:
            reasons.append(reason)
    return reasons


def _rule_reason(rule: dict, node: onnx.NodeProto, attrs: dict, scope: _Scope) -> str | None:
    doc = rule["doc"]
    if "refused_attrs" in rule:
        present = [name for name in rule["refused_attrs"] if name in attrs]
        return f"attribute {present[0]} is refused: {doc}" if present else None
    if "attr" in rule:
        return _attr_reason(rule, attrs, doc)
    if "check" in rule:
        return _check_reason(rule["check"], node, attrs, scope, doc)
    if "output" in rule:
        index = rule["output"]
        name = node.output[index] if index < len(node.output) else ""
        return f"output {index} ('{name}') is refused: {doc}" if name else None
    index = rule["input"]
    name = node.input[index] if index < len(node.input) else ""
    if not name:
        return None
    what = f"input {index} ('{name}')"
    if rule.get("absent"):
        return f"{what} is refused: {doc}"
    if "const" in rule:
        known = name in scope.weights if rule["const"] == "initializer" else name in scope.built
        return None if known else f"{what} is computed at run time: {doc}"
    if "types" in rule:
        code = scope.types.get(name)
        if code is not None and not _type_ok(code, rule["types"]):
            return f"{what} is {_type_name(code)}: {doc}"
        return None
    if "zero" in rule or "below" in rule:
        value = _value(scope.weights.get(name))
        if value is None or value.size == 0:
            return None
        if "zero" in rule and np.any(value != 0):
            return f"{what} is not zero ({_sample(value)}): {doc}"
        if "below" in rule and np.any(value >= rule["below"]):
            return f"{what} is {_sample(value)}: {doc}"
        return None
    dims = scope.dims.get(name)
    if dims is None:
        return None
    if "rank" in rule and len(dims) not in rule["rank"]:
        return f"{what} has rank {len(dims)}: {doc}"
    if rule.get("static") and not _static(dims):
        return f"{what} has dynamic dims {_dims(dims)}: {doc}"
    if "static_axis" in rule and dims:
        axis = _attr(attrs, rule["static_axis"], rule["default"])
        if -len(dims) <= axis < len(dims) and dims[axis] is None:
            return f"{what} has a dynamic dim on axis {axis} {_dims(dims)}: {doc}"
    return None


def _attr_reason(rule: dict, attrs: dict, doc: str) -> str | None:
    name = rule["attr"]
    if name not in attrs:
        return None
    value = _attr(attrs, name, None)
    if "allowed" in rule and value not in rule["allowed"]:
        return f"attribute {name}={value!r} is refused: {doc}"
    if "all" in rule and any(v != rule["all"] for v in value):
        return f"attribute {name}={list(value)} is refused: {doc}"
    if "len" in rule and len(value) not in rule["len"]:
        return f"attribute {name}={list(value)} is refused ({len(value)}-D): {doc}"
    if "types" in rule and value and not _type_ok(value, rule["types"]):
        return f"attribute {name}={_type_name(value)} is refused: {doc}"
    return None


def _check_reason(check: str, node: onnx.NodeProto, attrs: dict, scope: _Scope, doc: str) -> str | None:
    if check == "same_bidirectional_activations":
        acts = _attr(attrs, "activations", [])
        half = len(acts) // 2
        if _attr(attrs, "direction", "forward") == "bidirectional" and acts and acts[:half] != acts[half:]:
            return f"attribute activations={acts} differs between directions: {doc.format(op=node.op_type)}"
    elif check == "symmetric_pads":
        pads = _attr(attrs, "pads", [])
        half = len(pads) // 2
        if pads[:half] != pads[half:]:
            return f"attribute pads={pads} is refused: {doc}"
    elif check == "branch_outputs":
        then, other = attrs.get("then_branch"), attrs.get("else_branch")
        if then is None or other is None:
            return None
        shared = sorted({o.name for o in then.g.output} & {o.name for o in other.g.output})
        if shared:
            return f"both branches output tensor(s) named {', '.join(shared)}: {doc}"
        for a, b in zip(then.g.output, other.g.output, strict=False):
            ranks = [len(v.type.tensor_type.shape.dim) if v.type.tensor_type.HasField("shape") else None
                     for v in (a, b)]
            if None not in ranks and ranks[0] != ranks[1]:
                return f"branch outputs '{a.name}' and '{b.name}' have ranks {ranks[0]} and {ranks[1]}: {doc}"
    return None


def _attr(attrs: dict, name: str, default) -> Any:  # an ONNX attribute: int, float, string or a list of them
    if name not in attrs:
        return default
    value = helper.get_attribute_value(attrs[name])
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list):
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in value]
    return value


def _type_ok(code: int, allowed: list[str]) -> bool:
    doc = _DOC_TYPE.get(code)
    return doc in allowed or _DEMOTED.get(doc) in allowed


def _type_name(code: int) -> str:
    try:
        return onnx.TensorProto.DataType.Name(code)
    except ValueError:
        return f"element type {code}"


def _value(tensor: onnx.TensorProto | None) -> np.ndarray | None:
    if tensor is None:
        return None
    try:
        return numpy_helper.to_array(tensor)
    except Exception:  # noqa: BLE001 - external data not loaded, or a type numpy lacks: value unknown
        return None


def _sample(value: np.ndarray) -> str:
    flat = value.ravel()
    if flat.size <= 4:
        return str(flat.tolist())
    return "[" + ", ".join(map(str, flat[:3].tolist())) + f", ... ({flat.size} values)]"


def _dims(dims: list[int | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"

"""INT8 accuracy tools: accuracy budgets, per-layer sensitivity and float fallback for Q/DQ graphs.

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

import json
import math
import time
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import onnx

from xvol_export.compare import compare_arrays
from xvol_export.errors import XvolError
from xvol_export.export.precision import (
    CALIBRATION_METHODS,
    INT8_OP_TYPES,
    Int8Layout,
    _named_nodes,
    int8_float_nodes,
    int8_layout,
    to_int8_qdq,
)

METRICS = ("cosine", "top1")
FALLBACK_KEY = "xvol.int8_fallback"
CALIBRATION_KEY = "xvol.int8_calibration"
INT8_LAYOUT_KEY = "xvol.int8_layout"  # the Int8Layout the graph was made in: target, activations, weight bits, ISA
_BUDGET_FIX = "write METRIC=VALUE with METRIC cosine or top1, e.g. cosine=0.99, top1=0.995 or top1=99.5%"
_QDQ = ("QuantizeLinear", "DequantizeLinear")


# --- budgets ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AccuracyBudget:
    """The least output agreement an INT8 graph must keep with the reference: ``metric`` >= ``value``.

    ``metric`` is ``"cosine"`` (cosine similarity of the outputs) or ``"top1"`` (top-1 agreement,
    a fraction); ``value`` is in (0, 1].
    """

    metric: str
    value: float

    def __post_init__(self):
        if self.metric not in METRICS:
            raise XvolError(f"Unknown accuracy metric {self.metric!r}: {_BUDGET_FIX}.")
        if isinstance(self.value, bool) or not isinstance(self.value, (int, float, np.floating, np.integer)):
            raise XvolError(f"The accuracy budget must be a number, got {self.value!r}: {_BUDGET_FIX}.")
        if not math.isfinite(self.value) or not 0 < self.value <= 1:
            raise XvolError(f"The accuracy budget {self.metric}={self.value} is out of range: it must be a fraction "
                            f"in (0, 1]; {_BUDGET_FIX}.")
        object.__setattr__(self, "value", float(self.value))

    def figure(self, figures: "Figures") -> float:
        """The budget's metric in ``figures``."""
        value = figures.cosine if self.metric == "cosine" else figures.top1_agreement
        if value is None:
            raise XvolError("A top1 budget needs a classifier output (N x classes), and this model's output is not "
                            "one; use a cosine budget, e.g. cosine=0.99.")
        return value

    def met_by(self, figures: "Figures") -> bool:
        return self.figure(figures) >= self.value

    def describe(self) -> str:
        return f"{_LABELS[self.metric]} >= {_fmt(self.metric, self.value)}"

    def to_dict(self) -> dict:
        return {"metric": self.metric, "value": self.value}


def parse_budget(text: str | AccuracyBudget) -> AccuracyBudget:
    """``cosine=0.99``, ``top1=0.995`` or ``top1=99.5%`` as an :class:`AccuracyBudget` (``XvolError`` otherwise)."""
    if isinstance(text, AccuracyBudget):
        return text
    if not isinstance(text, str) or "=" not in text:
        raise XvolError(f"Cannot read the accuracy budget {text!r}: {_BUDGET_FIX}.")
    metric, _, raw = text.partition("=")
    metric = metric.strip().lower().replace("-", "")
    raw = raw.strip()
    if metric not in METRICS:
        raise XvolError(f"Unknown accuracy metric {metric!r} in {text!r}: {_BUDGET_FIX}.")
    percent = raw.endswith("%")
    if percent:
        if metric == "cosine":
            raise XvolError(f"A cosine budget is a fraction, not a percentage ({text!r}): write e.g. cosine=0.99.")
        raw = raw[:-1].strip()
    try:
        value = float(raw)
    except ValueError:
        raise XvolError(f"Cannot read the number {raw!r} in the accuracy budget {text!r}: {_BUDGET_FIX}.") from None
    if not math.isfinite(value):
        raise XvolError(f"The accuracy budget {text!r} is not a finite number: {_BUDGET_FIX}.")
    if percent:
        value /= 100
    if not 0 < value <= 1:
        hint = f" (did you mean top1={raw}%?)" if metric == "top1" and not percent and 1 < value <= 100 else ""
        raise XvolError(f"The accuracy budget {text!r} is out of range: it must be in (0, 1]"
                        f"{' (0 to 100 %)' if percent else ''}{hint}; {_BUDGET_FIX}.")
    return AccuracyBudget(metric, value)


# --- figures ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Figures:
    """Output agreement of a graph with the reference (``truth``) on the evaluation inputs."""

    cosine: float
    top1_agreement: float | None
    rel_l2: float

    def to_dict(self) -> dict:
        return {"cosine": self.cosine, "top1_agreement": self.top1_agreement, "rel_l2": self.rel_l2}


_LABELS = {"cosine": "cosine", "top1": "top-1 agreement"}


def _fmt(metric: str, value: float | None) -> str:
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


# --- the quantizable layers and float variants --------------------------------------------------------------


def quantizable_layers(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes :func:`to_int8_qdq` quantizes (Conv/Gemm/MatMul other than one-hot shift convs),
    in graph order. Unnamed or duplicate names are those :func:`to_int8_qdq` gives (``OpType_xvol_INDEX``)."""
    model = _named_nodes(model)
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
    fp32 = _named_nodes(fp32)
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
    if method not in CALIBRATION_METHODS:
        raise XvolError(f"Unknown calibration method '{method}'. Choose one of: {', '.join(CALIBRATION_METHODS)}.")
    fp32 = _named_nodes(fp32_graph)
    start = time.perf_counter()
    layout = layout or int8_layout("tensorrt")
    quantized = to_int8_qdq(fp32, calibration, input_name, calibrate_method=method, layout=layout)
    return QuantizedBase(fp32, quantized, quantizable_layers(fp32), method, int(np.shape(calibration)[0]),
                         time.perf_counter() - start, layout)


# --- sensitivity --------------------------------------------------------------------------------------------


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
    inputs, truth = _check_eval(inputs, truth)
    base = _base(fp32_graph, calibration, method, input_name, base, layout)
    op_types = {n.name: n.op_type for n in base.fp32.graph.node}
    start = time.perf_counter()
    backend = _runtime(base.layout)
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


# --- fallback -----------------------------------------------------------------------------------------------


@dataclass
class FallbackResult:
    """The INT8 graph with the fewest sensitive layers in float that meets ``budget`` (``met``), or the
    figures showing that none does."""

    graph: onnx.ModelProto
    budget: AccuracyBudget
    met: bool
    kept_float: list[dict]  # {"name", "reason"}, in the order they were kept
    before: Figures  # every quantizable layer quantized
    after: Figures  # the returned graph
    all_float: Figures | None  # every quantizable layer in float (the fp32 graph's own); None if not measured
    method: str
    calibration_images: int
    eval_images: int
    steps: list[dict] = field(default_factory=list)  # figures after each layer kept in float
    sensitivity: SensitivityReport | None = field(default=None, repr=False, compare=False)

    def summary(self) -> str:
        """One line: what was kept in float and the figures, or why no graph meets the budget."""
        metric = self.budget.metric
        figure = lambda f: _fmt(metric, self.budget.figure(f))  # noqa: E731
        if self.met:
            kept = f"{len(self.kept_float)} layer(s) kept in float" if self.kept_float else "no layer kept in float"
            return (f"{self.budget.describe()} met with {kept}: {_LABELS[metric]} {figure(self.before)} "
                    f"(all quantized) -> {figure(self.after)}")
        return (f"No INT8 graph meets {self.budget.describe()}: {_LABELS[metric]} {figure(self.before)} with every "
                f"layer quantized, and only {figure(self.all_float or self.after)} with every quantizable layer "
                "in float (the fp32 graph's own figure); lower the budget or export fp16/fp32.")

    def to_dict(self) -> dict:
        return {
            "budget": self.budget.to_dict(),
            "met": self.met,
            "kept_float": [dict(item) for item in self.kept_float],
            "before": self.before.to_dict(),
            "after": self.after.to_dict(),
            "all_float": self.all_float.to_dict() if self.all_float else None,
            "method": self.method,
            "calibration_images": self.calibration_images,
            "eval_images": self.eval_images,
            "steps": [dict(step) for step in self.steps],
            "summary": self.summary(),
        }


def quantize_with_fallback(fp32_graph: onnx.ModelProto, calibration: np.ndarray, inputs: np.ndarray,
                           truth: np.ndarray, budget: AccuracyBudget | str, *, method: str = "minmax",
                           input_name: str = "input", sensitivity: SensitivityReport | None = None,
                           layout: Int8Layout | None = None) -> FallbackResult:
    """Quantize ``fp32_graph``; while ``budget`` is not met on ``inputs`` against ``truth``, keep one more layer
    in float, most sensitive first (``sensitivity``; measured here, on the same calibration, when not given
    and needed), recomputing the figures after each.

    The figures are those of the runtime ``layout`` is for (:func:`layer_sensitivity`). The result's graph
    records ``xvol.int8_fallback`` (budget, layers kept in float and why, figures) and ``xvol.int8_calibration``
    (method, calibration images) in its ``metadata_props``. ``met`` is False when even every layer in float
    misses the budget; the caller reports FAILED with the figures.
    """
    budget = parse_budget(budget)
    inputs, truth = _check_eval(inputs, truth)
    base = sensitivity.base if sensitivity is not None else None
    if sensitivity is not None:
        if sensitivity.method != method:
            raise XvolError(f"The sensitivity report was measured with {sensitivity.method} calibration, not "
                            f"{method}; pass method={sensitivity.method!r} or a report made with {method}.")
        if sorted(sensitivity.ranking) != sorted(quantizable_layers(fp32_graph)):
            raise XvolError("The sensitivity report is for another graph (its layers differ); measure it on this one.")
    base = _base(fp32_graph, calibration, method, input_name, base, layout)
    backend = _runtime(base.layout)
    before = evaluate(base.variant(), inputs, truth, input_name, backend)
    if sensitivity is None and not budget.met_by(before):  # ranked only when a layer has to stay in float
        sensitivity = layer_sensitivity(base.fp32, calibration, inputs, truth, method=method, input_name=input_name,
                                        base=base)
    metric = budget.metric
    floats: list[str] = []
    kept: list[dict] = []
    steps: list[dict] = []
    after, graph = before, base.variant()
    ranking = sensitivity.ranking if sensitivity is not None else []
    if sensitivity is not None and not budget.met_by(sensitivity.all_float):
        ranking = []  # not even the all-float graph meets it: no need to try the layers one by one
        after, graph = sensitivity.all_float, base.variant(sensitivity.ranking)
    for name in ranking:
        if budget.met_by(after):
            break
        floats.append(name)
        graph = base.variant(floats)
        after = evaluate(graph, inputs, truth, input_name, backend)
        alone, none = budget.figure(sensitivity.layer(name).float_alone), budget.figure(sensitivity.all_quantized)
        kept.append({
            "name": name,
            "reason": (f"left in float: alone in float it {'lifts' if alone > none else 'takes'} {_LABELS[metric]} "
                       f"{_fmt(metric, none)} -> {_fmt(metric, alone)}"
                       f"; with it{_and_before(len(floats) - 1)} in float the graph reaches "
                       f"{_fmt(metric, budget.figure(after))}"),
        })
        steps.append({"float_layers": len(floats), "name": name, **after.to_dict()})
    met = budget.met_by(after)
    all_float = sensitivity.all_float if sensitivity is not None else None
    result = FallbackResult(graph, budget, met, kept, before, after, all_float, base.method,
                            base.calibration_images, len(inputs), steps, sensitivity)
    from xvol_export.export.onnx_graph import set_metadata

    set_metadata(graph, {
        FALLBACK_KEY: json.dumps({"budget": budget.to_dict(), "met": met, "kept_float": kept,
                                  "before": before.to_dict(), "after": after.to_dict(),
                                  "eval_images": len(inputs)}),
        CALIBRATION_KEY: json.dumps({"method": base.method, "images": base.calibration_images}),
    })
    return result


# --- helpers ------------------------------------------------------------------------------------------------


def _and_before(count: int) -> str:
    return "" if count == 0 else f" and the {count} layer{'s' if count > 1 else ''} kept before it"


def _base(fp32_graph, calibration, method, input_name, base: QuantizedBase | None,
          layout: Int8Layout | None = None) -> QuantizedBase:
    if base is None:
        return quantize_once(fp32_graph, calibration, method=method, input_name=input_name, layout=layout)
    if base.method != method:
        raise XvolError(f"The quantized graph was calibrated with {base.method}, not {method}; pass "
                        f"method={base.method!r}.")
    if layout is not None and base.layout != layout:
        raise XvolError(f"The quantized graph is laid out for {base.layout.target}, not {layout.target}; "
                        "quantize again for this target.")
    return base


def _runtime(layout: Int8Layout) -> str:
    """The runtime whose figures decide for a layout: OpenVINO's own, else ONNX Runtime's (TensorRT's Q/DQ graph
    runs there as DQ -> float op, a faithful simulation of it)."""
    return "openvino" if layout.target == "openvino" else "onnxruntime"


def _check_eval(inputs, truth) -> tuple[np.ndarray, np.ndarray]:
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


__all__ = [
    "AccuracyBudget", "CALIBRATION_KEY", "FALLBACK_KEY", "INT8_LAYOUT_KEY", "FallbackResult", "Figures",
    "LayerSensitivity", "QuantizedBase", "SensitivityReport", "evaluate", "keep_in_float", "layer_sensitivity",
    "parse_budget", "quantizable_layers", "quantize_once", "quantize_with_fallback",
]


"""Float fallback: the int8 graph with the fewest sensitive layers kept in float that meets an accuracy budget."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import onnx

from xvol_export.errors import XvolError
from xvol_export.export.int8.figures import LABELS, Figures, check_eval, evaluate, format_figure
from xvol_export.export.int8.layout import Int8Layout
from xvol_export.export.int8.options import AccuracyBudget, parse_budget
from xvol_export.export.int8.sensitivity import SensitivityReport, layer_sensitivity, runtime_of
from xvol_export.export.int8.variants import calibrated_base, quantizable_layers
from xvol_export.export.onnx_graph import set_metadata
from xvol_export.metadata_keys import INT8_CALIBRATION, INT8_FALLBACK


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
        figure = lambda f: format_figure(metric, self.budget.figure(f))  # noqa: E731
        if self.met:
            kept = f"{len(self.kept_float)} layer(s) kept in float" if self.kept_float else "no layer kept in float"
            return (f"{self.budget.describe()} met with {kept}: {LABELS[metric]} {figure(self.before)} "
                    f"(all quantized) -> {figure(self.after)}")
        return (f"No INT8 graph meets {self.budget.describe()}: {LABELS[metric]} {figure(self.before)} with every "
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
    inputs, truth = check_eval(inputs, truth)
    base = sensitivity.base if sensitivity is not None else None
    if sensitivity is not None:
        if sensitivity.method != method:
            raise XvolError(f"The sensitivity report was measured with {sensitivity.method} calibration, not "
                            f"{method}; pass method={sensitivity.method!r} or a report made with {method}.")
        if sorted(sensitivity.ranking) != sorted(quantizable_layers(fp32_graph)):
            raise XvolError("The sensitivity report is for another graph (its layers differ); measure it on this one.")
    base = calibrated_base(fp32_graph, calibration, method, input_name, base, layout)
    backend = runtime_of(base.layout)
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
            "reason": (f"left in float: alone in float it {'lifts' if alone > none else 'takes'} {LABELS[metric]} "
                       f"{format_figure(metric, none)} -> {format_figure(metric, alone)}"
                       f"; with it{_and_before(len(floats) - 1)} in float the graph reaches "
                       f"{format_figure(metric, budget.figure(after))}"),
        })
        steps.append({"float_layers": len(floats), "name": name, **after.to_dict()})
    met = budget.met_by(after)
    all_float = sensitivity.all_float if sensitivity is not None else None
    result = FallbackResult(graph, budget, met, kept, before, after, all_float, base.method,
                            base.calibration_images, len(inputs), steps, sensitivity)
    set_metadata(graph, {
        INT8_FALLBACK: json.dumps({"budget": budget.to_dict(), "met": met, "kept_float": kept,
                                  "before": before.to_dict(), "after": after.to_dict(),
                                  "eval_images": len(inputs)}),
        INT8_CALIBRATION: json.dumps({"method": base.method, "images": base.calibration_images}),
    })
    return result


def _and_before(count: int) -> str:
    return "" if count == 0 else f" and the {count} layer{'s' if count > 1 else ''} kept before it"

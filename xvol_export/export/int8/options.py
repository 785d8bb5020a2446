"""What an int8 export may ask for, each choice checked in one place: calibration method, target runtime,
weight bits, and the accuracy budget (:class:`Int8Options` gathers them)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from xvol_export.errors import XvolError
from xvol_export.export.int8.figures import LABELS, format_figure
from xvol_export.export.int8.layout import Int8Layout, check_target, check_weight_bits, int8_layout
from xvol_export.naming import setting

CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
METRICS = ("cosine", "top1")
# the runtime each export format's int8 graph is laid out for
TARGET_OF_FORMAT = {"onnx": "onnxruntime", "openvino": "openvino", "engine": "tensorrt"}
_BUDGET_FIX = "write METRIC=VALUE with METRIC cosine or top1, e.g. cosine=0.99, top1=0.995 or top1=99.5%"


def check_method(method: str) -> str:
    """``method`` if it is one of :data:`CALIBRATION_METHODS` (:class:`XvolError` otherwise)."""
    if method not in CALIBRATION_METHODS:
        raise XvolError(f"Unknown {setting('calib_method')} '{method}'. "
                        f"Choose one of: {', '.join(CALIBRATION_METHODS)}.")
    return method


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

    def figure(self, figures) -> float:
        """The budget's metric in ``figures`` (:class:`~xvol_export.export.int8.figures.Figures`)."""
        value = figures.cosine if self.metric == "cosine" else figures.top1_agreement
        if value is None:
            raise XvolError("A top1 budget needs a classifier output (N x classes), and this model's output is not "
                            "one; use a cosine budget, e.g. cosine=0.99.")
        return value

    def met_by(self, figures) -> bool:
        return self.figure(figures) >= self.value

    def describe(self) -> str:
        return f"{LABELS[self.metric]} >= {format_figure(self.metric, self.value)}"

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


@dataclass(frozen=True)
class Int8Options:
    """How an int8 graph is made: ONNX Runtime's calibration ``method`` (minmax, entropy, percentile),
    a per-layer ``sensitivity`` report, and ``budget``: keep the most sensitive layers in float until
    it is met (``--int8-fallback --accuracy-budget``). The last two measure on the verification data, on the
    runtime the graph is for. ``target``: that runtime (tensorrt, onnxruntime, openvino; ``auto``: the export's
    format's, onnxruntime for an ONNX graph), which sets the Q/DQ layout; ``weight_bits``: 8, 7, or ``auto``
    (7 where the target's CPU kernels would saturate on this machine's ISA). Checked when made; a budget given
    as text (``cosine=0.99``) is parsed."""

    method: str = "minmax"
    sensitivity: bool = False
    budget: AccuracyBudget | None = None
    target: str = "auto"
    weight_bits: str = "auto"

    def __post_init__(self):
        check_method(self.method)
        check_target(self.target, auto=True)
        object.__setattr__(self, "weight_bits", check_weight_bits(self.weight_bits))
        if self.budget is not None:
            object.__setattr__(self, "budget", parse_budget(self.budget))

    @property
    def measures(self) -> bool:
        """Whether the int8 graph is measured on held-out data (a sensitivity report or a fallback budget)."""
        return self.sensitivity or self.budget is not None

    def target_for(self, format: str = "onnx") -> str:
        """The runtime an int8 graph of ``format`` is laid out for: ``target``, or the format's own for ``auto``."""
        return TARGET_OF_FORMAT.get(format, "onnxruntime") if self.target == "auto" else self.target

    def layout(self, format: str = "onnx") -> Int8Layout:
        """The Q/DQ layout for an export of ``format`` (:func:`xvol_export.export.int8.layout.int8_layout`)."""
        return int8_layout(self.target_for(format), self.weight_bits)

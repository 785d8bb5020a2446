"""Default verdicts: scale-free gates that know what each precision can reach.

A candidate is judged by its error against the float64 training form (the function's ground truth),
next to baselines of the same precision on the same inputs: honest implementations, each measured
against its own float64 form (:meth:`~xvol_export.verify.run.Reference.baselines`: the training form run
at that precision, the deploy form run at it with its folded weights rounded once, and a model of the
rounding other runtimes add). An fp32 fold or graph passes when its error is within a small factor of
the largest of them, so no single lucky baseline decides; fp16 and bf16 the same at their precision;
int8 is judged on task figures (cosine, top-1 agreement, accuracy), which only real data can show.
Every figure is relative to the output's own size, so the verdict does not depend on the scale of the
activations. ``benchmarks/gates.py`` measures how far honest and faulty candidates fall from the limits.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace

from xvol_export.compare import ErrorStats

PRECISIONS = ("fp64", "fp32", "fp16", "bf16", "int8")
# Unit roundoff: the relative error of storing one number. A baseline error below it counts as it.
UNIT_ROUNDOFF = {"fp64": 2.0**-53, "fp32": 2.0**-24, "fp16": 2.0**-11, "bf16": 2.0**-8}


@dataclass(frozen=True)
class Gate:
    """The pass conditions for one candidate precision.

    ``factor``: the candidate's relative L2 error may be at most ``factor`` times the largest finite
    baseline's (honest implementations at ``baseline`` precision, each against its own float64 form),
    floored at ``floor``; its largest error in units of the output's RMS at most ``max_error_factor``
    times theirs (an extreme of many elements varies more between implementations). The
    ``max_*``/``min_*`` bounds hold whatever the baselines; ``fallback`` replaces the relative
    conditions when there is no float64 reference or no baseline is finite. ``needs_data``: random
    inputs cannot judge this precision, so without real data only finiteness is checked.
    """

    precision: str
    baseline: str | None = None
    factor: float | None = None
    max_error_factor: float | None = None
    floor: float = 0.0
    max_rel_l2: float | None = None
    max_error_rms: float | None = None
    min_cosine: float | None = None
    min_top1: float | None = None
    max_accuracy_drop: float | None = None
    needs_data: bool = False
    reason: str = ""
    fallback: "Gate | None" = field(default=None, repr=False)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["fallback"] = self.fallback.to_dict() if self.fallback else None
        return out


def _fixed(precision: str, reason: str, **bounds) -> Gate:
    return Gate(precision, reason=reason, **bounds)


# One table, one reason per row (the README's verification section shows the same table).
DEFAULT_GATES: dict[str, Gate] = {
    "fp64": Gate(
        "fp64", max_rel_l2=1e-10, max_error_rms=1e-9,
        reason="no wider type to measure against: fixed bounds far above fp64 rounding (1e-16) and far below "
               "anything fp32 can do (1e-7), so only an inexact fold fails",
    ),
    "fp32": Gate(
        "fp32", baseline="fp32", factor=4.0, max_error_factor=8.0, floor=UNIT_ROUNDOFF["fp32"],
        reason="an exact fold or fp32 graph only rounds otherwise: within 4x (the max error 8x) the largest of the "
               "fp32 baselines, whatever the scale of the activations (benchmarks/gates.py: honest folds, ONNX "
               "Runtime and OpenVINO graphs at most 0.55 of the limit over 3,360 verdicts; a kernel scaled by "
               "1 + 1e-4 in a graph 0.76x to 419x it, caught wherever its effect exceeds 4.5x the graph's own "
               "error)",
        fallback=_fixed("fp32", "fixed bounds, 100x fp32 rounding", max_rel_l2=1e-5,
                        max_error_rms=1e-4),
    ),
    "fp16": Gate(
        "fp16", baseline="fp16", factor=4.0, max_error_factor=8.0, floor=UNIT_ROUNDOFF["fp16"],
        reason="fp16 rounding dominates: within 4x (the max error 8x) the largest of the fp16 baselines "
               "(benchmarks/gates.py: fp16 graphs at most 0.29 of the limit over 840 verdicts)",
        fallback=_fixed("fp16", "fixed bounds", max_rel_l2=0.1, min_cosine=0.995),
    ),
    "bf16": Gate(
        "bf16", baseline="bf16", factor=4.0, max_error_factor=8.0, floor=UNIT_ROUNDOFF["bf16"],
        reason="bf16 rounding dominates: within 4x (the max error 8x) the largest of the bf16 baselines",
        fallback=_fixed("bf16", "fixed bounds", max_rel_l2=0.2, min_cosine=0.98),
    ),
    "int8": Gate(
        "int8", baseline="fp32", min_cosine=0.99, min_top1=0.95, max_accuracy_drop=0.01, needs_data=True,
        reason="int8 error is a task question: cosine >= 0.99 and top-1 agreement >= 95 % with the float64 "
               "training form, and at most 1 point of accuracy lost, on real data",
    ),
}


def default_gate(precision: str) -> Gate:
    try:
        return DEFAULT_GATES[precision]
    except KeyError:
        raise ValueError(f"no gate for precision {precision!r}; known: {', '.join(DEFAULT_GATES)}") from None


def tolerance_basis(precision: str) -> str:
    """The precision whose default tolerances complete a user's ``--atol``/``--rtol`` for an export at
    ``precision``: bf16 lives in OpenVINO, not in the graph (an fp32 graph), so it starts from fp32's."""
    return "fp32" if precision == "bf16" else precision


@dataclass
class Condition:
    """One figure against its limit: ``value <= limit`` (``at_least``: ``value >= limit``)."""

    figure: str
    value: float | None
    limit: float
    at_least: bool = False
    note: str = ""

    @property
    def passed(self) -> bool:
        if self.value is None or math.isnan(self.value):
            return False
        return self.value >= self.limit if self.at_least else self.value <= self.limit

    def describe(self) -> str:
        sign = ">=" if self.at_least else "<="
        text = f"{self.figure} {_fmt(self.value)} (needs {sign} {_fmt(self.limit)}"
        if not self.passed and not self.at_least and self.value is not None and self.limit > 0:
            text += f", {self.value / self.limit:.3g}x over"
        return text + (f"; {self.note})" if self.note else ")")

    def to_dict(self) -> dict:
        return {"figure": self.figure, "value": self.value, "limit": self.limit,
                "at_least": self.at_least, "passed": self.passed, "note": self.note}


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def gate_conditions(gate: Gate, candidate: ErrorStats, baselines: Mapping[str, ErrorStats] | None, *,
                    real_data: bool, accuracy_drop: float | None = None) -> tuple[list[Condition], list[str]]:
    """The conditions ``candidate`` (against float64) must meet, and notes on how they were chosen.

    ``baselines``: honest implementations at the gate's baseline precision, each against its own float64
    truth, by what they are (e.g. ``"fp32 training form"``); a ratio limit is ``factor`` times the largest
    finite one (floored at ``floor``), so one lucky baseline cannot make an honest candidate fail.
    """
    notes = []
    conditions = [Condition("non-finite outputs", 0.0 if candidate.finite else 1.0, 0.0)]
    if gate.needs_data and not real_data:
        notes.append(f"random inputs cannot judge an {gate.precision} graph: only finiteness was checked; "
                     "pass --data with real held-out inputs to gate on cosine and top-1 agreement")
        return conditions, notes
    active = gate
    if gate.factor is not None:
        usable = {label: stats for label, stats in (baselines or {}).items() if stats.finite}
        if usable:
            for figure, attr, factor in (("rel L2", "rel_l2", gate.factor),
                                         ("max error / RMS", "max_error_rms", gate.max_error_factor or gate.factor)):
                parts = {label: getattr(stats, attr) for label, stats in usable.items()}
                limit = factor * max(*parts.values(), gate.floor)
                conditions.append(Condition(figure, getattr(candidate, attr), limit,
                                            note=f"{factor:g}x {_made_of(parts, gate)}"))
        else:
            active = gate.fallback or replace(gate, factor=None)
            why = "no float64 reference" if not baselines else f"no {gate.baseline} baseline is finite"
            notes.append(f"{why}: judged on {active.reason}")
    for figure, bound, value, at_least in (
        ("rel L2", active.max_rel_l2, candidate.rel_l2, False),
        ("max error / RMS", active.max_error_rms, candidate.max_error_rms, False),
        ("cosine", active.min_cosine, candidate.cosine, True),
        ("top-1 agreement", active.min_top1, candidate.top1_agreement, True),
        ("accuracy drop", active.max_accuracy_drop, accuracy_drop, False),
    ):
        if bound is None or (value is None and figure in ("top-1 agreement", "accuracy drop")):
            continue  # top-1 only for classifiers, accuracy only with labels
        conditions.append(Condition(figure, value, bound, at_least))
    return conditions, notes


def _made_of(parts: Mapping[str, float], gate: Gate) -> str:
    """What a ratio limit was made of: the largest baseline (or the floor), with the others for comparison."""
    largest = max(parts, key=parts.__getitem__)
    if parts[largest] < gate.floor:
        return f"the {gate.baseline} unit roundoff {_fmt(gate.floor)} (every baseline is below it)"
    others = ", ".join(f"{label} {_fmt(value)}" for label, value in parts.items() if label != largest)
    return f"the {largest}'s {_fmt(parts[largest])}" + (f"; {others}" if others else "")

"""Judging a candidate's outputs against a :class:`~xvol_export.verify.run.Reference`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from xvol_export.compare import ErrorStats, Tolerance, compare_arrays
from xvol_export.results import JobResult
from xvol_export.verify.gates import UNIT_ROUNDOFF, Condition, Gate, default_gate, gate_conditions
from xvol_export.verify.outputs import Outputs

if TYPE_CHECKING:
    from xvol_export.verify.run import Reference


@dataclass
class Check:
    """One output (or block) of the candidate against float64: its errors, the baselines', the verdict.

    ``baselines``: honest implementations at the gate's precision, each against its own float64 form, by what
    they are; the first is the reference model itself run at that precision.
    """

    name: str
    candidate: ErrorStats
    baselines: dict[str, ErrorStats]
    conditions: list[Condition]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.conditions)

    @property
    def baseline(self) -> ErrorStats | None:
        """The reference model run at the gate's precision (None without a float64 reference)."""
        return next(iter(self.baselines.values()), None)

    @property
    def ratio(self) -> float | None:
        """The candidate's relative L2 error over the largest finite baseline's (None without one)."""
        largest = max((b.rel_l2 for b in self.baselines.values() if b.finite), default=0.0)
        return self.candidate.rel_l2 / largest if largest else None

    def failures(self) -> list[str]:
        return [c.describe() for c in self.conditions if not c.passed]

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "passed": self.passed,
            "candidate": self.candidate.to_dict(),
            "baseline": self.baseline.to_dict() if self.baseline else None,
            "baselines": {label: stats.to_dict() for label, stats in self.baselines.items()},
            "ratio_rel_l2": self.ratio,
            "conditions": [c.to_dict() for c in self.conditions],
        }


@dataclass
class BlockCheck:
    """One block: ``isolated`` runs the candidate block on the float64 reference block's input (the
    block's own error, which decides); ``in_network`` compares its output where it stands (the error
    of everything up to it)."""

    name: str
    isolated: Check
    in_network: Check

    def to_dict(self) -> dict:
        return {"name": self.name, "isolated": self.isolated.to_dict(), "in_network": self.in_network.to_dict()}


@dataclass
class VerifyReport(JobResult):
    """A candidate judged against a reference: every output by name, every block, the gate and the inputs."""

    reference: str
    candidate: str
    precision: str
    gate: Gate | None
    tolerance: Tolerance | None
    input_source: str
    input_shape: tuple[int, ...]
    checks: list[Check]
    float64: bool = True
    real_data: bool = False
    seed: int | None = None
    blocks: list[BlockCheck] = field(default_factory=list)
    accuracy: dict | None = None
    outputs: dict[str, np.ndarray] | None = field(default=None, repr=False)  # raw outputs, not serialized
    fold_exactness: list[Check] = field(default_factory=list)  # a fold's float64 form, output by output, block by block

    @property
    def output(self) -> ErrorStats:
        """The first output's errors against the reference (most models have one output)."""
        return self.checks[0].candidate

    @property
    def passed(self) -> bool:
        return (all(c.passed for c in self.checks) and all(b.isolated.passed for b in self.blocks)
                and all(c.passed for c in self.fold_exactness))

    @property
    def judged_by(self) -> str:
        if self.tolerance is not None:
            return f"tolerance {self.tolerance.describe()} (given by the user)"
        return f"default {self.precision} gate" + ("" if self.float64 else " (no float64 reference: fixed bounds)")

    @property
    def worst_block(self) -> BlockCheck | None:
        """The block whose own (isolated) error is largest."""
        return max(self.blocks, key=lambda b: b.isolated.candidate.rel_l2, default=None)

    def failure_summary(self) -> str:
        """What failed and by how much (empty when passed)."""
        lines = [f"output '{c.name}': " + "; ".join(c.failures()) for c in self.checks if not c.passed]
        lines += [f"block {b.name}: " + "; ".join(b.isolated.failures()) for b in self.blocks if not b.isolated.passed]
        lines += [f"{c.name}: " + "; ".join(c.failures()) for c in self.fold_exactness if not c.passed]
        return " | ".join(lines)

    def summary(self) -> dict:
        """The figures an artifact keeps about how it was verified (JSON-plain)."""
        first = self.checks[0]
        out = self.output
        return {
            "reference": self.reference + (" in float64" if self.float64 else ""),
            "inputs": self.input_source,
            "judged_by": self.judged_by,
            "passed": self.passed,
            "rel_l2": out.rel_l2,
            "max_error_rms": out.max_error_rms,
            "cosine": out.cosine,
            "max_abs": out.max_abs,
            "median_abs": out.median_abs,
            "p99_abs": out.p99_abs,
            "top1_agreement": out.top1_agreement,
            "baseline_rel_l2": first.baseline.rel_l2 if first.baseline else None,
            "ratio_rel_l2": first.ratio,
            "worst_block": self.worst_block.name if self.worst_block else None,
            "accuracy": self.accuracy,
        }

    def to_dict(self) -> dict:
        worst = self.worst_block
        return {
            **self.job_fields(),
            "reference": self.reference,
            "candidate": self.candidate,
            "precision": self.precision,
            "judged_by": self.judged_by,
            "float64_reference": self.float64,
            "gate": self.gate.to_dict() if self.gate and self.tolerance is None else None,
            "tolerance": self.tolerance.to_dict() if self.tolerance else None,
            "inputs": {"source": self.input_source, "shape": list(self.input_shape), "seed": self.seed,
                       "real_data": self.real_data},
            "output": self.output.to_dict(),
            "outputs": [c.to_dict() for c in self.checks],
            "blocks": [b.to_dict() for b in self.blocks],
            "fold_exactness": [c.to_dict() for c in self.fold_exactness],
            "worst_block": worst.name if worst else None,
            "accuracy": self.accuracy,
        }


def judge(reference: Reference, candidate: Outputs, precision: str, *, candidate_name: str = "candidate",
          tolerance: Tolerance | None = None, gate: Gate | None = None, seed: int | None = None) -> VerifyReport:
    """Compare ``candidate`` with ``reference`` output by output (by name) and block by block.

    The verdict is ``tolerance`` when given (Polygraphy's semantics, against the float64 reference),
    else ``gate`` (default: the one for ``precision``).
    """
    gate = gate or default_gate(precision)
    data = reference.data
    real_data = not data.synthetic
    ratio_gate = tolerance is None and gate.factor is not None
    use_baselines = reference.float64 and ratio_gate
    labels = np.asarray(data.labels) if data.labels is not None else None
    notes = list(reference.notes)
    missing = sorted(set(reference.truth.values) ^ set(candidate.values))
    if missing:
        raise ValueError(f"outputs do not match by name: {', '.join(missing)} only on one side "
                         f"(reference: {sorted(reference.truth.values)}, candidate: {sorted(candidate.values)})")

    def check(name, key, truth, cand, accuracy_drop=None) -> tuple[Check, list[str]]:
        stats = compare_arrays(truth, cand, tolerance)
        base_stats = dict(reference.baseline_stats(gate.baseline, key, bool(candidate.blocks))) if use_baselines \
            else {}
        if tolerance is not None:
            conditions = [Condition(f"tolerance ({tolerance.describe()}): {stats.min_required()}",
                                    0.0 if stats.passed else 1.0, 0.0)]
            return Check(name, stats, base_stats, conditions), []
        conditions, why = gate_conditions(gate, stats, base_stats if reference.float64 else None,
                                          real_data=real_data, accuracy_drop=accuracy_drop)
        return Check(name, stats, base_stats, conditions), why

    checks, accuracy = [], None
    for name, truth in reference.truth.values.items():
        cand = candidate.values[name]
        if truth.shape != cand.shape:
            raise ValueError(f"output '{name}' has shape {cand.shape}, the reference's is {truth.shape}")
        drop = None
        if labels is not None and truth.ndim == 2 and len(labels) == len(truth):
            accuracy = {"count": len(labels), "reference": float((truth.argmax(1) == labels).mean()),
                        "candidate": float((cand.argmax(1) == labels).mean())}
            at_baseline = reference.baseline_accuracy(gate.baseline, name) if reference.float64 else None
            if at_baseline is not None:
                accuracy["baseline"] = at_baseline
            drop = accuracy["reference"] - accuracy["candidate"]
        result, why = check(name, f"output:{name}", truth, cand, drop)
        checks.append(result)
        notes += [n for n in why if n not in notes]

    blocks = []
    for name in reference.blocks:
        if name not in candidate.blocks or name not in candidate.isolated:
            continue
        truth_block = reference.truth.blocks[name]
        isolated, _ = check(f"{name} (alone)", f"isolated:{name}", truth_block, candidate.isolated[name])
        in_network, _ = check(f"{name} (in network)", f"network:{name}", truth_block, candidate.blocks[name])
        blocks.append(BlockCheck(name, isolated, in_network))

    return VerifyReport(
        reference=reference.name, candidate=candidate_name, precision=precision, gate=gate, tolerance=tolerance,
        input_source=data.source, input_shape=tuple(data.inputs.shape), checks=checks, float64=reference.float64,
        real_data=real_data, seed=seed, blocks=blocks, accuracy=accuracy, notes=notes,
        outputs={"reference": next(iter(reference.truth.values.values())),
                 "candidate": next(iter(candidate.values.values()))},
    )


def fold_exactness(reference: Reference, precision: str) -> list[Check]:
    """The fold itself, apart from any rounding: the float64 form of the deploy model the reference judges next
    to (:meth:`Reference.use_deploy_form`) against the training form in float64, output by output and block by
    block. It must be exact to the precision the deploy model is written in: its relative L2 error and its
    largest error in units of the RMS within that precision's unit roundoff (fp64: the fp64 gate's bounds), far
    below what any run at that precision shows, so a fold that changes the function by less than its rounding
    still fails. Empty when the reference has no deploy form of its own."""
    deploy_truth = reference.deploy_outputs(blocks=bool(reference.blocks))
    if deploy_truth is None:
        return []
    fp64 = default_gate("fp64")
    rel_bound = UNIT_ROUNDOFF[precision] if precision in UNIT_ROUNDOFF and precision != "fp64" else fp64.max_rel_l2
    max_bound = UNIT_ROUNDOFF[precision] if precision in UNIT_ROUNDOFF and precision != "fp64" else fp64.max_error_rms
    note = f"the {precision} unit roundoff" if precision != "fp64" else "the fp64 gate's bound"
    pairs = [(f"output '{name}' (float64 fold)", truth, deploy_truth.values.get(name))
             for name, truth in reference.truth.values.items()]
    pairs += [(f"block {name} (float64 fold)", reference.truth.blocks[name], deploy_truth.isolated.get(name))
              for name in reference.blocks]
    checks = []
    for label, truth, folded in pairs:
        if folded is None:
            continue
        stats = compare_arrays(truth, folded, None)
        conditions = [Condition("non-finite outputs", 0.0 if stats.finite else 1.0, 0.0),
                      Condition("rel L2", stats.rel_l2, rel_bound, note=note),
                      Condition("max error / RMS", stats.max_error_rms, max_bound, note=note)]
        checks.append(Check(label, stats, {}, conditions))
    return checks

"""Judging a candidate's outputs against a :class:`~xvol_export.verify.run.Reference`."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from xvol_export.compare import ErrorStats, Tolerance, compare_arrays
from xvol_export.results import JobResult
from xvol_export.verify.gates import Condition, Gate, default_gate, gate_conditions
from xvol_export.verify.run import Outputs, Reference


@dataclass
class Check:
    """One output (or block) of the candidate against float64: its errors, the baseline's, the verdict."""

    name: str
    candidate: ErrorStats
    baseline: ErrorStats | None
    conditions: list[Condition]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.conditions)

    @property
    def ratio(self) -> float | None:
        """The candidate's relative L2 error over the baseline's (None without a baseline)."""
        if self.baseline is None or not self.baseline.rel_l2:
            return None
        return self.candidate.rel_l2 / self.baseline.rel_l2

    def failures(self) -> list[str]:
        return [c.describe() for c in self.conditions if not c.passed]

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "passed": self.passed,
            "candidate": self.candidate.to_dict(),
            "baseline": self.baseline.to_dict() if self.baseline else None,
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

    @property
    def output(self) -> ErrorStats:
        """The first output's errors against the reference (most models have one output)."""
        return self.checks[0].candidate

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks) and all(b.isolated.passed for b in self.blocks)

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
    baseline = reference.baseline(gate.baseline) if reference.float64 else None
    labels = data.labels.numpy() if data.labels is not None else None
    notes = list(reference.notes)
    missing = sorted(set(reference.truth.values) ^ set(candidate.values))
    if missing:
        raise ValueError(f"outputs do not match by name: {', '.join(missing)} only on one side "
                         f"(reference: {sorted(reference.truth.values)}, candidate: {sorted(candidate.values)})")

    def check(name, truth, cand, base, accuracy_drop=None) -> tuple[Check, list[str]]:
        stats = compare_arrays(truth, cand, tolerance)
        base_stats = compare_arrays(truth, base, None) if base is not None else None
        if tolerance is not None:
            conditions = [Condition(f"tolerance ({tolerance.describe()}): {stats.min_required()}",
                                    0.0 if stats.passed else 1.0, 0.0)]
            return Check(name, stats, base_stats, conditions), []
        conditions, why = gate_conditions(gate, stats, base_stats, real_data=real_data, accuracy_drop=accuracy_drop)
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
            if baseline is not None:
                accuracy["baseline"] = float((baseline.values[name].argmax(1) == labels).mean())
            drop = accuracy["reference"] - accuracy["candidate"]
        result, why = check(name, truth, cand, baseline.values[name] if baseline else None, drop)
        checks.append(result)
        notes += [n for n in why if n not in notes]

    blocks = []
    for name in reference.blocks:
        if name not in candidate.blocks or name not in candidate.isolated:
            continue
        truth_block = reference.truth.blocks[name]
        base_iso = baseline.isolated.get(name) if baseline else None
        base_net = baseline.blocks.get(name) if baseline else None
        isolated, _ = check(f"{name} (alone)", truth_block, candidate.isolated[name], base_iso)
        in_network, _ = check(f"{name} (in network)", truth_block, candidate.blocks[name], base_net)
        blocks.append(BlockCheck(name, isolated, in_network))

    return VerifyReport(
        reference=reference.name, candidate=candidate_name, precision=precision, gate=gate, tolerance=tolerance,
        input_source=data.source, input_shape=tuple(data.inputs.shape), checks=checks, float64=reference.float64,
        real_data=real_data, seed=seed, blocks=blocks, accuracy=accuracy, notes=notes,
        outputs={"reference": next(iter(reference.truth.values.values())),
                 "candidate": next(iter(candidate.values.values()))},
    )

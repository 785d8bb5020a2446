"""Verification: run the reference once (float64 and same-precision baselines), then judge candidates.

``Reference`` (:mod:`.run`) holds the reference outputs of one input set; :func:`verify` runs one
candidate and judges it (:mod:`.report`) with the default gate of its precision (:mod:`.gates`)
or a user's Polygraphy tolerance.
"""

from __future__ import annotations

from torch import nn

from xvol_export.compare import Tolerance
from xvol_export.inputs import InputData
from xvol_export.runners import Runner
from xvol_export.verify.gates import DEFAULT_GATES, PRECISIONS, Condition, Gate, default_gate
from xvol_export.verify.report import BlockCheck, Check, VerifyReport, judge
from xvol_export.verify.run import (
    Outputs,
    Reference,
    eval_copy,
    model_precision,
    run_batches,
)


def candidate_precision(candidate: nn.Module | Runner) -> str:
    """fp64/fp32/fp16/bf16 for a PyTorch model, the graph's precision for a runner that knows it."""
    if isinstance(candidate, nn.Module):
        return model_precision(candidate)
    return getattr(candidate, "precision", None) or "fp32"


def verify(reference: Reference, candidate: nn.Module | Runner, name: str | None = None, *,
           tolerance: Tolerance | None = None, gate: Gate | None = None, precision: str | None = None,
           seed: int | None = None) -> VerifyReport:
    """Run ``candidate`` on the reference's inputs and judge it (``precision``: default the candidate's own)."""
    outputs = reference.run_candidate(candidate)  # first: a runner knows what it really ran once it has run
    precision = precision or candidate_precision(candidate)
    label = name or getattr(candidate, "name", None) or "candidate"
    report = judge(reference, outputs, precision, candidate_name=label, tolerance=tolerance, gate=gate, seed=seed)
    ran = getattr(candidate, "precision_note", None)  # OpenVINO: the precision it computed in, read back
    if callable(ran):
        report.notes.append(ran())
    report.notes += list(getattr(candidate, "warnings", ()))  # TensorRT: an engine without its sidecar, ...
    return report


def verify_models(reference: nn.Module, candidate: nn.Module, data: InputData, tolerance: Tolerance | None = None,
                  *, names: tuple[str, str] = ("reference", "candidate"), seed: int | None = None,
                  per_block: bool = True, batch_size: int = 64) -> VerifyReport:
    """Compare two PyTorch models on ``data``: end to end, per block, and accuracy if labelled.

    ``reference`` runs in float64 (the truth) and in the candidate's precision (the baseline); models
    in training mode run as eval-mode copies (said in ``notes``); neither is modified.
    """
    ref = Reference(reference, data, names[0], per_block=per_block, batch_size=batch_size)
    report = verify(ref, candidate, names[1], tolerance=tolerance, seed=seed)
    if candidate.training:
        report.notes.append(f"{names[1]} was in training mode: run in eval mode (running BatchNorm statistics)")
    return report


def verify_runners(reference: Runner | nn.Module, candidate: Runner | nn.Module, data: InputData,
                   tolerance: Tolerance | None = None, *, seed: int | None = None,
                   batch_size: int = 64) -> VerifyReport:
    """Compare any two artifacts' runners (or models) on ``data``; a PyTorch reference gives a float64 truth."""
    ref = Reference(_unwrap(reference), data, getattr(reference, "name", "reference"), batch_size=batch_size)
    return verify(ref, _unwrap(candidate), getattr(candidate, "name", None), tolerance=tolerance, seed=seed)


def _unwrap(side: Runner | nn.Module) -> Runner | nn.Module:
    """A PyTorch runner's model (so that it runs in float64 and per block), else the runner itself."""
    model = getattr(side, "model", None)
    return model if isinstance(model, nn.Module) else side


__all__ = [
    "BlockCheck", "Check", "Condition", "DEFAULT_GATES", "Gate", "Outputs", "PRECISIONS", "Reference",
    "VerifyReport", "candidate_precision", "default_gate", "eval_copy", "judge",
    "model_precision", "run_batches", "verify", "verify_models", "verify_runners",
]

"""The verification entry points: judge one candidate (a model or a runner) against a :class:`Reference`."""

from __future__ import annotations

from torch import nn

from xvol_export.compare import Tolerance
from xvol_export.inputs import InputData
from xvol_export.runners import Runner
from xvol_export.verify.gates import Gate
from xvol_export.verify.report import VerifyReport, fold_exactness, judge
from xvol_export.verify.run import Reference, model_precision


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


def verify_fold(reference: Reference, deploy: nn.Module, deploy64: nn.Module, name: str = "deploy form", *,
                tolerance: Tolerance | None = None, seed: int | None = None) -> VerifyReport:
    """Judge a fold: ``deploy`` (the deploy model in its own precision) as :func:`verify` does, next to
    ``deploy64`` (the same fold kept in float64, as :func:`~xvol_export.fold.fold_both` gives it), which must
    itself be exact to that precision (:func:`~xvol_export.verify.report.fold_exactness`; a user's ``tolerance``
    rules alone)."""
    reference.use_deploy_form(deploy64)
    precision = model_precision(deploy)
    outputs = reference.run_candidate(deploy)
    reference.use_deploy_outputs(precision, outputs)  # the candidate is that baseline: no second run of it
    report = judge(reference, outputs, precision, candidate_name=name, tolerance=tolerance, seed=seed)
    if tolerance is None:
        report.fold_exactness = fold_exactness(reference, report.precision)
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

"""Verification: run a reference and a candidate on the same inputs and compare, end to end and per block."""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from xvol_export.compare import ErrorStats, Tolerance, compare_arrays
from xvol_export.inputs import InputData
from xvol_export.layers import XVolution, XVolutionDeploy
from xvol_export.runners import Runner, TorchRunner

BLOCK_TYPES = (XVolution, XVolutionDeploy)


@dataclass
class BlockCheck:
    """One block: ``isolated`` feeds the candidate block the reference block's input (the block's own
    error); ``in_network`` compares the two blocks' outputs inside their networks (error so far)."""

    name: str
    isolated: ErrorStats
    in_network: ErrorStats

    def to_dict(self) -> dict:
        return {"name": self.name, "isolated": self.isolated.to_dict(), "in_network": self.in_network.to_dict()}


@dataclass
class VerifyReport:
    reference: str
    candidate: str
    tolerance: Tolerance
    input_source: str
    input_shape: tuple[int, ...]
    output: ErrorStats
    seed: int | None = None
    blocks: list[BlockCheck] = field(default_factory=list)
    accuracy: dict | None = None
    notes: list[str] = field(default_factory=list)
    outputs: dict[str, np.ndarray] | None = field(default=None, repr=False)  # raw outputs, not serialized

    @property
    def passed(self) -> bool:
        return self.output.passed and all(b.isolated.passed for b in self.blocks)

    @property
    def worst_block(self) -> BlockCheck | None:
        """The block whose own (isolated) error is largest."""
        return max(self.blocks, key=lambda b: b.isolated.rel_l2, default=None)

    def failure_summary(self) -> str:
        """What failed and by how much (empty when passed)."""
        tol = self.tolerance
        lines = []
        if not self.output.passed:
            lines.append(
                f"end-to-end output exceeds the tolerance (atol={tol.atol:g}, rtol={tol.rtol:g}, "
                f"{tol.check_error_stat}): needs {self.output.min_required()}"
            )
        for block in self.blocks:
            if not block.isolated.passed:
                lines.append(f"block {block.name}: needs {block.isolated.min_required()}")
        return "; ".join(lines)

    def to_dict(self) -> dict:
        worst = self.worst_block
        return {
            "reference": self.reference,
            "candidate": self.candidate,
            "passed": self.passed,
            "tolerance": {"atol": self.tolerance.atol, "rtol": self.tolerance.rtol,
                          "check_error_stat": self.tolerance.check_error_stat},
            "inputs": {"source": self.input_source, "shape": list(self.input_shape), "seed": self.seed},
            "output": self.output.to_dict(),
            "blocks": [b.to_dict() for b in self.blocks],
            "worst_block": worst.name if worst else None,
            "accuracy": self.accuracy,
            "notes": self.notes,
        }


def run_batches(runner: Runner, inputs: torch.Tensor | np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Run ``inputs`` through ``runner`` in batches; return the stacked ``output``.

    A runner with a fixed batch size gets exactly that many items per call (the last batch is
    padded with copies of its last item, and the padding's outputs are dropped).
    """
    array = inputs.numpy() if isinstance(inputs, torch.Tensor) else np.asarray(inputs)
    name = runner.input_names()[0]
    fixed = runner.fixed_batch()
    step = fixed or batch_size
    outputs = []
    for start in range(0, len(array), step):
        chunk = array[start : start + step]
        count = len(chunk)
        if fixed and count < fixed:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], fixed - count, axis=0)])
        result = runner.infer({name: chunk})
        outputs.append(next(iter(result.values()))[:count])
    return np.concatenate(outputs, axis=0)


def eval_copy(model: nn.Module) -> tuple[nn.Module, bool]:
    """``model`` if it is in eval mode, else an eval-mode copy; the flag says whether a copy was forced."""
    if not model.training:
        return model, False
    return copy.deepcopy(model).eval(), True


def verify_runners(
    reference: Runner,
    candidate: Runner,
    data: InputData,
    tolerance: Tolerance = Tolerance(),
    *,
    seed: int | None = None,
    batch_size: int = 64,
) -> VerifyReport:
    """Run both runners on ``data`` and compare their outputs (and accuracy, if ``data`` has labels)."""
    with reference, candidate:
        ref_out = run_batches(reference, data.inputs, batch_size)
        cand_out = run_batches(candidate, data.inputs, batch_size)
    report = VerifyReport(
        reference=reference.name,
        candidate=candidate.name,
        tolerance=tolerance,
        input_source=data.source,
        input_shape=tuple(data.inputs.shape),
        output=compare_arrays(ref_out, cand_out, tolerance),
        seed=seed,
        outputs={"reference": ref_out, "candidate": cand_out},
    )
    if data.labels is not None and ref_out.ndim == 2:
        labels = data.labels.numpy()
        report.accuracy = {
            "count": len(labels),
            "reference": float((ref_out.argmax(1) == labels).mean()),
            "candidate": float((cand_out.argmax(1) == labels).mean()),
        }
    return report


def verify_models(
    reference: nn.Module,
    candidate: nn.Module,
    data: InputData,
    tolerance: Tolerance = Tolerance(),
    *,
    names: tuple[str, str] = ("reference", "candidate"),
    seed: int | None = None,
    per_block: bool = True,
    batch_size: int = 64,
) -> VerifyReport:
    """Compare two PyTorch models on ``data``: end to end, per X-volution block, and accuracy if labelled.

    Models in training mode are compared as eval-mode copies (said in ``notes``); neither is modified.
    """
    notes = []
    reference, forced_ref = eval_copy(reference)
    candidate, forced_cand = eval_copy(candidate)
    for forced, label in ((forced_ref, names[0]), (forced_cand, names[1])):
        if forced:
            notes.append(f"{label} was in training mode: compared in eval mode (running BatchNorm statistics)")

    blocks = _matching_blocks(reference, candidate) if per_block else []
    with _BlockRecorder(reference, candidate, blocks) as recorder:
        report = verify_runners(TorchRunner(reference, names[0]), TorchRunner(candidate, names[1]), data, tolerance,
                                seed=seed, batch_size=batch_size)
    report.blocks = recorder.checks(tolerance)
    report.notes = notes
    return report


def _matching_blocks(reference: nn.Module, candidate: nn.Module) -> list[tuple[str, nn.Module, nn.Module]]:
    cand_modules = dict(candidate.named_modules())
    return [
        (name, module, cand_modules[name])
        for name, module in reference.named_modules()
        if isinstance(module, BLOCK_TYPES) and isinstance(cand_modules.get(name), BLOCK_TYPES)
    ]


class _BlockRecorder(contextlib.AbstractContextManager):
    """Forward hooks that record each block's reference input/output and candidate output."""

    def __init__(self, reference: nn.Module, candidate: nn.Module, blocks):
        self.blocks = blocks
        self.records = {name: {"ref": [], "cand": [], "isolated": []} for name, _, _ in blocks}
        self.handles = []
        self._isolating = False

    def __enter__(self):
        for name, ref_block, cand_block in self.blocks:
            self.handles.append(ref_block.register_forward_hook(self._reference_hook(name, cand_block)))
            self.handles.append(cand_block.register_forward_hook(self._candidate_hook(name)))
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()
        return False

    def _reference_hook(self, name: str, cand_block: nn.Module):
        def hook(_module, inputs, output):
            record = self.records[name]
            record["ref"].append(output.detach().double().cpu().numpy())
            # The candidate block on the reference block's own input: its error alone.
            x = inputs[0].to(next(cand_block.parameters()).dtype)
            self._isolating = True
            try:
                with torch.inference_mode():
                    record["isolated"].append(cand_block(x).detach().double().cpu().numpy())
            finally:
                self._isolating = False

        return hook

    def _candidate_hook(self, name: str):
        def hook(_module, _inputs, output):
            if not self._isolating:  # the isolated run above is not the candidate network's own pass
                self.records[name]["cand"].append(output.detach().double().cpu().numpy())

        return hook

    def checks(self, tolerance: Tolerance) -> list[BlockCheck]:
        out = []
        for name, record in self.records.items():
            ref = np.concatenate(record["ref"])
            out.append(BlockCheck(
                name=name,
                isolated=compare_arrays(ref, np.concatenate(record["isolated"]), tolerance),
                in_network=compare_arrays(ref, np.concatenate(record["cand"]), tolerance),
            ))
        return out

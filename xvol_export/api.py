"""The jobs behind the commands: each returns a report object; the CLI only parses and prints."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from xvol_export.checkpoint import Checkpoint, load_model, save_checkpoint
from xvol_export.compare import Tolerance
from xvol_export.errors import XvolError
from xvol_export.fold import FoldReport, fold
from xvol_export.fold.model import describe_deploy
from xvol_export.inputs import InputData, InputShape, fresh_seed, load_npz, random_inputs
from xvol_export.io import atomic_write, check_output_path
from xvol_export.layers import XVolutionDeploy
from xvol_export.profile import count_params, profile_model
from xvol_export.verify import VerifyReport, verify_models

DEFAULT_VERIFY_BATCH = 2


@dataclass(frozen=True)
class LoadOptions:
    """How to read a checkpoint: ``arch``/``config`` for bare state dicts, pickles only if trusted."""

    trust_pickle: bool = False
    arch: str | None = None
    config: dict | None = None
    use_ema: bool = False

    def load(self, path: str | os.PathLike) -> tuple[nn.Module, Checkpoint]:
        return load_model(path, trust_pickle=self.trust_pickle, arch=self.arch, config=self.config,
                          use_ema=self.use_ema)


# ----------------------------------------------------------------------------------------- inputs

def prepare_inputs(model: nn.Module, label: str, data: str | os.PathLike | None = None,
                   input_shape: InputShape | None = None, seed: int | None = None) -> tuple[InputData, int | None]:
    """Inputs for verification: an ``.npz`` file, or seeded random ones (a fresh seed unless given)."""
    expected = tuple(getattr(model, "input_size", ()) or ())
    if data is not None:
        loaded = load_npz(data)
        if expected and tuple(loaded.inputs.shape[1:2]) != expected[:1]:
            raise XvolError(
                f"{data}: inputs of shape {tuple(loaded.inputs.shape)} have {loaded.inputs.shape[1]} channel(s), "
                f"but {label} takes {expected[0]} (input size {'x'.join(map(str, expected))})."
            )
        return loaded, None
    if input_shape is None:
        if not expected:
            raise XvolError(f"{label}: the model has no default input size. Pass --input-shape, e.g. 1x3x224x224.")
        dims = (DEFAULT_VERIFY_BATCH, *expected)
    else:
        dims = input_shape.dims
        if len(dims) != 4:
            raise XvolError(f"Input shape {input_shape} must have four dimensions, NxCxHxW.")
        if expected and dims[1] != expected[0]:
            raise XvolError(f"Input shape {input_shape} has {dims[1]} channel(s) but {label} takes {expected[0]}.")
    seed = fresh_seed() if seed is None else seed
    shape_text = "x".join(map(str, dims))
    return InputData(random_inputs(dims, seed), None, f"random normal {shape_text}, seed {seed}"), seed


# ---------------------------------------------------------------------------------------- inspect

@dataclass
class BlockPlan:
    name: str
    config: dict
    ops_before: str
    params_before: int
    macs_before: int | None
    layout: str
    reason: str
    ops_after: str
    params_after: int
    macs_after: int | None


@dataclass
class InspectReport:
    path: str
    sha256: str
    architecture: str
    config: dict
    folded: bool
    input_shape: tuple[int, ...]
    params: int
    macs: int
    batchnorms: int
    blocks: list[BlockPlan] = field(default_factory=list)
    conv_bn_pairs: int = 0
    batchnorms_after: int | None = None
    params_after: int | None = None
    macs_after: int | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        from dataclasses import asdict

        out = asdict(self)
        out["input_shape"] = list(self.input_shape)
        return out


def inspect_checkpoint(path: str | os.PathLike, layout: str = "auto", input_shape: InputShape | None = None,
                       load: LoadOptions = LoadOptions()) -> InspectReport:
    """Architecture, parameters and MACs, and what folding will do to every block (nothing is written)."""
    model, ckpt = load.load(path)
    shape = _profile_shape(model, ckpt.label, input_shape)
    profile = profile_model(model, shape)
    report = InspectReport(
        path=str(path), sha256=ckpt.sha256 or "", architecture=ckpt.architecture, config=ckpt.config,
        folded=ckpt.folded, input_shape=shape, params=count_params(model), macs=profile.total_macs,
        batchnorms=sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()),
        notes=list(ckpt.notes),
    )
    if ckpt.folded:
        for name, block in model.named_modules():
            if isinstance(block, XVolutionDeploy):
                ops, params, macs = describe_deploy(block), count_params(block), profile.macs_under(name)
                report.blocks.append(BlockPlan(name, block.config(), ops, params, macs, block.layout, "folded",
                                               ops, params, macs))
        report.notes.append("already folded: fold has nothing to do")
        return report
    _, fold_report = fold(model, layout=layout, input_shape=shape)
    for planned in fold_report.blocks:
        report.blocks.append(BlockPlan(
            planned.name, model.get_submodule(planned.name).config(), planned.ops_before, planned.params_before,
            planned.macs_before, planned.layout, planned.reason, planned.ops_after, planned.params_after,
            planned.macs_after,
        ))
    report.conv_bn_pairs = len(fold_report.fused_conv_bn)
    report.batchnorms_after = len(fold_report.remaining_batchnorms)
    report.params_after = fold_report.params_after
    report.macs_after = fold_report.macs_after
    report.notes += fold_report.notes
    return report


def _profile_shape(model: nn.Module, label: str, input_shape: InputShape | None) -> tuple[int, ...]:
    if input_shape is not None:
        return (1, *input_shape.dims[1:])
    size = getattr(model, "input_size", None)
    if not size:
        raise XvolError(f"{label}: the model has no default input size. Pass --input-shape, e.g. 1x3x224x224.")
    return (1, *size)


# ------------------------------------------------------------------------------------------- fold

@dataclass
class FoldResult:
    source: str
    source_sha256: str
    output: str | None
    written: bool
    fold: FoldReport | None
    verification: VerifyReport | None
    timings: dict[str, float]
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.verification is None or self.verification.passed

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "source_sha256": self.source_sha256,
            "output": self.output,
            "written": self.written,
            "passed": self.passed,
            "fold": self.fold.to_dict() if self.fold else None,
            "verification": self.verification.to_dict() if self.verification else None,
            "timings_s": self.timings,
            "notes": self.notes,
        }


def default_fold_output(path: str | os.PathLike) -> Path:
    """``model.pth`` -> ``model.deploy.pth`` beside it (same suffix)."""
    path = Path(path)
    return path.with_name(f"{path.stem}.deploy{path.suffix or '.pth'}")


def fold_checkpoint(
    path: str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    layout: str = "auto",
    data: str | os.PathLike | None = None,
    input_shape: InputShape | None = None,
    seed: int | None = None,
    tolerance: Tolerance = Tolerance(),
    force: bool = False,
    load: LoadOptions = LoadOptions(),
) -> FoldResult:
    """Load, fold, verify per block and end to end against the training form, then save.

    Nothing is written unless verification passes. The deploy checkpoint's metadata carries the
    source's sha256, the fold report and the verified errors.
    """
    timings = {}
    output = Path(output) if output is not None else default_fold_output(path)
    check_output_path(output, force)  # fail on a bad output path before any work

    start = time.perf_counter()
    model, ckpt = load.load(path)
    timings["load"] = time.perf_counter() - start
    result = FoldResult(str(path), ckpt.sha256 or "", str(output), False, None, None, timings, list(ckpt.notes))
    if ckpt.folded:
        result.notes.append("already folded: nothing to do, nothing written")
        return result

    data_in, used_seed = prepare_inputs(model, ckpt.label, data, input_shape, seed)
    start = time.perf_counter()
    deploy, result.fold = fold(model, layout=layout, input_shape=(1, *data_in.inputs.shape[1:]))
    timings["fold"] = time.perf_counter() - start

    start = time.perf_counter()
    result.verification = verify_models(model, deploy, data_in, tolerance, names=("training form", "deploy form"),
                                        seed=used_seed)
    timings["verify"] = time.perf_counter() - start
    if not result.verification.passed:
        result.notes.append("verification failed: nothing written")
        return result

    start = time.perf_counter()
    metadata = {
        "source_sha256": ckpt.sha256,
        "source": Path(path).name,
        "fold": result.fold.to_dict(),
        "verification": _verification_summary(result.verification),
    }
    save_checkpoint(deploy, output, metadata=metadata, force=force)
    timings["save"] = time.perf_counter() - start
    result.written = True
    return result


def _verification_summary(report: VerifyReport) -> dict:
    """The figures a deploy artifact keeps about how it was verified (JSON-safe)."""
    return json.loads(json.dumps({
        "inputs": report.input_source,
        "max_abs": report.output.max_abs,
        "rel_l2": report.output.rel_l2,
        "top1_agreement": report.output.top1_agreement,
        "worst_block": report.worst_block.name if report.worst_block else None,
        "accuracy": report.accuracy,
        "tolerance": {"atol": report.tolerance.atol, "rtol": report.tolerance.rtol,
                      "check_error_stat": report.tolerance.check_error_stat},
    }))


# ----------------------------------------------------------------------------------------- verify

def verify_checkpoints(
    reference: str | os.PathLike,
    candidate: str | os.PathLike,
    *,
    data: str | os.PathLike | None = None,
    input_shape: InputShape | None = None,
    seed: int | None = None,
    tolerance: Tolerance = Tolerance(),
    load: LoadOptions = LoadOptions(),
) -> VerifyReport:
    """Run two checkpoints (training or deploy form) on the same inputs and compare them."""
    ref_model, ref_ckpt = load.load(reference)
    cand_model, cand_ckpt = load.load(candidate)
    data_in, used_seed = prepare_inputs(ref_model, ref_ckpt.label, data, input_shape, seed)
    names = (f"{Path(reference).name}", f"{Path(candidate).name}")
    if names[0] == names[1]:
        names = (str(reference), str(candidate))
    try:
        return verify_models(ref_model, cand_model, data_in, tolerance, names=names, seed=used_seed)
    except ValueError as err:  # outputs of different shapes: not the same task
        raise XvolError(f"{candidate}: cannot be compared with {reference}: {err}.") from None


# ------------------------------------------------------------------------------------------- json

def write_json(path: str | os.PathLike, payload: dict, force: bool = False) -> None:
    """Write a JSON report atomically."""
    with atomic_write(path, force) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, default=_json_default) + "\n")


def _json_default(value):
    if isinstance(value, (set, tuple)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


__all__ = [
    "FoldResult", "InspectReport", "LoadOptions", "default_fold_output", "fold_checkpoint", "inspect_checkpoint",
    "prepare_inputs", "verify_checkpoints", "write_json",
]

"""The jobs behind the commands: each returns a report object; the CLI only parses and prints."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from xvol_export.artifacts import open_artifact
from xvol_export.bench import BenchReport, BenchSettings, bench_artifacts
from xvol_export.checkpoint import LoadOptions, check_refold, save_checkpoint
from xvol_export.compare import Tolerance
from xvol_export.errors import XvolError
from xvol_export.export import ExportResult, export_checkpoint
from xvol_export.fold import FoldReport, fold
from xvol_export.fold.model import describe_deploy
from xvol_export.inputs import InputShape, prepare_inputs, save_npz
from xvol_export.io import atomic_write, check_output_path
from xvol_export.jsonio import write_json
from xvol_export.layers import XVolutionDeploy
from xvol_export.limits import check_input_file, check_not_folder_syntax, check_output_name, check_seed
from xvol_export.pipeline import PipelineSettings, run_pipeline, summary_markdown, write_manifest
from xvol_export.profile import count_params, profile_model
from xvol_export.tensorrt.build import EngineSettings
from xvol_export.utils import StepClock
from xvol_export.verify import Reference, VerifyReport, verify
from xvol_export.verify.run import check_batch_fits, check_run_fits

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


def inspect_graph(path: str | os.PathLike) -> dict:
    """An ONNX graph's inputs, outputs, opset, precision and ops, and whether TensorRT would take every node."""
    from xvol_export.export.onnx_graph import describe_graph

    if not check_input_file(path, "ONNX file").is_file():
        raise XvolError(f"{path}: no such file. Check the path (relative paths start from the current folder).")
    return describe_graph(path)


def inspect_checkpoint(path: str | os.PathLike, layout: str = "auto", input_shape: InputShape | None = None,
                       load: LoadOptions = LoadOptions()) -> InspectReport:
    """Architecture, parameters and MACs, and what folding will do to every block (nothing is written)."""
    model, ckpt = load.load(path)
    shape = _profile_shape(model, ckpt.label, input_shape)
    check_batch_fits(model, shape, f"profiling {ckpt.label} at {'x'.join(map(str, shape))}",
                     "Give a smaller --input-shape.", itemsize=8)  # the fold's profile runs in float64
    report = InspectReport(
        path=str(path), sha256=ckpt.sha256 or "", architecture=ckpt.architecture, config=ckpt.config,
        folded=ckpt.folded, input_shape=shape, params=count_params(model), macs=0,
        batchnorms=sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()),
        notes=list(ckpt.notes),
    )
    if ckpt.folded:
        profile = profile_model(model, shape)
        report.macs = profile.total_macs
        for name, block in model.named_modules():
            if isinstance(block, XVolutionDeploy):
                ops, params, macs = describe_deploy(block), count_params(block), profile.macs_under(name)
                report.blocks.append(BlockPlan(name, block.config(), ops, params, macs, block.layout, "folded",
                                               ops, params, macs))
        report.notes.append("already folded: fold has nothing to do")
        return report
    _, fold_report = fold(model, layout=layout, input_shape=shape)  # it profiles the model before and after
    report.macs = fold_report.macs_before
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
    """``model.pth`` -> ``model.deploy.pth`` beside it (same suffix); :class:`XvolError` when that name is longer
    than the file system allows (the fix: ``-o``)."""
    path = Path(path)
    return check_output_name(path.with_name(f"{path.stem}.deploy{path.suffix or '.pth'}"), "-o", default=True)


def fold_checkpoint(
    path: str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    layout: str = "auto",
    data: str | os.PathLike | None = None,
    input_shape: InputShape | None = None,
    seed: int | None = None,
    tolerance: Tolerance | None = None,
    force: bool = False,
    load: LoadOptions = LoadOptions(),
    dtype: str | None = None,
) -> FoldResult:
    """Load, fold (in float64), verify per block and end to end against the training form, then save.

    The deploy model is verified and written in ``dtype`` (fp16, bf16, fp32, fp64; default the
    checkpoint's own), against the training form in float64 next to the training form at that
    precision; ``tolerance`` (Polygraphy's) replaces the default gate when given. Nothing is written
    unless verification passes. The deploy checkpoint's metadata carries the source's sha256, the
    fold report and the verified errors.
    """
    timings: dict[str, float] = {}
    clock = StepClock(timings)
    if seed is not None:
        check_seed(seed)
    if output is not None:
        check_not_folder_syntax(output, "-o")  # "newdir/" would write a file named newdir
        check_output_name(output, "-o")
    output = Path(output) if output is not None else default_fold_output(path)
    check_output_path(output, force)  # fail on a bad output path before any work

    with clock("load"):
        model, ckpt = load.load(path)
    result = FoldResult(str(path), ckpt.sha256 or "", str(output), False, None, None, timings, list(ckpt.notes))
    if ckpt.folded:
        check_refold(ckpt, layout)  # a deploy checkpoint cannot change its layout: say so, exit 2
        result.notes.append("already folded: nothing to do, nothing written")
        return result

    data_in, used_seed = prepare_inputs(getattr(model, "input_size", None), ckpt.label, data, input_shape, seed)
    check_run_fits(model, data_in)  # the fold profiles, and verification runs, on these inputs
    with clock("fold"):
        deploy, result.fold = fold(model, layout=layout, input_shape=(1, *data_in.inputs.shape[1:]), dtype=dtype)
    with clock("verify"):
        reference = Reference(model, data_in, "training form")
        result.verification = verify(reference, deploy, "deploy form", tolerance=tolerance, seed=used_seed)
    if not result.verification.passed:
        result.notes.append("verification failed: nothing written")
        return result

    metadata = {
        "source_sha256": ckpt.sha256,
        "source": Path(path).name,
        "fold": result.fold.to_dict(),
        "verification": result.verification.summary(),
    }
    with clock("save"):
        save_checkpoint(deploy, output, metadata=metadata, force=force, dtype=dtype)
    result.written = True
    return result


# ----------------------------------------------------------------------------------------- verify

def verify_artifacts(
    reference: str | os.PathLike,
    candidate: str | os.PathLike,
    *,
    data: str | os.PathLike | None = None,
    input_shape: InputShape | None = None,
    seed: int | None = None,
    tolerance: Tolerance | None = None,
    load: LoadOptions = LoadOptions(),
    save_inputs: str | os.PathLike | None = None,
    save_outputs: str | os.PathLike | None = None,
    force: bool = False,
) -> VerifyReport:
    """Run two artifacts (checkpoints in either form, ONNX graphs) on the same inputs and judge the candidate.

    A checkpoint reference runs in float64 (the truth) and at the candidate's precision (the
    baseline); an ONNX reference's own outputs stand as the truth. Two checkpoints are also
    compared per X-volution block. ``tolerance`` (Polygraphy's) replaces the default gate.
    ``save_inputs``/``save_outputs`` write the inputs and both outputs as ``.npz`` (``data`` reads
    such an inputs file back).
    """
    if seed is not None:
        check_seed(seed)
    for extra, option in ((save_inputs, "--save-inputs"), (save_outputs, "--save-outputs")):
        if extra is not None:
            check_not_folder_syntax(extra, option)
            check_output_name(extra, option)
            check_output_path(extra, force)
    names = (Path(reference).name, Path(candidate).name)
    if names[0] == names[1]:
        names = (str(reference), str(candidate))
    ref = open_artifact(reference, load, names[0])
    cand = open_artifact(candidate, load, names[1])
    input_size = ref.input_size or cand.input_size
    label = str(reference if ref.input_size else candidate)
    data_in, used_seed = prepare_inputs(input_size, label, data, input_shape, seed)
    try:
        reference_run = Reference(ref.model if ref.model is not None else ref.runner, data_in, names[0])
        candidate_side = cand.model if cand.model is not None else cand.runner
        report = verify(reference_run, candidate_side, names[1], tolerance=tolerance, seed=used_seed)
    except ValueError as err:  # outputs of different shapes: not the same task
        raise XvolError(f"{candidate}: cannot be compared with {reference}: {err}.") from None
    if save_inputs is not None:
        arrays = {"input": data_in.inputs} | ({"labels": data_in.labels} if data_in.labels is not None else {})
        save_npz(save_inputs, **arrays)
    if save_outputs is not None:
        save_npz(save_outputs, **report.outputs)
    return report


def write_text(path: str | os.PathLike, text: str, force: bool = False) -> None:
    """Write a text file (a Markdown summary) atomically."""
    with atomic_write(path, force) as tmp:
        tmp.write_text(text)


__all__ = [
    "FoldResult", "InspectReport", "LoadOptions", "default_fold_output", "fold_checkpoint", "inspect_checkpoint",
    "inspect_graph",
    "verify_artifacts", "write_json", "write_text", "PipelineSettings", "run_pipeline", "summary_markdown",
    "write_manifest", "ExportResult", "export_checkpoint", "EngineSettings",
    "BenchReport", "BenchSettings", "bench_artifacts",
]

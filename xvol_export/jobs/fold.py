"""`xvol fold`: load, fold in float64, verify per block and end to end against the training form, save."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from xvol_export.checkpoint import LoadOptions, check_refold, save_checkpoint
from xvol_export.compare import Tolerance
from xvol_export.fold import FoldReport, fold_both
from xvol_export.inputs import InputShape, prepare_inputs
from xvol_export.io import check_output_path
from xvol_export.limits import check_not_folder_syntax, check_output_name, check_seed
from xvol_export.results import JobResult
from xvol_export.utils import StepClock
from xvol_export.verify import Reference, VerifyReport, verify_fold
from xvol_export.verify.run import check_run_fits


@dataclass(frozen=True)
class FoldSettings:
    """``layout`` of the folded blocks (``auto``: per block, by cost); ``dtype`` the deploy checkpoint is written
    and verified in (fp16, bf16, fp32, fp64; default the checkpoint's own); verification on ``data`` (``.npz``)
    or random inputs of ``input_shape`` drawn with ``seed``, judged by ``tolerance`` (Polygraphy's) instead of
    the default gate when given; ``load``: how to read the checkpoint; ``force``: overwrite the output."""

    layout: str = "auto"
    dtype: str | None = None
    data: str | os.PathLike | None = None
    input_shape: InputShape | None = None
    seed: int | None = None
    tolerance: Tolerance | None = None
    load: LoadOptions = LoadOptions()
    force: bool = False


@dataclass
class FoldResult(JobResult):
    """The fold of one checkpoint, its verification and whether the deploy checkpoint was written."""

    source: str
    source_sha256: str
    output: str | None
    written: bool = False
    fold: FoldReport | None = None
    verification: VerifyReport | None = None

    @property
    def passed(self) -> bool:
        return self.verification is None or self.verification.passed

    def failure_summary(self) -> str:
        return self.verification.failure_summary() if self.verification is not None else ""

    def to_dict(self) -> dict:
        return {
            **self.job_fields(),
            "source": self.source,
            "source_sha256": self.source_sha256,
            "output": self.output,
            "written": self.written,
            "fold": self.fold.to_dict() if self.fold else None,
            "verification": self.verification.to_dict() if self.verification else None,
        }


def default_fold_output(path: str | os.PathLike) -> Path:
    """``model.pth`` -> ``model.deploy.pth`` beside it (same suffix); :class:`XvolError` when that name is longer
    than the file system allows (the fix: ``-o``)."""
    path = Path(path)
    return check_output_name(path.with_name(f"{path.stem}.deploy{path.suffix or '.pth'}"), "-o", default=True)


def fold_verified(model: nn.Module, reference: Reference, settings: FoldSettings = FoldSettings(),
                  seed: int | None = None) -> tuple[nn.Module, FoldReport, VerifyReport]:
    """The in-memory core of :func:`fold_checkpoint`: fold ``model`` (never modified) and judge the deploy model
    against ``reference`` (the training form run once on the verification inputs)."""
    deploy, deploy64, report = fold_both(model, layout=settings.layout,
                                         input_shape=(1, *reference.data.inputs.shape[1:]), dtype=settings.dtype)
    verification = verify_fold(reference, deploy, deploy64, tolerance=settings.tolerance, seed=seed)
    return deploy, report, verification


def fold_checkpoint(path: str | os.PathLike, output: str | os.PathLike | None = None,
                    settings: FoldSettings = FoldSettings()) -> FoldResult:
    """Load, fold (in float64), verify per block and end to end against the training form, then save.

    The deploy model is verified and written in ``settings.dtype``, against the training form in float64
    next to the training form at that precision. Nothing is written unless verification passes. The deploy
    checkpoint's metadata carries the source's sha256, the fold report and the verified errors.
    """
    s = settings
    timings: dict[str, float] = {}
    clock = StepClock(timings)
    if s.seed is not None:
        check_seed(s.seed)
    if output is not None:
        check_not_folder_syntax(output, "-o")  # "newdir/" would write a file named newdir
        check_output_name(output, "-o")
    output = Path(output) if output is not None else default_fold_output(path)
    check_output_path(output, s.force)  # fail on a bad output path before any work

    with clock("load"):
        model, ckpt = s.load.load(path)
    result = FoldResult(str(path), ckpt.sha256 or "", str(output), timings=timings, notes=list(ckpt.notes))
    if ckpt.folded:
        check_refold(ckpt, s.layout)  # a deploy checkpoint cannot change its layout: say so, exit 2
        result.notes.append("already folded: nothing to do, nothing written")
        return result

    data_in, used_seed = prepare_inputs(getattr(model, "input_size", None), ckpt.label, s.data, s.input_shape, s.seed)
    check_run_fits(model, data_in)  # the fold profiles, and verification runs, on these inputs
    with clock("reference"):
        reference = Reference(model, data_in, "training form")
    with clock("fold and verify"):
        deploy, result.fold, result.verification = fold_verified(model, reference, s, used_seed)
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
        save_checkpoint(deploy, output, metadata=metadata, force=s.force, dtype=s.dtype)
    result.written = True
    result.files = [str(output)]
    return result

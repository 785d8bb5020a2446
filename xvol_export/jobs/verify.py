"""`xvol verify`: run two artifacts on the same inputs and judge the candidate against the reference."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from xvol_export.artifacts import open_artifact
from xvol_export.checkpoint import LoadOptions
from xvol_export.compare import Tolerance
from xvol_export.errors import XvolError
from xvol_export.golden import save_golden
from xvol_export.inputs import InputShape, prepare_inputs, save_npz
from xvol_export.io import check_output_path
from xvol_export.limits import check_not_folder_syntax, check_output_name, check_seed
from xvol_export.utils import StepClock
from xvol_export.verify import Reference, VerifyReport, verify


@dataclass(frozen=True)
class VerifySettings:
    """Inputs from ``data`` (``.npz``, as ``--save-inputs`` writes) or random ones of ``input_shape`` drawn with
    ``seed``; ``tolerance`` (Polygraphy's) replaces the default gate when given; ``save_inputs``/``save_outputs``
    write the inputs and both outputs as ``.npz``, ``save_golden`` the golden file of the check
    (:mod:`xvol_export.golden`); ``load``: how to read checkpoints; ``force``: overwrite."""

    data: str | os.PathLike | None = None
    input_shape: InputShape | None = None
    seed: int | None = None
    tolerance: Tolerance | None = None
    load: LoadOptions = LoadOptions()
    save_inputs: str | os.PathLike | None = None
    save_outputs: str | os.PathLike | None = None
    save_golden: str | os.PathLike | None = None
    force: bool = False


def verify_artifacts(reference: str | os.PathLike, candidate: str | os.PathLike,
                     settings: VerifySettings = VerifySettings()) -> VerifyReport:
    """Run two artifacts (checkpoints in either form, ONNX graphs) on the same inputs and judge the candidate.

    A checkpoint reference runs in float64 (the truth) and at the candidate's precision (the baseline); an
    ONNX reference's own outputs stand as the truth. Two checkpoints are also compared per block. The
    in-memory core is :func:`xvol_export.verify.verify` on a :class:`~xvol_export.verify.Reference`.
    """
    s = settings
    timings: dict[str, float] = {}
    clock = StepClock(timings)
    if s.seed is not None:
        check_seed(s.seed)
    for extra, option in ((s.save_inputs, "--save-inputs"), (s.save_outputs, "--save-outputs"),
                          (s.save_golden, "--save-golden")):
        if extra is not None:
            check_not_folder_syntax(extra, option)
            check_output_name(extra, option)
            check_output_path(extra, s.force)
    names = (Path(reference).name, Path(candidate).name)
    if names[0] == names[1]:
        names = (str(reference), str(candidate))
    with clock("load"):
        ref = open_artifact(reference, s.load, names[0])
        cand = open_artifact(candidate, s.load, names[1])
    if s.save_golden is not None and ref.model is None:
        raise XvolError(f"{reference}: --save-golden needs a checkpoint as the reference: a golden file holds the "
                        "float64 outputs of the training (or deploy) form.")
    input_size = ref.input_size or cand.input_size
    label = str(reference if ref.input_size else candidate)
    data_in, used_seed = prepare_inputs(input_size, label, s.data, s.input_shape, s.seed)
    try:
        with clock("reference"):
            reference_run = Reference(ref.model if ref.model is not None else ref.runner, data_in, names[0])
        with clock("verify"):
            candidate_side = cand.model if cand.model is not None else cand.runner
            report = verify(reference_run, candidate_side, names[1], tolerance=s.tolerance, seed=used_seed)
    except ValueError as err:  # outputs of different shapes: not the same task
        raise XvolError(f"{candidate}: cannot be compared with {reference}: {err}.") from None
    if s.save_inputs is not None:
        arrays = {"input": data_in.inputs} | ({"labels": data_in.labels} if data_in.labels is not None else {})
        save_npz(s.save_inputs, **arrays)
        report.files.append(str(s.save_inputs))
    if s.save_outputs is not None:
        save_npz(s.save_outputs, **report.outputs)
        report.files.append(str(s.save_outputs))
    if s.save_golden is not None:
        if report.passed:
            save_golden(s.save_golden, reference_run, [report.precision], s.force)
            report.files.append(str(s.save_golden))
        else:
            report.notes.append("verification failed: no golden file written")
    report.timings.update(timings)
    return report

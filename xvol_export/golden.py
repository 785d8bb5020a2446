"""Golden files: the verdict CI gave a graph, given again on the machine that runs it, with no model and no PyTorch.

``golden.npz`` holds the verification inputs (and labels), the float64 reference outputs, and, per precision,
the baselines' figures the default gate makes its limits of (:meth:`Reference.baseline_stats`). Judging an
artifact against it (:func:`verify_golden`) runs the artifact on those inputs on the host's runtime and
applies the same gates, so an ONNX graph, an OpenVINO IR or a TensorRT engine gets the same checks, report
and exit code on the deployment host as in CI, where only xvol and that runtime are installed.

The file carries the sha256 of its own contents: an edited or damaged golden file vouches for nothing and
fails. (A manifest lists the file's own sha256 too, to check it against what CI wrote.)
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import numpy as np

from xvol_export.compare import ErrorStats, Tolerance
from xvol_export.env import cpu_isa
from xvol_export.errors import CheckFailed, XvolError
from xvol_export.inputs import InputData
from xvol_export.io import atomic_write
from xvol_export.limits import check_input_file
from xvol_export.runners import Runner
from xvol_export.verify.outputs import Outputs, run_batches
from xvol_export.verify.report import VerifyReport, judge
from xvol_export.version import __version__

if TYPE_CHECKING:
    from xvol_export.verify.run import Reference

GOLDEN_FORMAT = 1
GOLDEN_NAME = "golden.npz"
_META = "meta"


def save_golden(path: str | os.PathLike, reference: Reference, precisions: Iterable[str],
                force: bool = False) -> Path:
    """Write the golden file of ``reference`` (a float64 one, from a model) for candidates of ``precisions``
    (their baselines computed now if not yet); returns its path. Written atomically."""
    if not reference.float64:
        raise XvolError("A golden file holds a float64 reference: make it from a checkpoint, not from a graph.")
    names = list(reference.truth.values)
    arrays = {"input": np.ascontiguousarray(np.asarray(reference.data.inputs, dtype=np.float32))}
    if reference.data.labels is not None:
        arrays["labels"] = np.asarray(reference.data.labels, dtype=np.int64)
    arrays.update({f"truth_{i}": reference.truth.values[name] for i, name in enumerate(names)})
    baselines, accuracy = {}, {}
    for precision in dict.fromkeys(precisions):
        gate_precision = "fp32" if precision == "int8" else precision  # int8's gate measures against fp32
        baselines[gate_precision] = {
            f"output:{n}": {label: s.to_dict() for label, s in reference.baseline_stats(gate_precision,
                                                                                         f"output:{n}").items()}
            for n in names}
        accuracy[gate_precision] = {n: reference.baseline_accuracy(gate_precision, n) for n in names}
    meta = {"format": GOLDEN_FORMAT, "xvol": __version__, "reference": reference.name,
            "outputs": names, "input_source": reference.data.source, "synthetic": bool(reference.data.synthetic),
            "notes": list(reference.notes), "baselines": baselines, "baseline_accuracy": accuracy,
            "machine": cpu_isa()}
    meta["sha256"] = _digest(meta, arrays)
    arrays[_META] = np.array(json.dumps(meta))
    with atomic_write(path, force) as tmp:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, **arrays)
    return Path(path)


@dataclass
class GoldenReference:
    """A golden file read back: the reference side of :func:`~xvol_export.verify.report.judge`, as a
    :class:`~xvol_export.verify.run.Reference` gives it, from stored figures instead of a model."""

    path: Path
    data: InputData
    truth: Outputs
    name: str
    baselines: dict[str, dict[str, dict[str, ErrorStats]]]
    accuracy: dict[str, dict[str, float | None]]
    made_on: str = ""
    notes: list[str] = field(default_factory=list)
    blocks: tuple[str, ...] = ()
    float64: bool = True
    batch_size: int = 64

    def baseline_stats(self, precision: str | None, key: str, blocks: bool = False) -> dict[str, ErrorStats]:
        if precision not in self.baselines:
            stored = ", ".join(self.baselines) or "none"
            raise XvolError(f"{self.path}: holds the baselines of {stored}, not {precision}: write it with that "
                            f"precision (xvol pipeline --precisions {precision}, or xvol verify --save-golden with "
                            f"an {precision} candidate).")
        return self.baselines[precision].get(key, {})

    def baseline_accuracy(self, precision: str | None, output: str) -> float | None:
        return self.accuracy.get(precision or "", {}).get(output)

    def run_candidate(self, candidate: Runner) -> Outputs:
        with candidate:
            return Outputs(run_batches(candidate, self.data.inputs, self.batch_size))


def load_golden(path: str | os.PathLike) -> GoldenReference:
    """Read a golden file; :class:`XvolError` (exit 2) for one that is not a golden file,
    :class:`CheckFailed` (exit 1) for one whose contents no longer match the sha256 it was written with."""
    path = check_input_file(path, "golden file")
    if not path.is_file():
        raise XvolError(f"{path}: no such file. Give the golden.npz that xvol pipeline (or verify --save-golden) "
                        "wrote.")
    try:
        with np.load(path, allow_pickle=False) as loaded:
            arrays = {key: loaded[key] for key in loaded.files}
        meta = json.loads(str(arrays.pop(_META)))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as err:
        raise XvolError(f"{path}: is not a golden file xvol wrote ({type(err).__name__}: {err}). Give the "
                        "golden.npz that xvol pipeline (or verify --save-golden) wrote.") from None
    if not isinstance(meta, dict) or meta.get("format") != GOLDEN_FORMAT:
        raise XvolError(f"{path}: golden file format {meta.get('format') if isinstance(meta, dict) else '?'} is not "
                        f"one this xvol reads ({GOLDEN_FORMAT}); write it again with this version.")
    stored = meta.pop("sha256", None)
    if stored != _digest(meta, arrays):
        raise CheckFailed(f"{path}: its contents no longer match the sha256 it was written with: the golden file "
                          "was changed or damaged after xvol wrote it, and vouches for nothing. Use the one CI wrote "
                          "(the manifest lists its sha256).")
    try:
        names = list(meta["outputs"])
        truth = Outputs({name: arrays[f"truth_{i}"].astype(np.float64) for i, name in enumerate(names)})
        data = InputData(arrays["input"], arrays.get("labels"), f"{meta['input_source']} (from {path.name})",
                         synthetic=bool(meta["synthetic"]))
        baselines = {precision: {key: {label: _stats(d) for label, d in by_label.items()}
                                 for key, by_label in by_key.items()}
                     for precision, by_key in meta["baselines"].items()}
    except (KeyError, TypeError, ValueError) as err:
        raise XvolError(f"{path}: is not a complete golden file (missing {err}); write it again.") from None
    return GoldenReference(path, data, truth, f"{meta['reference']} (golden file {path.name})", baselines,
                           meta.get("baseline_accuracy", {}), meta.get("machine", ""), list(meta.get("notes", [])))


def verify_golden(artifact: str | os.PathLike, golden: str | os.PathLike, tolerance: Tolerance | None = None,
                  backend: str | None = None) -> VerifyReport:
    """Judge ``artifact`` (an ONNX graph, OpenVINO IR or TensorRT engine) on this machine's runtime against the
    golden file: its stored inputs, float64 outputs and baselines, by the same gates as where it was written."""
    from xvol_export.artifacts import open_artifact

    reference = load_golden(golden)
    opened = open_artifact(artifact, name=Path(artifact).name, backend=backend)
    if opened.kind == "checkpoint":
        raise XvolError(f"{artifact}: a golden file judges a deployed artifact (an ONNX graph, OpenVINO IR or "
                        "TensorRT engine); compare checkpoints with xvol verify REFERENCE CANDIDATE.")
    runner = opened.runner
    try:
        outputs = reference.run_candidate(runner)
    except ValueError as err:
        raise XvolError(f"{artifact}: cannot run on the golden file's inputs: {err}.") from None
    precision = getattr(runner, "precision", None) or "fp32"
    try:
        report = judge(reference, outputs, precision, candidate_name=opened.path.name, tolerance=tolerance)
    except ValueError as err:  # other outputs: not the model the golden file was written for
        raise XvolError(f"{artifact}: cannot be compared with {golden}: {err}.") from None
    ran = getattr(runner, "precision_note", None)
    if callable(ran):
        report.notes.append(ran())
    report.notes += list(getattr(runner, "warnings", ()))
    if reference.made_on:
        report.notes.append(f"the golden file was written on {reference.made_on}")
    return report


def _stats(data: dict) -> ErrorStats:
    return ErrorStats(**{**data, "shape": tuple(data["shape"])})


def _digest(meta: dict, arrays: dict[str, np.ndarray]) -> str:
    """The sha256 of a golden file's contents: its metadata (without the digest) and every array's dtype,
    shape and bytes, in name order."""
    digest = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    for key in sorted(k for k in arrays if k != _META):
        value = np.ascontiguousarray(arrays[key])
        digest.update(f"{key}:{value.dtype.str}:{value.shape}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()

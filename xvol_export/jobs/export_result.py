"""The result of an export: every check it made (fold, graph, other shape, IR, engine), what it wrote and why not."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from xvol_export.export.formats import INFERENCE_ONLY_PRECISIONS, Made
from xvol_export.fold import FoldReport
from xvol_export.results import JobResult
from xvol_export.verify import VerifyReport

# The check that judges each format's artifact itself (an IR's and an engine's results carry their graph's too).
ARTIFACT_CHECK = {"onnx": "verification", "openvino": "ir_verification", "engine": "engine_verification"}
# Every check an export can make: the result's field and its label in the failure summary.
CHECKS = (("fold_verification", "fold"), ("verification", "ONNX"), ("dynamic_check", "other shape"),
          ("ir_verification", "OpenVINO IR"), ("engine_verification", "TensorRT engine"))


@dataclass(kw_only=True)
class ExportResult(JobResult):
    """One export: the fold and every check (fold, graph, other shape, IR, engine), what was written and why not.
    Its JSON (:meth:`to_dict`) lists the fields in the order declared here."""

    source: str
    source_sha256: str
    output: str
    written: bool = False
    format: str
    precision: str
    graph_precision: str = field(init=False)  # the precision in the graph: bf16 is OpenVINO's on an fp32 graph
    inference_precision: str | None = None  # --format openvino: what OpenVINO computed the IR in (read back)
    exporter: str
    opset: int
    dynamic: bool
    input_shape: tuple[int, ...]
    simplifier: str | None = None
    deploy_options: dict[str, str] = field(default_factory=dict)  # how the deploy blocks compute in the graph
    fold: FoldReport | None = None
    fold_verification: VerifyReport | None = None
    verification: VerifyReport | None = None
    dynamic_check: VerifyReport | None = None
    ir_verification: VerifyReport | None = None  # --format openvino: the IR on OpenVINO
    engine: dict | None = None  # --format engine: precision plan, profiles, layer precision check, build time
    engine_verification: VerifyReport | None = None  # --format engine: the engine on TensorRT
    tensorrt_compatibility: dict | None = None  # would TensorRT's ONNX parser take the graph (checked on the CPU)
    graph: dict = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    int8: dict | None = None  # calibration method, sensitivity report, fallback (kept-float layers and why)

    def __post_init__(self):
        self.graph_precision = "fp32" if self.precision in INFERENCE_ONLY_PRECISIONS else self.precision

    @property
    def reports(self) -> list[VerifyReport]:
        return [r for name, _ in CHECKS if (r := getattr(self, name)) is not None]

    @property
    def artifact_verification(self) -> VerifyReport | None:
        """The verdict on this result's own artifact: the graph, the IR or the engine, run on its runtime."""
        return getattr(self, ARTIFACT_CHECK[self.format])

    @property
    def passed(self) -> bool:
        return not self.failures and all(r.passed for r in self.reports)

    def failure_summary(self) -> str:
        parts = list(self.failures)
        parts += [f"{label}: {r.failure_summary()}" for name, label in CHECKS
                  if (r := getattr(self, name)) is not None and not r.passed]
        return "; ".join(parts)

    def for_artifact(self, format: str, output: Path) -> ExportResult:
        """A new result for another artifact made from this result's written graph: the graph's record (source,
        how it was exported, its checks, metadata, int8) and nothing of what this one wrote or noted."""
        return dataclasses.replace(self, format=format, output=str(output), written=False, files=[], failures=[],
                                   notes=[], timings={}, metadata=dict(self.metadata))

    def record(self, made: Made) -> None:
        """Take in what a format's maker did: its files, checks, details, failures and notes."""
        for name, value in {**made.checks, **made.details}.items():
            setattr(self, name, value)
        self.files += [str(f) for f in made.files]
        self.written = self.written or made.written
        self.failures += made.failures
        self.notes += made.notes

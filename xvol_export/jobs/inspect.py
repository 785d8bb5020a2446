"""`xvol inspect`: what a checkpoint holds and what folding will do to each block; or an ONNX graph's contents."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from torch import nn

from xvol_export.checkpoint import LoadOptions
from xvol_export.errors import XvolError
from xvol_export.fold import fold
from xvol_export.fold.family import deploy_family, get_family
from xvol_export.fold.profile import count_params, profile_model
from xvol_export.inputs import InputShape, check_input_shape
from xvol_export.limits import check_input_file
from xvol_export.results import JobResult
from xvol_export.verify.run import check_batch_fits


@dataclass(frozen=True)
class InspectSettings:
    """``layout``: the layout the fold would choose (``auto``: per block, by cost); ``input_shape``: the shape the
    MACs are counted at (default the model's own); ``load``: how to read the checkpoint."""

    layout: str = "auto"
    input_shape: InputShape | None = None
    load: LoadOptions = LoadOptions()


@dataclass
class BlockPlan:
    """One foldable block: its family and rule, what it is before and after, its size and cost."""

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
    family: str = ""
    rule: str = ""  # the family's one-line description of its fold


@dataclass
class InspectReport(JobResult):
    """A checkpoint's architecture, size and cost, and per block what the fold will do (nothing is written)."""

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
    fused: list[dict] = field(default_factory=list)  # {kind, layer, norm}: every norm the fold absorbs
    left: list[dict] = field(default_factory=list)  # {name, reason}: what stays as it is, and why
    batchnorms_after: int | None = None
    params_after: int | None = None
    macs_after: int | None = None

    def to_dict(self) -> dict:
        out = asdict(self)
        for shared in ("files", "timings", "notes"):
            out.pop(shared)
        out["input_shape"] = list(self.input_shape)
        return {**self.job_fields(), **out}


@dataclass
class GraphReport(JobResult):
    """An ONNX graph's contents (:func:`inspect_graph`); it passes when TensorRT's ONNX parser takes every node."""

    path: str
    graph: dict

    @property
    def passed(self) -> bool:
        return self.graph["tensorrt_compatibility"]["compatible"]

    def failure_summary(self) -> str:
        if self.passed:
            return ""
        refused = len(self.graph["tensorrt_compatibility"]["problems"])
        return f"{self.path}: TensorRT's ONNX parser would refuse {refused} node(s)"

    def to_dict(self) -> dict:
        return dict(self.graph)


def inspect_artifact(path: str | os.PathLike,
                     settings: InspectSettings = InspectSettings()) -> InspectReport | GraphReport:
    """What any artifact holds: an ``.onnx`` graph's contents, else a checkpoint's (:func:`inspect_checkpoint`)."""
    if Path(path).suffix.lower() == ".onnx":
        return GraphReport(path=os.fspath(path), graph=inspect_graph(path))
    return inspect_checkpoint(path, settings)


def inspect_graph(path: str | os.PathLike) -> dict:
    """An ONNX graph's inputs, outputs, opset, precision and ops, and whether TensorRT would take every node."""
    from xvol_export.export.onnx_graph import describe_graph

    if not check_input_file(path, "ONNX file").is_file():
        raise XvolError(f"{path}: no such file. Check the path (relative paths start from the current folder).")
    return describe_graph(path)


def inspect_checkpoint(path: str | os.PathLike, settings: InspectSettings = InspectSettings()) -> InspectReport:
    """Architecture, parameters and MACs, and what folding will do to every block (nothing is written)."""
    model, ckpt = settings.load.load(path)
    return inspect_model(model, ckpt, settings)


def inspect_model(model: nn.Module, ckpt, settings: InspectSettings = InspectSettings()) -> InspectReport:
    """The in-memory core of :func:`inspect_checkpoint`: ``model`` as loaded from ``ckpt`` (its header)."""
    shape = _profile_shape(model, ckpt.label, settings.input_shape)
    check_batch_fits(model, shape, f"profiling {ckpt.label} at {'x'.join(map(str, shape))}",
                     "Give a smaller --input-shape.", itemsize=8)  # the fold's profile runs in float64
    report = InspectReport(
        path=str(ckpt.label), sha256=ckpt.sha256 or "", architecture=ckpt.architecture,
        config=dict(getattr(model, "xvol_arch", {}).get("config", ckpt.config)),  # defaults filled in
        folded=ckpt.folded, input_shape=shape, params=count_params(model), macs=0,
        batchnorms=sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()),
        notes=list(ckpt.notes),
    )
    if ckpt.folded:
        profile = profile_model(model, shape)
        report.macs = profile.total_macs
        for name, block in model.named_modules():
            family = deploy_family(block)
            if family is not None:
                ops, params, macs = family.describe_deploy(block), count_params(block), profile.macs_under(name)
                config = family.deploy_config(block)
                report.blocks.append(BlockPlan(name, config, ops, params, macs, config.get("layout", ""), "folded",
                                               ops, params, macs, family.name, family.description))
        report.notes.append("already folded: fold has nothing to do")
        return report
    _, fold_report = fold(model, layout=settings.layout, input_shape=shape)  # it profiles before and after
    report.macs = fold_report.macs_before
    for planned in fold_report.blocks:
        spec = fold_report.plan.blocks.get(planned.name)
        rule = get_family(spec["family"]).description if spec else planned.reason
        report.blocks.append(BlockPlan(
            planned.name, spec["config"] if spec else {}, planned.ops_before, planned.params_before,
            planned.macs_before, planned.layout, planned.reason, planned.ops_after, planned.params_after,
            planned.macs_after, planned.family, rule,
        ))
    report.conv_bn_pairs = len(fold_report.fused)
    report.fused = list(fold_report.fused)
    report.left = list(fold_report.left)
    report.batchnorms_after = len(fold_report.remaining_batchnorms)
    report.params_after = fold_report.params_after
    report.macs_after = fold_report.macs_after
    report.notes += fold_report.notes
    return report


def _profile_shape(model: nn.Module, label: str, input_shape: InputShape | None) -> tuple[int, ...]:
    size = getattr(model, "input_size", None)
    if input_shape is not None:
        return (1, *check_input_shape(input_shape, size, label)[1:])  # the rank and channels fold checks
    if not size:
        raise XvolError(f"{label}: the model has no default input size. Pass --input-shape, e.g. 1x3x224x224.")
    return (1, *size)

"""Whole-model fold: every XVolution to its deploy form and every BatchNorm into its conv."""

from __future__ import annotations

import copy
import itertools
from dataclasses import asdict, dataclass, field

import torch
import torch.fx
from torch import nn

from xvol_export.dtypes import describe_dtype, resolve_dtype
from xvol_export.fold.blocks import fold_conv_bn, fold_xvolution
from xvol_export.fold.cost import choose_layout
from xvol_export.layers import AGGREGATES, DILATED_CONVS, LAYOUTS, XVolution, XVolutionDeploy
from xvol_export.profile import count_params, profile_model

LAYOUT_CHOICES = LAYOUTS + ("auto",)
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass
class BlockFold:
    """What the fold did to one X-volution block."""

    name: str
    layout: str
    reason: str
    params_before: int
    params_after: int
    macs_before: int | None = None
    macs_after: int | None = None
    ops_before: str = ""
    ops_after: str = ""


@dataclass
class FoldReport:
    layout: str
    blocks: list[BlockFold] = field(default_factory=list)
    fused_conv_bn: list[tuple[str, str]] = field(default_factory=list)
    remaining_batchnorms: list[str] = field(default_factory=list)
    forced_eval: bool = False
    notes: list[str] = field(default_factory=list)
    params_before: int = 0
    params_after: int = 0
    macs_before: int | None = None  # per item, at the profiled input shape
    macs_after: int | None = None
    source_dtype: str = "fp32"  # the input model's floating dtype (short name: fp16, bf16, fp32, fp64)
    deploy_dtype: str = "fp32"  # the deploy model's; the fold itself always computes in fp64

    @property
    def layouts(self) -> dict[str, str]:
        return {b.name: b.layout for b in self.blocks}

    def to_dict(self) -> dict:
        out = asdict(self)
        out["layouts"] = self.layouts
        return out


def fold(
    model: nn.Module,
    layout: str = "auto",
    input_shape: tuple[int, ...] | None = None,
    dilated_conv: str = "direct",
    aggregate: str = "slices",
    dtype: str | torch.dtype | None = None,
) -> tuple[nn.Module, FoldReport]:
    """Return ``(deploy_model, report)``; ``model`` itself is never modified.

    The deploy model is an eval-mode copy in which every :class:`XVolution` is an
    :class:`XVolutionDeploy` (``layout``: ``dense``, ``split`` or ``auto``, chosen per block by the
    cost model) and every BatchNorm that follows a conv is folded into it. ``input_shape``
    (batch included; default: the model's ``input_size``) sizes the per-block costs.
    ``dilated_conv`` and ``aggregate`` choose how the deploy blocks compute, for speed on a runtime
    (see :func:`set_runtime_options`).

    The fold computes in float64 whatever the model's dtype: a float64 copy of the model is traced,
    profiled and folded, and the deploy model is cast once at the end to ``dtype`` (``fp16``,
    ``bf16``, ``fp32``, ``fp64`` or the torch dtype; default: the dtype of the model's first
    floating parameter). So an fp16 model folds to the fp16 rounding of its exact fold, and an
    fp32 model to the same weights as a float64 fold cast to fp32.
    """
    if layout not in LAYOUT_CHOICES:
        raise ValueError(f"layout must be one of {LAYOUT_CHOICES}, got {layout!r}")
    _check_options(dilated_conv, aggregate)
    source = _floating_dtype(model)
    target = resolve_dtype(dtype) if dtype is not None else source
    report = FoldReport(layout=layout, forced_eval=model.training, params_before=count_params(model),
                        source_dtype=describe_dtype(source), deploy_dtype=describe_dtype(target))
    if model.training:
        report.notes.append("the model was in training mode: folded (and verified) with eval-mode BatchNorm")

    deploy = copy.deepcopy(model).eval().to(torch.float64)  # fold in float64; integer buffers stay as they are
    if input_shape is None and getattr(model, "input_size", None):
        input_shape = (1, *model.input_size)
    before = profile_model(deploy, tuple(input_shape)) if input_shape is not None else None
    report.macs_before = before.total_macs if before is not None else None

    for name, module in list(deploy.named_modules()):
        if not isinstance(module, XVolution):
            continue
        out_hw = tuple(before.output_shapes[name][-2:]) if before is not None else None
        chosen, reason = (layout, "requested") if layout != "auto" else choose_layout(module.config(), out_hw)
        _check_dense_fits(name, module, chosen, target)
        folded = fold_xvolution(module, chosen, dilated_conv, aggregate)
        block = BlockFold(
            name=name,
            layout=folded.layout,
            reason=reason,
            params_before=count_params(module),
            params_after=count_params(folded),
            ops_before=describe_training(module),
            ops_after=describe_deploy(folded),
        )
        if before is not None:
            block.macs_before = before.macs_under(name)
        report.blocks.append(block)
        if name:
            _set_submodule(deploy, name, folded)
        else:  # the model is a bare block
            deploy = folded

    report.fused_conv_bn = _fuse_conv_bn_pairs(deploy, report)
    report.remaining_batchnorms = [n for n, m in deploy.named_modules() if isinstance(m, _BATCHNORMS)]
    if report.remaining_batchnorms:
        report.notes.append(
            f"{len(report.remaining_batchnorms)} BatchNorm(s) do not directly follow a conv and stay: "
            + ", ".join(report.remaining_batchnorms)
        )
    if not report.blocks and not report.fused_conv_bn:
        report.notes.append("nothing to fold: the model holds no X-volution block and no conv + BatchNorm pair")
    if input_shape is not None:
        after = profile_model(deploy, tuple(input_shape))
        report.macs_after = after.total_macs
        for block in report.blocks:
            block.macs_after = after.macs_under(block.name)
    report.params_after = count_params(deploy)
    return deploy.to(target), report


def _floating_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's first floating parameter (else buffer); float32 if it has none."""
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32


class _LeafTracer(torch.fx.Tracer):
    """Traces the model's own wiring only: X-volution blocks stay opaque."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (XVolution, XVolutionDeploy)) or super().is_leaf_module(m, qualname)


def _fuse_conv_bn_pairs(model: nn.Module, report: FoldReport) -> list[tuple[str, str]]:
    """Find ``conv -> BN`` edges by tracing (the conv's only consumer is the BN) and fold each."""
    try:
        graph = _LeafTracer().trace(model)
    except Exception as err:  # noqa: BLE001 - any tracing failure means we cannot see the wiring
        report.notes.append(f"could not trace the model to pair convs with BatchNorms ({err}); none fused")
        return []
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], nn.BatchNorm2d):
            continue
        src = node.args[0] if node.args else None
        if not isinstance(src, torch.fx.Node) or src.op != "call_module":
            continue
        conv = modules[src.target]
        if (
            isinstance(conv, nn.Conv2d)
            and len(src.users) == 1
            and calls[src.target] == 1
            and calls[node.target] == 1
        ):
            pairs.append((src.target, node.target))
    for conv_name, bn_name in pairs:
        _set_submodule(model, conv_name, fold_conv_bn(modules[conv_name], modules[bn_name]))
        _set_submodule(model, bn_name, nn.Identity())
    return pairs


def set_runtime_options(model: nn.Module, *, dilated_conv: str | None = None, aggregate: str | None = None,
                        inplace: bool = False) -> nn.Module:
    """``model`` (a copy unless ``inplace``) with its deploy blocks set to compute their way for a runtime.

    ``dilated_conv``: ``direct`` (one dilated conv) or ``phases`` (a dense conv on the phase images);
    ``aggregate``: ``slices`` or one-hot ``convs``; ``None`` leaves a setting as it is.
    ``xvol_export.layers.onnx_options(batch)`` and ``TORCH_CPU_OPTIONS`` give the fastest measured choices.
    Weights and outputs are unchanged. These are runtime choices, not part of the weights:
    checkpoints do not record them, so set them after loading.
    """
    _check_options(dilated_conv or "direct", aggregate or "slices")
    target = model if inplace else copy.deepcopy(model)
    for name, block in list(target.named_modules()):
        if not isinstance(block, XVolutionDeploy):
            continue
        config = {**block.config(), "dilated_conv": dilated_conv or block.dilated_conv,
                  "aggregate": aggregate or block.aggregate}
        if config == block.config():
            continue
        param = next(block.parameters())
        rebuilt = XVolutionDeploy(**config).to(device=param.device, dtype=param.dtype).train(block.training)
        rebuilt.load_state_dict(block.state_dict())
        if name:
            _set_submodule(target, name, rebuilt)
        else:
            target = rebuilt
    return target


def _check_dense_fits(name: str, block: XVolution, layout: str, dtype: torch.dtype) -> None:
    """A dense block's one kernel is ``(4d+1)x(4d+1)``: refuse one that cannot fit before it is made (the
    float64 fold keeps three of that size, the deploy block one more in ``dtype``)."""
    if layout != "dense" or not block.dilated_branch:
        return
    from xvol_export.limits import check_fits

    size = 4 * block.dilation + 1
    values = float(block.out_channels) * (block.in_channels // block.groups) * size * size
    itemsize = torch.empty(0, dtype=dtype).element_size()
    check_fits(values * (3 * 8 + itemsize),
               f"block {name or '(the model)'}: the dense layout of dilation {block.dilation} (one {size}x{size} "
               f"kernel, {values:,.0f} values)",
               "Fold it with --layout split (or auto), which keeps the 3x3 and the dilated 5x5 apart.")


def _check_options(dilated_conv: str, aggregate: str) -> None:
    if dilated_conv not in DILATED_CONVS:
        raise ValueError(f"dilated_conv must be one of {DILATED_CONVS}, got {dilated_conv!r}")
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate must be one of {AGGREGATES}, got {aggregate!r}")


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def describe_training(block: XVolution) -> str:
    parts = ["conv3x3+BN"]
    if block.dilated_branch:
        parts.append(f"conv5x5(d={block.dilation})+BN")
    if block.attention:
        parts.append("PSSA(q,k,v 1x1)+BN")
    return " + ".join(parts)


def describe_deploy(block: XVolutionDeploy) -> str:
    if block.layout == "dense":
        k = block.static.kernel_size[0]
        parts = [f"conv{k}x{k}"]
    else:
        parts = ["conv3x3", f"conv5x5(d={block.dilation})"]
    if block.attention:
        parts.append("proj1x1 + aggregate")
    return " + ".join(parts)

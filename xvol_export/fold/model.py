"""The model walker: every registered block family's blocks to their deploy form, blocks of unknown classes
through their own re-parameterization hook, then every norm layer into its neighbouring conv or linear; and the
replay of a fold plan on a training skeleton."""

from __future__ import annotations

import copy
import itertools
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from xvol_export.dtypes import describe_dtype, resolve_dtype
from xvol_export.fold.conv_bn import fuse_norms, fused_layer
from xvol_export.fold.family import (
    BlockFamily,
    FoldContext,
    RuntimeTarget,
    block_types,
    check_layout,
    deploy_family,
    families,
    get_family,
    training_family,
)
from xvol_export.fold.hooks import fold_with_hook, hook_of, replay_hook
from xvol_export.fold.plan import FoldPlan
from xvol_export.fold.profile import count_params, profile_model
from xvol_export.fold.submodule import replace_submodule

_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass
class BlockFold:
    """What the fold did to one block: its family (``hook:NAME`` for a block folded by its own method), the
    layout chosen and why (families with layouts), its size and cost before and after."""

    name: str
    layout: str
    reason: str
    params_before: int
    params_after: int
    macs_before: int | None = None
    macs_after: int | None = None
    ops_before: str = ""
    ops_after: str = ""
    family: str = ""


@dataclass
class FoldReport:
    layout: str
    blocks: list[BlockFold] = field(default_factory=list)
    fused_conv_bn: list[tuple[str, str]] = field(default_factory=list)  # (layer, norm) of every fusion
    fused: list[dict[str, str]] = field(default_factory=list)  # {kind, layer, norm}
    left: list[dict[str, str]] = field(default_factory=list)  # {name, reason}: norms and blocks left as they are
    remaining_batchnorms: list[str] = field(default_factory=list)
    forced_eval: bool = False
    notes: list[str] = field(default_factory=list)
    params_before: int = 0
    params_after: int = 0
    macs_before: int | None = None  # per item, at the profiled input shape
    macs_after: int | None = None
    source_dtype: str = "fp32"  # the input model's floating dtype (short name: fp16, bf16, fp32, fp64)
    deploy_dtype: str = "fp32"  # the deploy model's; the fold itself always computes in fp64
    plan: FoldPlan = field(default_factory=FoldPlan)

    @property
    def layouts(self) -> dict[str, str]:
        return {b.name: b.layout for b in self.blocks if b.layout}

    def to_dict(self) -> dict:
        out = asdict(self)
        out["plan"] = self.plan.to_dict()
        out["layouts"] = self.layouts
        return out


def fold(
    model: nn.Module,
    layout: str = "auto",
    input_shape: tuple[int, ...] | None = None,
    dtype: str | torch.dtype | None = None,
    **runtime: str,
) -> tuple[nn.Module, FoldReport]:
    """Return ``(deploy_model, report)``; ``model`` itself is never modified.

    The deploy model is an eval-mode copy in which every block of a registered family is in its deploy form
    (``layout``: one of the families' layouts, or ``auto``: chosen per block by the family's cost model), every
    block of an unknown class with its own ``reparameterize``/``switch_to_deploy``/``fuse`` is folded by that
    method, and every BatchNorm next to a conv or linear is folded into it; what stays is named in
    ``report.left`` with the reason. ``input_shape`` (batch included; default: the model's ``input_size``)
    sizes the per-block costs. ``runtime`` options (e.g. X-volution's ``dilated_conv``, ``aggregate``)
    choose how deploy blocks compute (see :func:`set_runtime_options`). The deploy model carries the fold
    plan as ``xvol_fold_plan`` (what a deploy checkpoint stores).

    The fold computes in float64 whatever the model's dtype: a float64 copy is traced, profiled and folded,
    and the deploy model is cast once at the end to ``dtype`` (``fp16``, ``bf16``, ``fp32``, ``fp64`` or the
    torch dtype; default: the dtype of the model's first floating parameter).
    """
    check_layout(layout)
    _check_runtime(runtime)
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

    inside: tuple[str, ...] = ()  # blocks folded already: their submodules are theirs
    for name, module in list(deploy.named_modules()):
        if "" in inside or any(name.startswith(f"{b}.") for b in inside):  # the root folded: nothing left
            continue
        family = training_family(module)
        hook = hook_of(module) if family is None and deploy_family(module) is None else None
        if family is None and hook is None:
            continue
        ops_before = family.describe_training(module) if family else type(module).__name__
        if family is not None:
            chosen, reason = _layout_for(family, module, layout, name, before)
            context = FoldContext(chosen, _out_hw(before, name), _runtime_for(family, runtime))
            folded = family.fold(module, context)
            config = family.deploy_config(folded)
            report.plan.blocks[name] = {"family": family.name, "config": config}
            chosen = config.get("layout", chosen) if family.layouts else chosen  # what the deploy block really is
            ops_after = family.describe_deploy(folded)
        else:
            try:
                folded, record = fold_with_hook(module)
            except ValueError as err:
                report.left.append({"name": name, "reason": str(err)})
                continue
            chosen, reason = "", f"its own {record['hook']}() ({record['mode'].replace('_', ' ')})"
            report.plan.hooks[name] = record
            ops_after = type(folded).__name__
        block = BlockFold(name=name, layout=chosen, reason=reason, params_before=count_params(module),
                          params_after=count_params(folded), ops_before=ops_before, ops_after=ops_after,
                          family=family.name if family else f"hook:{hook}")
        if before is not None:
            block.macs_before = before.macs_under(name)
        report.blocks.append(block)
        inside += (name,)
        deploy = replace_submodule(deploy, name, folded)

    deploy, report.fused, left = fuse_norms(deploy, block_types())
    report.fused_conv_bn = [(f["layer"], f["norm"]) for f in report.fused]
    report.plan.fused = list(report.fused)
    report.left += left
    report.remaining_batchnorms = [n for n, m in deploy.named_modules() if isinstance(m, _BATCHNORMS)]
    if report.remaining_batchnorms:
        why = {e["name"]: e["reason"] for e in left}
        report.notes.append(f"{len(report.remaining_batchnorms)} BatchNorm(s) stay: " + "; ".join(
            f"{n} ({why[n]})" if n in why else n for n in report.remaining_batchnorms))
    if not report.blocks and not report.fused:
        report.notes.append("nothing to fold: the model holds no re-parameterizable block and no norm next to a "
                            "conv or linear")
    if input_shape is not None:
        after = profile_model(deploy, tuple(input_shape))
        report.macs_after = after.total_macs
        for block in report.blocks:
            block.macs_after = after.macs_under(block.name)
    report.params_after = count_params(deploy)
    deploy = deploy.to(target)
    deploy.xvol_fold_plan = report.plan
    return deploy, report


def fold_both(model: nn.Module, layout: str = "auto", input_shape: tuple[int, ...] | None = None,
              dtype: str | torch.dtype | None = None, **runtime: str) -> tuple[nn.Module, nn.Module, FoldReport]:
    """:func:`fold` once, giving both the deploy model in ``dtype`` and its float64 form before the cast: ``(deploy,
    deploy64, report)``. Verification judges the first next to the second, whose weights are not rounded."""
    deploy64, report = fold(model, layout, input_shape, torch.float64, **runtime)
    target = resolve_dtype(dtype) if dtype is not None else _floating_dtype(model)
    deploy = copy.deepcopy(deploy64).to(target)  # the fold plan goes with the copy
    report.deploy_dtype = describe_dtype(target)
    return deploy, deploy64, report


def apply_plan(skeleton: nn.Module, plan: FoldPlan) -> nn.Module:
    """Turn a training-form ``skeleton`` (in place; best on the meta device) into the deploy form ``plan``
    describes, with the parameters the deploy state dict holds; return it. :class:`ValueError` naming a
    block or layer the skeleton lacks or that is not what the plan says."""
    modules = dict(skeleton.named_modules())
    for name, spec in plan.hooks.items():
        _require(modules, name, "block")
        replaced = replay_hook(modules[name], spec["hook"])
        skeleton = replace_submodule(skeleton, name, replaced)
    for name, spec in plan.blocks.items():
        block = _require(modules, name, "block")
        family = get_family(spec["family"])
        if not isinstance(block, family.training_types + family.deploy_types):
            raise ValueError(f"block {name or '(the model)'} is a {type(block).__name__}, not a {family.name} block")
        deploy = family.build_deploy(spec["config"])
        _match(deploy, block)
        skeleton = replace_submodule(skeleton, name, deploy)
    modules = dict(skeleton.named_modules())
    for pair in plan.fused:
        layer = _require(modules, pair["layer"], "layer")
        _require(modules, pair["norm"], "norm")
        skeleton = replace_submodule(skeleton, pair["layer"], fused_layer(layer))
        skeleton = replace_submodule(skeleton, pair["norm"], nn.Identity())
    return skeleton


def _require(modules: dict[str, nn.Module], name: str, what: str) -> nn.Module:
    if name not in modules:
        raise ValueError(f"the fold plan names {what} '{name}', which the model does not have")
    return modules[name]


def _match(module: nn.Module, like: nn.Module) -> None:
    """Move ``module`` to ``like``'s device and floating dtype (the meta device, for a skeleton)."""
    tensor = next(iter(like.parameters()), None)
    if tensor is not None:
        module.to(device=tensor.device, dtype=tensor.dtype)


def _layout_for(family: BlockFamily, module: nn.Module, layout: str, name: str, profile) -> tuple[str, str]:
    if not family.layouts:
        return "", ""
    if layout in family.layouts:
        return layout, "requested"
    return family.choose_layout(module, FoldContext(out_hw=_out_hw(profile, name)))


def _out_hw(profile, name: str) -> tuple[int, int] | None:
    if profile is None or name not in profile.output_shapes:
        return None
    return tuple(profile.output_shapes[name][-2:])


def _runtime_for(family: BlockFamily, runtime: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in runtime.items() if k in family.runtime_choices}


def _check_runtime(runtime: dict[str, str]) -> None:
    """Every option must be some family's, with one of its choices (``ValueError`` naming the choices)."""
    for option, value in runtime.items():
        choices = {c for f in families() for c in f.runtime_choices.get(option, ())}
        if not choices:
            known = sorted({o for f in families() for o in f.runtime_choices})
            raise ValueError(f"unknown runtime option {option!r}; the registered families take {known}")
        if value not in choices:
            raise ValueError(f"{option} must be one of {tuple(sorted(choices))}, got {value!r}")


def _floating_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's first floating parameter (else buffer); float32 if it has none."""
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32


def runtime_options(model: nn.Module, target: RuntimeTarget) -> dict[str, str]:
    """The fastest computing options, for ``target``, of the deploy blocks ``model`` holds (all families merged)."""
    options: dict[str, str] = {}
    for family in {deploy_family(m).name: deploy_family(m) for m in model.modules() if deploy_family(m)}.values():
        if family.runtime_options is not None:
            options.update(family.runtime_options(target))
    return options


def set_runtime_options(model: nn.Module, target: RuntimeTarget | None = None, *, inplace: bool = False,
                        **options: str | None) -> nn.Module:
    """``model`` (a copy unless ``inplace``) with its deploy blocks set to compute their way for a runtime.

    ``target`` picks each family's fastest measured options for a backend, device and batch; ``options``
    (e.g. X-volution's ``dilated_conv="phases"``, ``aggregate="convs"``; ``None`` leaves one as it is) set
    them directly and win. Weights and outputs are unchanged. These are runtime choices, not part of the
    weights: checkpoints do not record them, so set them after loading.
    """
    given = {k: v for k, v in options.items() if v is not None}
    _check_runtime(given)
    result = model if inplace else copy.deepcopy(model)
    for name, block in list(result.named_modules()):
        family = deploy_family(block)
        if family is None or family.apply_runtime is None:
            continue
        chosen = dict(family.runtime_options(target)) if target is not None and family.runtime_options else {}
        chosen.update(_runtime_for(family, given))
        if all(getattr(block, k, None) == v for k, v in chosen.items()):
            continue
        result = replace_submodule(result, name, family.apply_runtime(block, chosen))
    return result

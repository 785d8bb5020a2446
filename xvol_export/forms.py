"""A model's two forms: which one a state dict holds, and the fold plan that turns a training form into a given
deploy model. What checkpoint reading needs to name a wrong form and to rebuild or record a deploy model."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from xvol_export.errors import XvolError
from xvol_export.fold.family import deploy_family, layout_choices
from xvol_export.fold.model import apply_plan, fold
from xvol_export.fold.plan import FoldPlan

# The names common re-parameterizable blocks give their folded layers (when the fold cannot run to tell).
_DEPLOY_NAMES = ("rbr_reparam", "reparam_conv", "fused_conv", "dbb_reparam")
_DEPLOY_SUFFIXES = ("lk_origin.bias",)


def apply_fold_plan(skeleton: nn.Module, plan: FoldPlan) -> nn.Module:
    """:func:`~xvol_export.fold.model.apply_plan`, with every way a plan can fail to fit as :class:`ValueError`
    (a family that is not registered, a deploy config its family refuses)."""
    try:
        return apply_plan(skeleton, plan)
    except KeyError as err:  # get_family: no such family
        raise ValueError(err.args[0] if err.args else str(err)) from None
    except (TypeError, AttributeError, RuntimeError) as err:
        raise ValueError(f"{type(err).__name__}: {err}") from None


def recognize_form(make_training: Callable[[], nn.Module], model_keys: set[str], built_deploy: bool,
                   missing: list[str], unexpected: list[str]) -> str | None:
    """What a state dict that does not fit a model (of ``model_keys``, its deploy form if ``built_deploy``) holds:
    ``"deploy"`` (the folded form's weights, given to the training form), ``"training"`` (the reverse), or None
    (neither: other weights, another config).

    ``make_training()`` builds the training form (it is called on the meta device). Its deploy forms are the
    fold's, on meta copies, for every layout the registered families offer: deploy weights are those whose
    unexpected keys all belong to some deploy form and whose missing keys each are absent from one. Where
    that fold is not possible, the names that common blocks give their folded layers decide.
    """
    if not missing or not unexpected:
        return None
    missing_set, unexpected_set = set(missing), set(unexpected)
    with torch.device("meta"):
        training = set(make_training().state_dict())
    if built_deploy:  # missing: deploy-only keys; unexpected: training-only keys
        deploy = model_keys
        if missing_set <= deploy - training and unexpected_set <= training - deploy:
            return "training"
        return None
    forms = deploy_key_sets(make_training)
    if forms:
        union, shared = forms
        if unexpected_set <= union - training and missing_set <= training - shared:
            return "deploy"
    if any(_deploy_name(k) for k in unexpected):
        return "deploy"
    return None


def deploy_key_sets(make_training: Callable[[], nn.Module]) -> tuple[set[str], set[str]] | None:
    """The state-dict keys of the training form's deploy forms, one per layout the families offer: (every key
    some form has, the keys all forms have); None when the fold cannot run on the meta device."""
    layouts = sorted(set(layout_choices()) - {"auto"}) or ["auto"]
    union: set[str] = set()
    shared: set[str] | None = None
    for layout in layouts:
        try:
            keys = set(meta_fold(make_training, layout).state_dict())
        except Exception:  # noqa: BLE001 - a block's own fold may not run on the meta device; the names decide then
            return None
        union |= keys
        shared = keys if shared is None else shared & keys
    return union, shared or set()


def meta_fold(make_training: Callable[[], nn.Module], layout: str) -> nn.Module:
    """The fold of a training form built on the meta device (no weights, no profile: structure only)."""
    with torch.device("meta"):
        model = make_training()
        vars(model).pop("input_size", None)  # nothing is profiled on the meta device
        deploy, _ = fold(model, layout=layout)
    return deploy


def _deploy_name(key: str) -> bool:
    parts = key.split(".")
    return any(name in parts for name in _DEPLOY_NAMES) or key.endswith(_DEPLOY_SUFFIXES)


def derive_plan(make_training: Callable[[], nn.Module], deploy: nn.Module) -> FoldPlan:
    """The fold plan that turns the training form ``make_training()`` builds into ``deploy`` (a deploy model that
    carries none: a version-1 file's, or one built with ``deploy=True``): the fold's plan on a meta copy, with
    each block's deploy config read from ``deploy``. :class:`ValueError` when the plan does not give ``deploy``'s
    weights (the same keys)."""
    found = getattr(meta_fold(make_training, "auto"), "xvol_fold_plan", None)
    if not isinstance(found, FoldPlan):
        raise ValueError("the fold gives no plan")
    modules = dict(deploy.named_modules())
    blocks = {}
    for name, block in found.blocks.items():
        family = deploy_family(modules[name]) if name in modules else None
        if family is None or family.name != block["family"]:
            raise ValueError(f"block {name or '(the model)'} is not a {block['family']} deploy block")
        blocks[name] = {"family": family.name, "config": family.deploy_config(modules[name])}
    plan = FoldPlan(blocks=blocks, fused=list(found.fused), hooks=dict(found.hooks))
    with torch.device("meta"):
        rebuilt = set(apply_fold_plan(make_training(), plan).state_dict())
    have = set(deploy.state_dict())
    if rebuilt != have:
        raise ValueError(f"its plan gives other weights (missing {_few(sorted(have - rebuilt))}; "
                         f"unexpected {_few(sorted(rebuilt - have))})")
    return plan


def current_plan(model: nn.Module, plan: FoldPlan) -> FoldPlan:
    """``plan`` with each block's deploy config read from ``model`` (a block rebuilt after the fold, with other
    runtime options or another layout, is recorded as it is); :class:`XvolError` for a block it no longer has."""
    modules = dict(model.named_modules())
    blocks = {}
    for name, block in plan.blocks.items():
        family = deploy_family(modules[name]) if name in modules else None
        if family is None or family.name != block["family"]:
            now = type(modules[name]).__name__ if name in modules else "missing"
            raise XvolError(
                f"The model's fold plan (xvol_fold_plan) has block '{name}' as a {block['family']} deploy block, but "
                f"it is {now}: the model was changed after folding. Fold the training model again."
            )
        blocks[name] = {"family": family.name, "config": family.deploy_config(modules[name])}
    return FoldPlan(blocks=blocks, fused=list(plan.fused), hooks=dict(plan.hooks))


def _few(names: list[str], limit: int = 4) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "") if names else "none"


"""Saving: a model's checkpoint record (training form or folded, with its fold plan), written in format version 2."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from xvol_export.checkpoint.format import write_checkpoint_file
from xvol_export.checkpoint.header import new_header
from xvol_export.checkpoint.legacy import version1_plan
from xvol_export.checkpoint.record import Checkpoint, error_reason
from xvol_export.checkpoint.state_dict import listing
from xvol_export.dtypes import resolve_dtype
from xvol_export.errors import XvolError
from xvol_export.fold.family import deploy_family
from xvol_export.fold.plan import FoldPlan
from xvol_export.forms import current_plan, derive_plan
from xvol_export.models.spec import ModelSpec, config_problems
from xvol_export.naming import setting


def is_folded(model: nn.Module) -> bool:
    """Whether ``model`` is a deploy form: it carries a fold plan (``xvol_fold_plan``, set by the fold and by
    loading a deploy checkpoint), or holds a registered family's deploy block (``create_model(deploy=True)``)."""
    if isinstance(getattr(model, "xvol_fold_plan", None), FoldPlan):
        return True
    return any(deploy_family(m) is not None for m in model.modules())


def checkpoint_from_model(model: nn.Module, metadata: dict | None = None) -> Checkpoint:
    """The checkpoint of a model built by :func:`~xvol_export.create_model` or a :class:`ModelSpec` (its
    ``xvol_arch``), in the training form or folded (its ``xvol_fold_plan``, brought up to date with its blocks)."""
    arch = getattr(model, "xvol_arch", None)
    if not arch:
        raise XvolError(
            "The model carries no architecture record (xvol_arch): build it with "
            "xvol_export.create_model (or, for your own model, xvol_export.models.spec.ModelSpec"
            "('package.module:factory').build()) so that a checkpoint can rebuild it."
        )
    plan = getattr(model, "xvol_fold_plan", None)
    if isinstance(plan, dict):
        plan = FoldPlan.from_dict(plan)
    if plan is not None:
        plan = current_plan(model, plan)
    elif is_folded(model):
        spec = ModelSpec(arch["name"])
        try:
            plan = derive_plan(lambda: spec.build(arch["config"]), model)
        except (ValueError, TypeError, KeyError, AttributeError, RuntimeError) as err:
            raise XvolError(
                f"The model is in its deploy form but carries no fold plan (xvol_fold_plan), and how it was folded "
                f"cannot be worked out ({error_reason(err)}). Fold the training model with xvol_export.fold, whose "
                "deploy model carries its plan."
            ) from None
    return Checkpoint(
        architecture=arch["name"],
        config=dict(arch["config"]),
        state_dict={k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
        folded=plan is not None,
        metadata=dict(metadata or {}),
        plan=plan,
    )


def save_checkpoint(model_or_ckpt: nn.Module | Checkpoint, path: str | os.PathLike, *,
                    metadata: dict | None = None, force: bool = False, dtype: str | torch.dtype | None = None) -> Path:
    """Write a checkpoint atomically (``.safetensors`` by suffix, else ``.pth``), in format version 2; return its path.

    ``dtype`` (``fp16``, ``bf16``, ``fp32``, ``fp64`` or the torch dtype; ``ValueError`` otherwise)
    writes every floating tensor in that dtype; default: as they are. Integer buffers are unchanged.
    A config that JSON cannot hold (say a factory's default ``act_layer=nn.ReLU``) is refused by name.
    """
    target = resolve_dtype(dtype) if dtype is not None else None  # a bad name fails before any work
    ckpt = model_or_ckpt if isinstance(model_or_ckpt, Checkpoint) else checkpoint_from_model(model_or_ckpt, metadata)
    _check_recordable(ckpt)
    plan = ckpt.plan
    if ckpt.folded and plan is None:  # read from a version-1 file: its plan is worked out once
        plan = ckpt.plan = version1_plan(ckpt)
    state_dict = ckpt.state_dict
    if target is not None:
        state_dict = {k: v.to(target) if isinstance(v, torch.Tensor) and v.is_floating_point() else v
                      for k, v in state_dict.items()}
    header = new_header(ckpt, plan, state_dict, metadata)
    path = Path(path)
    write_checkpoint_file(path, header, state_dict, force)
    return path


def _check_recordable(ckpt: Checkpoint) -> None:
    if not isinstance(ckpt.config, dict):
        raise XvolError(f"The checkpoint's config is a {type(ckpt.config).__name__}, not a mapping of arguments.")
    problems = config_problems(ckpt.config)
    if problems:
        raise XvolError(
            f"{ModelSpec(ckpt.architecture).label}: its config holds value(s) that a checkpoint cannot record "
            f"(JSON-plain values only: numbers, text, true/false, null, and lists and objects of them): "
            f"{listing(problems)}. They are the factory's arguments or defaults: give JSON values for them with "
            f"{setting('model_kwargs')} if it takes such values, or name a factory (a small wrapper, say) whose "
            "arguments are all JSON-plain."
        )
